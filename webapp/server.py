"""The production server: gevent's WSGI server, one greenlet per connection.

Chosen by measurement (``tests/bench/server_choice.py`` and ``tests/bench/chat_load.py``):
Tor circuits are slow and hold their connections for long, no-JS participants keep
a connection open to reload their feed, and the live chat keeps a WebSocket open for
the whole appointment. A greenlet per connection costs kilobytes where a thread costs
a stack, and gevent's server runs flask-sock.

It only works in a process that :mod:`stillroom.webapp.command` patched before anything
else was imported; then blocking calls (sockets, locks, sleeps) give way to the other
connections, and argon2 runs in gevent's pool of real threads
(:func:`stillroom.webapp.gate.argon2_runner`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import logging
import resource
import signal
from collections.abc import Callable
from typing import Any

import gevent
from flask import Flask
from gevent import monkey
from gevent.event import Event
from gevent.pool import Pool
from gevent.pywsgi import Input, WSGIHandler, WSGIServer

from stillroom.onion.errors import PortInUseError
from stillroom.webapp import db
from stillroom.webapp.hub import HUB
from stillroom.webapp.retention import start_periodic_purge
from stillroom.webapp.settings import Settings

log = logging.getLogger(__name__)

#: Where the server logs each request: nowhere (``stillroom audit`` checks it).
ACCESS_LOG = None

#: Where a request's environ holds its client's socket, so that a held feed reload can
#: notice the client going away (gevent's own environ has no public handle on it).
CLIENT_SOCKET = "stillroom.client_socket"

#: A new connection must start its request within this many seconds: through Tor the
#: request follows the stream's opening at once, so only an idle flood waits longer.
FIRST_REQUEST_SECONDS = 30
#: A kept-alive connection waits this long for its next request. Longer than the
#: longest pause the pages ask for between requests (the feed's 30 s before a chat
#: opens, when reloads are not held), plus a Tor round trip or two; a held reload is
#: a request in progress, not a pause, and its next reload follows a second later.
NEXT_REQUEST_SECONDS = 45
#: Once the request line is in, the headers must follow within this many seconds, and
#: then the whole body within as many again. Bodies are small (``MAX_REQUEST_KIB``).
REQUEST_SECONDS = 20


class QuietHandler(WSGIHandler):  # type: ignore[misc]
    """gevent's request handler, minus everything that could identify a client or the host.

    No access log (the server gets ``log=None``); a server-side error is logged by
    its type alone, never with the request's environment (which holds the user agent);
    a connection is dropped when it stays silent (:data:`FIRST_REQUEST_SECONDS`,
    :data:`NEXT_REQUEST_SECONDS`) or sends its request too slowly
    (:data:`REQUEST_SECONDS`); the app only runs once the whole body is in, so that
    no request waits on its client while it holds a database connection; no answer
    carries the host's clock.
    """

    #: Requests answered on this connection so far.
    answered = 0

    def read_requestline(self) -> str:
        """Read the request line, giving up when the client stays silent (ends the connection)."""
        wait = NEXT_REQUEST_SECONDS if self.answered else FIRST_REQUEST_SECONDS
        with gevent.Timeout(wait, False):
            line: str = super().read_requestline()
            return line
        return ""

    def read_request(self, raw_requestline: str) -> Any:
        """Read the headers within :data:`REQUEST_SECONDS` (a slow trickle ends the connection)."""
        timeout = gevent.Timeout(REQUEST_SECONDS)
        timeout.start()
        try:
            return super().read_request(raw_requestline)
        except gevent.Timeout as expired:
            if expired is not timeout:
                raise
            self.close_connection = True
            return None
        finally:
            timeout.cancel()

    def handle_one_response(self) -> None:
        """Run the app once the request's body is all in; answer a slow body 408."""
        self.answered += 1
        if self.read_body():
            super().handle_one_response()

    def read_body(self) -> bool:
        """Read the whole body within :data:`REQUEST_SECONDS` and hand it to the app.

        A body larger than the app accepts is not read: the app refuses it by its
        ``Content-Length`` (413) and the connection closes after the answer.

        :returns: whether the app should run; if not, the connection is closing.
        """
        chunked = self.environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
        length = self.content_length or 0
        if not chunked and not length:
            return True
        if chunked:  # the app gets it whole, with its length
            del self.environ["HTTP_TRANSFER_ENCODING"]
        limit = int(self.application.config["MAX_CONTENT_LENGTH"])
        if length > limit:
            self.close_connection = True
            body = b""
        else:
            received = self.receive(limit + 1 if chunked else length)
            if received is None or (not chunked and len(received) < length):
                self.close_connection = True  # answered already, or the client left
                return False
            body = received
            if chunked:
                self.environ["CONTENT_LENGTH"] = str(len(body))
                if len(body) > limit:  # the app refuses it; the rest is never read
                    self.close_connection = True
        self.wsgi_input = self.environ["wsgi.input"] = Input(io.BytesIO(body), len(body))
        return True

    def receive(self, wanted: int) -> bytes | None:
        """Read up to ``wanted`` bytes of body within :data:`REQUEST_SECONDS`.

        :returns: what came (less at the end of a chunked body, or when the client
            left), or ``None`` once it was answered for being too slow or malformed.
        """
        parts: list[bytes] = []
        received = 0
        timeout = gevent.Timeout(REQUEST_SECONDS)
        timeout.start()
        try:
            while received < wanted:
                part: bytes = self.wsgi_input.read(min(wanted - received, 16384))
                if not part:
                    break
                parts.append(part)
                received += len(part)
        except gevent.Timeout as expired:
            if expired is not timeout:
                raise
            self.refuse_body(REQUEST_TIMEOUT)
            return None
        except OSError:  # the client left, or a chunked body that cannot be parsed
            self.refuse_body(BAD_REQUEST)
            return None
        finally:
            timeout.cancel()
        return b"".join(parts)

    def refuse_body(self, answer: bytes) -> None:
        """Send a bare ``answer`` for a body that never arrived whole, and close."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.socket.sendall(answer)

    def get_environ(self) -> dict[str, Any]:
        """Build the request's environ, with the client's socket under :data:`CLIENT_SOCKET`."""
        environ: dict[str, Any] = super().get_environ()
        environ[CLIENT_SOCKET] = self.socket
        return environ

    def finalize_headers(self) -> None:
        """Finish the headers without ``Date``: the server's clock stays its own.

        A clock's skew, read from many timestamps, can tell one machine from another
        and so point at the host of an onion service; Tor Browser needs no ``Date``.
        gevent adds one only when the application gave none, so say one was given.
        """
        self.provided_date = "withheld"
        super().finalize_headers()

    def handle_error(self, t: type[BaseException], v: BaseException, tb: object) -> None:
        """Log an unexpected server error by its type only, and answer 500."""
        log.error("request failed inside the server: %s", t.__name__)
        self._send_error_response_if_possible(500)

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        """Answer a request that cannot be parsed with a bare 400, and print nothing.

        gevent prints a traceback for some of them (more than 100 headers, say), which
        anyone could use to fill the journal, and logs others with the client's address.
        """
        self.close_connection = True
        return ("400", BAD_REQUEST)


#: gevent's own answer to a request it cannot parse.
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-length: 0\r\n\r\n"
#: The answer to a body that did not arrive within :data:`REQUEST_SECONDS`.
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-length: 0\r\n\r\n"


def quiet_hub() -> None:
    """Make gevent report a failure inside a connection or a thread by its type alone.

    Left to itself, gevent prints the traceback, a timestamp and the objects involved;
    a flood of failing requests would then fill the journal with the times they came.
    """

    def report(_context: object, kind: type[BaseException], *_details: object) -> None:
        log.error("a task failed inside the server: %s", kind.__name__)

    gevent.get_hub().print_exception = report


def create_server(app: Flask, port: int, settings: Settings, setting: str) -> WSGIServer:
    """Bind one app's port on 127.0.0.1 now (before Tor starts); serve it later.

    :param setting: the variable that sets this port, for the message when it is taken.
    :raises PortInUseError: when another program holds the port.
    """
    server = WSGIServer(
        ("127.0.0.1", port),
        app,
        # gevent's default queue of connections not yet accepted holds 128: a burst of
        # more (1,000 browsers opening the chat, or coming back after a restart) lost
        # the rest, whose browsers tried again 1 or 3 s later. The kernel caps it at
        # net.core.somaxconn (4,096 on Debian).
        backlog=settings.server_connections,
        spawn=Pool(settings.server_connections),
        log=ACCESS_LOG,
        error_log=None,
        handler_class=QuietHandler,
    )
    try:
        server.init_socket()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PortInUseError(port, setting) from error
        raise
    return server


def raise_file_limit(settings: Settings) -> None:
    """Allow a file descriptor for every connection both apps may hold (clients' and the
    database's), and some to spare.

    Debian's default soft limit (1,024) would stop the server accepting long before
    ``SERVER_CONNECTIONS``; the hard limit stays the operator's (systemd's ``LimitNOFILE``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * settings.server_connections + 2 * db.most_open_files() + 256
    if soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, ceiling), hard))


def create_servers(
    participant_app: Flask, portal_app: Flask, settings: Settings
) -> list[WSGIServer]:
    """Bind both apps' ports: the participant app first, then the portal."""
    if not monkey.is_module_patched("socket"):
        raise RuntimeError("serve through the stillroom command, which prepares gevent")
    quiet_hub()
    raise_file_limit(settings)
    participant = create_server(
        participant_app, settings.participant_port, settings, "STILLROOM_PARTICIPANT_PORT"
    )
    try:
        portal = create_server(portal_app, settings.portal_port, settings, "STILLROOM_PORTAL_PORT")
    except BaseException:
        participant.close()
        raise
    # Everything built so far (modules, apps, templates) lives as long as the process:
    # moved out of the collector's sight, a full collection no longer stops every
    # connection for a tenth of a second to walk it (tests/bench/chat_load.py).
    gc.collect()
    gc.freeze()
    return [participant, portal]


class StopServing(Exception):
    """Raised in the main greenlet by SIGTERM or Ctrl-C to unwind cleanly."""


def stop_on_signals() -> None:
    """Make SIGTERM and Ctrl-C raise :class:`StopServing` wherever the main greenlet waits.

    Called once both apps serve: until then Ctrl-C ends the command with one line
    (:mod:`stillroom.webapp.command`) and SIGTERM simply ends the process.
    """
    for number in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(number, gevent.kill, gevent.getcurrent(), StopServing)


def run_until_stopped(
    servers: list[WSGIServer], settings: Settings, meanwhile: Callable[[], object] | None = None
) -> None:
    """Serve both apps until Ctrl-C or SIGTERM, purging expired data every minute.

    :param meanwhile: what the main greenlet does while the apps are served (keep the
        onion service up); SIGTERM or Ctrl-C ends it by raising inside it.
    """
    stop_purge = start_periodic_purge(settings)
    try:
        for server in servers:
            server.start()
        stop_on_signals()
        (meanwhile or Event().wait)()  # until SIGTERM or Ctrl-C raises here
    except (KeyboardInterrupt, StopServing):
        pass
    finally:
        stop_purge.set()
        close_servers(servers)


def close_servers(servers: list[WSGIServer]) -> None:
    """Answer every held feed reload, stop accepting, give open requests a moment, and
    close both sockets."""
    for server in servers:  # both stop accepting first: an answered frame's next reload,
        server.close()  # which follows at once, must not find one of them still open
    HUB.close()  # a held reload answers 304 now rather than being cut off
    for server in servers:
        server.stop(timeout=2)
