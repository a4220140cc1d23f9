"""The per-request database handle."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlite_utils import Database

from stillroom.webapp.store import connect


def get_db() -> Database:
    """Return this request's connection, opening it on first use."""
    if "db" not in g:
        g.db = connect(current_app.config["SETTINGS"].database_path)
    db: Database = g.db
    return db


def close_db(_error: BaseException | None = None) -> None:
    """Close this request's connection, if one was opened."""
    db = g.pop("db", None)
    if db is not None:
        db.close()


def init_app(app: Flask) -> None:
    """Close the connection at the end of every request."""
    app.teardown_appcontext(close_db)
