"""The per-request database handle, lent from a small pool of open connections.

Opening a connection and setting its pragmas cost a quarter of a feed reload
(``tests/bench/chat_load.py``), so a request borrows an open one and gives it back.
A connection goes back only when it is clean: outside any transaction.

At most :data:`MAX_CONNECTIONS` are lent at once. Each open connection holds two file
descriptors (the database and its log), and SQLite keeps those of a closed one for
the next while another connection of the process holds a lock on the file: without
a bound, a flood would leave the process as many descriptors as it ever had requests
at once, and short of them for its clients.
"""

from __future__ import annotations

import threading
from typing import Protocol

import gevent.lock
from flask import Flask, current_app, g, has_request_context
from gevent import monkey
from sqlite_utils import Database
from werkzeug.exceptions import ServiceUnavailable

from stillroom.webapp.store import connect

#: Idle connections kept open per app; more are opened (and closed after use) under load.
POOL_SIZE = 16
#: Connections each app lends out at once. Requests hold one only while they run (a
#: held feed reload and a live chat's socket give theirs back while they wait), so
#: these are many times the requests that ever run at once on one core.
MAX_CONNECTIONS = 64
#: Seconds a request waits for a connection before the small "busy" page.
WAIT_SECONDS = 5.0
#: File descriptors one open connection holds: the database and its write-ahead log
#: (the shared-memory file is one per process).
FILES_PER_CONNECTION = 2


class DatabaseBusyError(ServiceUnavailable):
    """Every connection is lent out: the visitor gets the calm "busy, try again" page."""


def get_db() -> Database:
    """Return this request's connection, borrowing it on first use.

    :raises DatabaseBusyError: when none is free within :data:`WAIT_SECONDS`.
    """
    if "db" not in g:
        lent: Lender = current_app.extensions["stillroom_db_lent"]
        if not lent.acquire(timeout=WAIT_SECONDS):
            raise DatabaseBusyError
        idle: list[Database] = current_app.extensions["stillroom_db_pool"]
        try:  # one step: a thread between a check and a pop could find the list emptied
            g.db = idle.pop()
        except IndexError:
            try:
                g.db = connect(current_app.config["SETTINGS"].database_path)
            except BaseException:
                lent.release()
                raise
    db: Database = g.db
    return db


def close_db(_error: BaseException | None = None) -> None:
    """Give this request's connection back, or close it if it is not clean."""
    db = g.pop("db", None)
    if db is None:
        return
    idle: list[Database] = current_app.extensions["stillroom_db_pool"]
    try:
        if db.conn.in_transaction or len(idle) >= POOL_SIZE:
            db.close()  # closing rolls back whatever a failed request left open
        else:
            idle.append(db)
    finally:
        current_app.extensions["stillroom_db_lent"].release()


def give_back_while_waiting() -> None:
    """Give this request's connection back before a long wait (an argon2 slot, a pause),
    unless a transaction is open on it; the request borrows one again when it needs it.

    A wait that held its connection would let a flood of such requests (logins, new
    accounts) take all :data:`MAX_CONNECTIONS`, and the chats with them.
    """
    if has_request_context() and "db" in g and not g.db.conn.in_transaction:
        close_db()


def most_open_files() -> int:
    """Return the most file descriptors one app's connections may hold at once."""
    return (MAX_CONNECTIONS + POOL_SIZE) * FILES_PER_CONNECTION


class Lender(Protocol):
    """What both kinds of semaphore offer."""

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one, waiting at most ``timeout`` seconds."""

    def release(self) -> None:
        """Give one back."""


def lender() -> Lender:
    """Return the bound on connections lent: gevent's own under ``stillroom serve``.

    The standard library's semaphore is built on a condition, and under gevent the
    greenlets queue for the lock inside it, each a turn of the event loop, even while
    connections are free: at 1,000 chats an acquire took seconds (``chat_load.py``).
    The test servers run real threads, which gevent's semaphore would not wake.
    """
    if monkey.is_module_patched("threading"):
        semaphore: Lender = gevent.lock.BoundedSemaphore(MAX_CONNECTIONS)
        return semaphore
    return threading.BoundedSemaphore(MAX_CONNECTIONS)


def init_app(app: Flask) -> None:
    """Give the app its pool and its bound, and take connections back after every request."""
    app.extensions["stillroom_db_pool"] = []
    app.extensions["stillroom_db_lent"] = lender()
    app.teardown_appcontext(close_db)
