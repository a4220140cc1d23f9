"""The two Flask apps of Stillroom.

Two factories over the same domain modules, as in DESIGN §3:
:func:`create_participant_app` builds the app served only through the onion
service; :func:`create_portal_app` builds the therapists' portal on its own port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from flask import Flask

from stillroom.crypto.kdf import PRODUCTION, KeyDeriver
from stillroom.webapp import assets, chatroom, db, i18n, participant, portal, security
from stillroom.webapp.assist import service
from stillroom.webapp.chat import RateLimiter
from stillroom.webapp.gate import argon2_runner
from stillroom.webapp.instance import prepare_instance, subkey
from stillroom.webapp.retention import purge
from stillroom.webapp.settings import Settings
from stillroom.webapp.study.amendment import check_unchanged
from stillroom.webapp.study.definition import load_study
from stillroom.webapp.therapists import LoginThrottle

log = logging.getLogger(__name__)

#: Purposes of the per-app subkeys of the server secret (BLAKE2b allows 16 bytes).
FORM_KEY_PURPOSE = {"participant": b"form-key", "portal": b"portal-form"}
PENDING_KEY_PURPOSE = {"participant": b"pending-key", "portal": b"portal-pending"}
#: The portal's own argon2id slot: a flood of participant logins through the onion never
#: keeps therapists out. Argon2 memory is bounded by (ARGON2_CONCURRENCY + 1) x ARGON2_MEMORY_KIB.
PORTAL_ARGON2_CONCURRENCY = 1


class StillroomFlask(Flask):
    """Flask, with its own exception log replaced by one that names no request."""

    def log_exception(
        self,
        exc_info: tuple[type, BaseException, TracebackType] | tuple[None, None, None],
    ) -> None:
        """Log a failure that even the error handlers did not catch: its type and place.

        Flask's own line names the request's path (``/en/chat/<appointment>/feed``)
        and prints the traceback with its values; neither may reach a log.
        """
        if exc_info[1] is not None:
            security.log_failure(exc_info[1])


def _create_app(settings: Settings | None, clock: Callable[[], float], area: str) -> Flask:
    """Build the parts both apps share; ``area`` is the blueprint's name."""
    settings = Settings.load() if settings is None else settings
    argon2 = settings.argon2
    if argon2.memory_kib < PRODUCTION.memory_kib or argon2.time_cost < PRODUCTION.time_cost:
        log.warning("argon2id costs are below RFC 9106's recommendation: for tests only")
    secret = prepare_instance(settings)
    concurrency = (
        settings.argon2_concurrency if area == "participant" else PORTAL_ARGON2_CONCURRENCY
    )
    app = StillroomFlask(
        __name__,
        instance_path=str(settings.data_dir.resolve()),
        static_folder=None,
    )
    app.config.update(
        SETTINGS=settings,
        CLOCK=clock,
        # Each app has its own form and pending keys: a form of one never passes the other.
        FORM_KEY=subkey(secret, FORM_KEY_PURPOSE[area]),
        PENDING_KEY=subkey(secret, PENDING_KEY_PURPOSE[area]),
        LOOKUP_KEY=subkey(secret, b"lookup-key"),
        TOTP_KEY=subkey(secret, b"totp-key"),
        ONION_ADDRESS=None,
        PUBLIC_HOST=None,
        STUDY=load_study(Path(settings.study)) if settings.study else None,
        SECURE_COOKIES=False,
        KEY_DERIVER=KeyDeriver(
            settings.argon2,
            concurrency,
            settings.argon2_wait_seconds,
            argon2_runner(),
            before_waiting=db.give_back_while_waiting,
        ),
        CHAT_RATE_LIMITER=RateLimiter(
            settings.chat_rate_messages, settings.chat_rate_seconds, clock=clock
        ),
    )
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True
    app.jinja_env.globals["area"] = area
    db.init_app(app)
    security.init_app(app)
    i18n.init_app(app)
    assets.init_app(app)
    chatroom.init_app(app)
    with app.app_context():
        if app.config["STUDY"] is not None:  # before the purge, which acts on the study
            check_unchanged(db.get_db(), app.config["STUDY"])
        purge(db.get_db(), int(clock()), settings)
    return app


def create_participant_app(
    settings: Settings | None = None,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """Build the participant (onion) app.

    :param settings: the deployment's settings; read from the environment when omitted.
    :param clock: the time source, replaceable so that tests can move time.
    """
    app = _create_app(settings, clock, "participant")
    app.config["ONION_ADDRESS"] = app.config["SETTINGS"].onion_address or None
    participant.init_app(app)
    security.preload_error_pages(app)
    return app


def create_portal_app(
    settings: Settings | None = None,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """Build the therapist portal (clearnet, behind TLS; never reachable through the onion).

    :param settings: the deployment's settings; read from the environment when omitted.
    :param clock: the time source, replaceable so that tests can move time.
    """
    app = _create_app(settings, clock, "portal")
    app.config["LOGIN_THROTTLE"] = LoginThrottle(app.config["SETTINGS"].login_pause_minutes * 60)
    public = urlsplit(app.config["SETTINGS"].portal_base_url)
    app.config["PUBLIC_HOST"] = public.hostname
    app.config["SECURE_COOKIES"] = public.scheme == "https"
    portal.init_app(app)
    service.init_app(app)  # only the portal loads therapist support, never the onion app
    security.preload_error_pages(app)
    return app
