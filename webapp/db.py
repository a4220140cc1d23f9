"""The per-request database handle, lent from a small pool of open connections.

Opening a connection and setting its pragmas cost a quarter of a feed reload
(``tests/bench/chat_load.py``), so a request borrows an open one and gives it back.
A connection goes back only when it is clean: outside any transaction.
"""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlite_utils import Database

from stillroom.webapp.store import connect

#: Idle connections kept open per app; more are opened (and closed after use) under load.
POOL_SIZE = 16


def get_db() -> Database:
    """Return this request's connection, borrowing it on first use."""
    if "db" not in g:
        idle: list[Database] = current_app.extensions["stillroom_db_pool"]
        try:  # one step: a thread between a check and a pop could find the list emptied
            g.db = idle.pop()
        except IndexError:
            g.db = connect(current_app.config["SETTINGS"].database_path)
    db: Database = g.db
    return db


def close_db(_error: BaseException | None = None) -> None:
    """Give this request's connection back, or close it if it is not clean."""
    db = g.pop("db", None)
    if db is None:
        return
    idle: list[Database] = current_app.extensions["stillroom_db_pool"]
    if db.conn.in_transaction or len(idle) >= POOL_SIZE:
        db.close()  # closing rolls back whatever a failed request left open
    else:
        idle.append(db)


def init_app(app: Flask) -> None:
    """Give the app its pool, and take connections back at the end of every request."""
    app.extensions["stillroom_db_pool"] = []
    app.teardown_appcontext(close_db)
