"""The Flask apps of Stillroom, their store, languages and security.

:func:`create_participant_app` builds the app that is served only through the onion
service. The therapist portal arrives with its own issue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flask import Flask

from stillroom.crypto.kdf import PRODUCTION, KeyDeriver
from stillroom.webapp import assets, db, i18n, participant, security
from stillroom.webapp.instance import prepare_instance, subkey
from stillroom.webapp.retention import purge
from stillroom.webapp.settings import Settings

log = logging.getLogger(__name__)


def create_participant_app(
    settings: Settings | None = None, clock: Callable[[], float] = time.time
) -> Flask:
    """Build the participant (onion) app.

    :param settings: the deployment's settings; read from the environment when omitted.
    :param clock: the time source, replaceable so that tests can move time.
    """
    settings = Settings.load() if settings is None else settings
    argon2 = settings.argon2
    if argon2.memory_kib < PRODUCTION.memory_kib or argon2.time_cost < PRODUCTION.time_cost:
        log.warning("argon2id costs are below RFC 9106's recommendation: for tests only")
    secret = prepare_instance(settings)
    app = Flask(
        __name__,
        instance_path=str(settings.data_dir.resolve()),
        static_folder=None,
    )
    app.config.update(
        SETTINGS=settings,
        CLOCK=clock,
        FORM_KEY=subkey(secret, b"form-key"),
        LOOKUP_KEY=subkey(secret, b"lookup-key"),
        PENDING_KEY=subkey(secret, b"pending-key"),
        ONION_ADDRESS=settings.onion_address or None,
        KEY_DERIVER=KeyDeriver(
            settings.argon2, settings.argon2_concurrency, settings.argon2_wait_seconds
        ),
    )
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True
    db.init_app(app)
    security.init_app(app)
    i18n.init_app(app)
    assets.init_app(app)
    participant.init_app(app)
    with app.app_context():
        purge(db.get_db(), int(clock()))
    return app
