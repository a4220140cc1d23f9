"""The one stylesheet, served under a content-hashed name and cached for a year.

A participant on a slow Tor circuit fetches it once; a new version gets a new name.
"""

from __future__ import annotations

import hashlib

from flask import Flask, Response, abort

from stillroom.webapp.paths import package_dir

ONE_YEAR = 365 * 24 * 3600


def init_app(app: Flask) -> None:
    """Load the stylesheet, register its route and the ``stylesheet_url`` template value."""
    css = (package_dir("static_nojs") / "style.css").read_bytes()
    digest = hashlib.sha256(css).hexdigest()[:12]
    url = f"/static/style.{digest}.css"

    def stylesheet(digest_in_url: str) -> Response:
        """Serve the stylesheet; any other version is gone."""
        if digest_in_url != digest:
            abort(404)
        response = Response(css, mimetype="text/css")
        response.headers["Cache-Control"] = f"public, max-age={ONE_YEAR}, immutable"
        return response

    app.add_url_rule("/static/style.<digest_in_url>.css", "stylesheet", stylesheet)
    app.jinja_env.globals["stylesheet_url"] = url
