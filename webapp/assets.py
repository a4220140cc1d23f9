"""Files served under a content-hashed name and cached for a year.

The one stylesheet (every page) and the one script (chat pages only). A
participant on a slow Tor circuit fetches each once; a new version gets a new name.
"""

from __future__ import annotations

import hashlib

from flask import Flask, Response, abort

from stillroom.webapp.paths import package_dir

ONE_YEAR = 365 * 24 * 3600


def serve_hashed(app: Flask, endpoint: str, data: bytes, mimetype: str, pattern: str) -> str:
    """Serve ``data`` at ``pattern`` with its digest in place of ``{}``; return its URL.

    Any other digest answers 404: an old version is gone, not served stale.
    """
    digest = hashlib.sha256(data).hexdigest()[:12]

    def hashed_file(digest_in_url: str) -> Response:
        if digest_in_url != digest:
            abort(404)
        response = Response(data, mimetype=mimetype)
        response.headers["Cache-Control"] = f"public, max-age={ONE_YEAR}, immutable"
        return response

    hashed_file.__doc__ = f"Serve {pattern.format('<digest>')}, cached for a year."
    app.add_url_rule(pattern.format("<digest_in_url>"), endpoint, hashed_file)
    return pattern.format(digest)


def init_app(app: Flask) -> None:
    """Serve the stylesheet and give templates its ``stylesheet_url``."""
    css = (package_dir("static_nojs") / "style.css").read_bytes()
    app.jinja_env.globals["stylesheet_url"] = serve_hashed(
        app, "stylesheet", css, "text/css", "/static/style.{}.css"
    )
