"""Files served under a content-hashed name and cached for a year.

The one stylesheet (every page) and the one script (chat pages only). A
participant on a slow Tor circuit fetches each once; a new version gets a new name.
"""

from __future__ import annotations

import gzip
import hashlib

from flask import Flask, Response, abort, request

from stillroom.webapp.paths import package_dir

ONE_YEAR = 365 * 24 * 3600


def accepts_gzip() -> bool:
    """Return whether this request's browser takes gzip (Tor Browser always does)."""
    return bool(request.accept_encodings["gzip"])


def gzip_if_accepted(response: Response) -> Response:
    """Send ``response`` gzipped to a browser that takes it.

    Only for bodies with no secret of the server's making (the chat feed: messages both
    sides know; the stylesheet; the script). A secret beside text an attacker can choose
    could leak through the compressed length (BREACH). The feed's answers are private to
    one browser, which always asks the same way, so they carry no ``Vary``: it would cost
    bytes on every idle reload.
    """
    if accepts_gzip():
        response.set_data(gzip.compress(response.get_data(), 9, mtime=0))
        response.headers["Content-Encoding"] = "gzip"
    return response


def serve_hashed(app: Flask, endpoint: str, data: bytes, mimetype: str, pattern: str) -> str:
    """Serve ``data`` at ``pattern`` with its digest in place of ``{}``; return its URL.

    Any other digest answers 404: an old version is gone, not served stale.
    """
    digest = hashlib.sha256(data).hexdigest()[:12]
    packed = gzip.compress(data, 9, mtime=0)

    def hashed_file(digest_in_url: str) -> Response:
        if digest_in_url != digest:
            abort(404)
        response = Response(packed if accepts_gzip() else data, mimetype=mimetype)
        if accepts_gzip():
            response.headers["Content-Encoding"] = "gzip"
        response.headers["Vary"] = "Accept-Encoding"  # a shared cache may keep these
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
