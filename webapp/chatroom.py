"""The chat's pages, shared by both apps: the page, its feed frame and its compose frame.

Without JavaScript (DESIGN §5) the page holds two frames. The feed frame reloads
itself with ``<meta http-equiv="refresh">``; when nothing changed it is answered
with a bare ``304 Not Modified`` (a few dozen bytes, one Tor cell), and the
browser shows its cached copy, whose refresh keeps going. The compose frame
reloads only when a message is sent, so typed text is never lost.

Under ``stillroom serve``, a reload that finds nothing new is held (DESIGN §9): it
waits on the hub, without a database connection, until the pair's chat changes or
``STILLROOM_FEED_HOLD_SECONDS`` pass, and the frame's next reload follows at once
(the one right after the chat opens is held only a few seconds, so that the page
around the frame can finish loading). So a message arrives at once without script,
and an idle chat costs one small ``304`` a minute.

With JavaScript, the small ``live.js`` (the only script anywhere, allowed by CSP on
chat pages alone) opens a WebSocket that says "news" when the chat changes, and
the feed frame reloads at once; while the socket is open the frame shows the feed
without a timed refresh (``?live=1``). Without script, the chat page's "Pause
updates" link loads the feed without a refresh too (``?pause=1``), until the
participant resumes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import math
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gevent
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    make_response,
    render_template,
    request,
    url_for,
)
from flask_babel import lazy_gettext as _l
from flask_sock import Sock

from stillroom.webapp.assets import gzip_if_accepted, serve_hashed
from stillroom.webapp.chat import (
    MAX_MESSAGE_CHARS,
    ChatAppointment,
    ChatClosedError,
    ConversationLockedError,
    MessageInputError,
    RateLimiter,
    ShownMessage,
    clean_text,
    conversation_id_of,
    conversation_key,
    expiry_day,
    read_messages,
    send_message,
)
from stillroom.webapp.db import close_db
from stillroom.webapp.feedcache import FEEDS, LONGEST_SECONDS, Shown
from stillroom.webapp.gate import current_session, db, now, settings
from stillroom.webapp.hub import HUB
from stillroom.webapp.i18n import current_language
from stillroom.webapp.paths import package_dir
from stillroom.webapp.server import CLIENT_SOCKET
from stillroom.webapp.store import StoreUnwritableError
from stillroom.webapp.times import format_clock, format_day, local

#: Registers the WebSocket routes on the two blueprints.
sock = Sock()

#: Seconds between the socket's keep-alive notes; a closed socket is noticed then.
LIVE_PING_SECONDS = 20
#: The socket's close code once its session has ended: the script then stops trying.
SESSION_ENDED = 4001
#: Environ keys of the servers that can hand a socket over for a WebSocket.
_SOCKET_KEYS = ("werkzeug.socket", "gunicorn.socket", "eventlet.input", "wsgi.websocket")

#: Messages in the feed frame (each reload with news re-sends them all); the history
#: page shows the whole conversation. Twenty short ones fill a phone's screen; the
#: characters cap keeps a feed of long ones well under the 8 KB a page may weigh.
FEED_MESSAGES = 20
FEED_CHARACTERS = 3000
#: Refresh intervals of the feed, in seconds.
ACTIVE_SECONDS = 5
IDLE_SECONDS = 10
WAITING_SECONDS = 30
#: Seconds from a held feed's answer to its next reload: none, because a message sent in
#: between would wait for it. The server holds that reload, so the browser does not spin,
#: and it keeps showing the answer while the reload waits.
HOLD_PAUSE_SECONDS = 0
#: The longest hold of the reload that follows the page that opens the chat (``?first=``).
#: While a frame's reload is pending before the page around it has loaded, the browser
#: keeps the whole page loading (its load event waits for the frame): held a minute,
#: the tab would look busy for a minute. These few seconds let the page finish first.
BRIEF_HOLD_SECONDS = 3
#: Feed reloads one session may have held at once (see :class:`Holds`).
HELD_PER_SESSION = 4
#: The other side counts as active for this long after their last message.
ACTIVE_WINDOW_SECONDS = 120

#: The two frames name their charset first thing (``<meta charset="utf-8">``), so their
#: header need not: 15 bytes less on each of the chat's many answers.
FRAME_CONTENT_TYPE = "text/html"

EMPTY = _l("Please write a message first.")
TOO_LONG = _l("A message can have at most %(count)s characters.", count=MAX_MESSAGE_CHARS)
SLOW_DOWN = _l("You are sending messages very quickly. Please wait a few seconds.")
CLOSED = _l("The chat is not open now, so the message was not sent. Your text is still here.")
LOCKED = _l("This conversation cannot be opened with your current key.")
NOT_SAVED = _l(
    "The message could not be saved just now, so it was not sent. Your text is still here:"
    " please try again in a few minutes."
)


@dataclass(frozen=True)
class Side:
    """Who is looking at the chat: their role, secret key and time zone."""

    role: str
    secret_key: bytes
    zone: str


def rate_limiter() -> RateLimiter:
    """Return the app's in-memory limit on messages per session."""
    limiter: RateLimiter = current_app.config["CHAT_RATE_LIMITER"]
    return limiter


def refresh_seconds(
    appointment: ChatAppointment, messages: list[ShownMessage], role: str
) -> int | None:
    """Return how often the feed reloads: often while the other side writes, never once over."""
    moment = now()
    if appointment.is_open(moment, settings().chat_opens_minutes_before):
        if hold_seconds():
            return HOLD_PAUSE_SECONDS
        theirs = [m.opened.minute for m in messages if m.opened and m.opened.sender != role]
        recent = theirs and moment - theirs[-1] * 60 < ACTIVE_WINDOW_SECONDS
        return ACTIVE_SECONDS if recent else IDLE_SECONDS
    if appointment.closed or appointment.cancelled:
        return None
    if moment < appointment.opens_at(settings().chat_opens_minutes_before):
        return HOLD_PAUSE_SECONDS if hold_seconds() else WAITING_SECONDS
    return None


def hold_seconds() -> int:
    """Return how long a feed reload may wait for news here: 0 when holding is off.

    Also 0 under a server that does not hand over the client's socket (only ``stillroom
    serve`` does): without it a client that left could not be noticed while held. And 0
    for a reload refused a hold (:class:`Holds`): its page then reloads on a timer.
    """
    if CLIENT_SOCKET not in request.environ or g.get("hold_refused"):
        return 0
    return settings().feed_hold_seconds


def seconds_to_next_change(appointment: ChatAppointment) -> float:
    """Return the seconds until the feed changes by the clock alone (the chat opens,
    starts, closes, or its messages go), or infinity when nothing is due."""
    moment = now()
    due = (
        appointment.opens_at(settings().chat_opens_minutes_before),
        appointment.starts_at,
        appointment.closes_at(),
        deletion_moment(appointment),
    )
    return min((float(at - moment) for at in due if at > moment), default=math.inf)


class Holds:
    """How many feed reloads are held now, by each app and by each session (memory only).

    Each held reload keeps a connection and a greenlet. One session may hold only a few
    (a participant with the chat open in two tabs, a therapist with several chats), and
    all of one app's together at most half of its server's connections, so that a flood
    of held reloads, even from many accounts, never starves the others. A reload beyond
    either is answered at once, with a page that reloads on a timer as without the hold.
    The two apps have servers of their own, so each counts its own: counted together,
    1,000 therapists' support panels took the room of 1,000 participants' feeds, whose
    messages then waited for a timed reload.
    """

    def __init__(self) -> None:
        self._by_session: Counter[bytes] = Counter()
        self._by_app: Counter[str] = Counter()

    def have_room(self, session: bytes) -> bool:
        """Return whether one more reload of ``session`` may be held."""
        most = settings().server_connections // 2
        return self._by_app[app_area()] < most and self._by_session[session] < HELD_PER_SESSION

    def take(self, session: bytes) -> None:
        """Count a reload of ``session`` as held (asked right after :meth:`have_room`)."""
        self._by_session[session] += 1
        self._by_app[app_area()] += 1

    def give_back(self, session: bytes) -> None:
        """Count it no more (its answer is going out)."""
        self._by_app[app_area()] -= 1
        self._by_session[session] -= 1
        if not self._by_session[session]:
            del self._by_session[session]


def app_area() -> str:
    """Return which app serves this request: ``participant`` or ``portal``."""
    return (request.blueprint or "").partition(".")[0]


#: One per process, like the hub.
HOLDS = Holds()


class Departure:
    """Notices that the client of a held request closed its connection, or sent more.

    gevent's server reads nothing from a connection while its request is answered, so a
    browser that left would stay unnoticed until the hold ends. A watcher on the
    client's socket fires when it becomes readable: with nothing to read, that is the
    client's end closing; with data, the client sent its next request early (it does
    not wait for the answer, so it has none left to wait for). Either way the hold ends.
    A watcher on the event loop costs less memory than a greenlet per held reload.
    """

    def __init__(self, client: socket.socket, key: str) -> None:
        self.gone = False
        self._key = key
        self._watcher = gevent.get_hub().loop.io(client.fileno(), 1)
        self._watcher.start(self._readable)

    def _readable(self) -> None:
        self._watcher.stop()
        self.gone = True
        gevent.spawn(HUB.wake, self._key)  # not on the event loop itself: it takes a lock

    def stop(self) -> None:
        """Stop watching (the request is being answered)."""
        self._watcher.stop()
        self._watcher.close()


def pair_key(appointment: ChatAppointment) -> str:
    """Return the notice-board key of the appointment's pair (memory only)."""
    return f"{appointment.participant_id}:{appointment.therapist_id}"


def panel_key(appointment: ChatAppointment) -> str:
    """Return the notice-board key the therapist's support panel of the pair waits on.

    It starts like the pair's own key, so that :meth:`~stillroom.webapp.hub.Hub.publish_participant`
    (a deletion, a cancellation) moves both on.
    """
    return f"{pair_key(appointment)}:panel"


def held_feed(
    appointment: Callable[[], ChatAppointment],
    answer_now: Callable[[ChatAppointment], Response],
    logged_in: Callable[[], bool],
    key_of: Callable[[ChatAppointment], str] = pair_key,
) -> Response | None:
    """Answer a feed reload; when nothing is new, hold it until news or the hold time.

    A reload says which feed it shows (``?seen=`` its ETag; the portal's feed is not
    cached, so ``If-None-Match`` alone would not say). When that is still the feed, it
    waits. The reload that follows the page opening the chat (``?first=``) waits at most
    :data:`BRIEF_HOLD_SECONDS` and then gets the feed as reloads see it, whose own reload
    is held in full: on news it answers ``200`` with the new feed at once. At the end of the hold
    it looks again, as a reload would then (``304`` to a browser whose feed is current,
    the new page if something changed without news). When the client left or the server
    stops, it answers ``304`` at once without looking. Returns ``None`` when the session
    ended while the reload was held.

    :param appointment: reads the appointment again (404 once it is gone), as a reload would.
    :param answer_now: answers a reload of the feed at once (a 304 or the page).
    :param key_of: names the news it waits for (:func:`pair_key`, :func:`panel_key`).
    """
    shown = appointment()
    key = key_of(shown)
    session = current_session()
    assert session is not None
    if not HOLDS.have_room(session.token_hash):
        g.hold_refused = True  # its page reloads on a timer instead
    seen = HUB.version(key)  # before reading: news that comes after it ends the hold
    answer = answer_now(shown)
    hold = hold_seconds()
    if "first" in request.args:  # the reload right after an opening: held only briefly
        hold = min(hold, BRIEF_HOLD_SECONDS)
    elif request.args.get("seen") != answer.get_etag()[0]:
        return answer
    if hold == 0:
        return answer
    deadline = time.monotonic() + hold
    departure = Departure(request.environ[CLIENT_SOCKET], key)
    HOLDS.take(session.token_hash)
    try:
        while True:
            timeout = min(deadline - time.monotonic(), seconds_to_next_change(shown))
            close_db()  # a held reload costs a greenlet, never a database connection
            HUB.wait(key, seen, max(timeout, 0), stop=lambda: departure.gone or HUB.closing)
            if departure.gone or HUB.closing:
                if HUB.closing:  # its next reload must find the new server, not this one
                    answer.headers["Connection"] = "close"
                return answer
            if not logged_in():
                return None
            seen = HUB.version(key)
            shown = appointment()
            changed = answer_now(shown)
            if time.monotonic() >= deadline or changed.get_etag()[0] != answer.get_etag()[0]:
                return changed
    finally:
        HOLDS.give_back(session.token_hash)
        departure.stop()


def window_text(appointment: ChatAppointment, side: Side) -> str:
    """Return one line on whether the chat is open, and until or from when."""
    moment, zone = now(), side.zone
    opens_at = appointment.opens_at(settings().chat_opens_minutes_before)
    if appointment.is_open(moment, settings().chat_opens_minutes_before):
        until = format_clock(appointment.closes_at(), zone, current_language())
        return str(_l("The chat is open until %(time)s.", time=until))
    if moment < opens_at and not appointment.closed and not appointment.cancelled:
        return str(_l("The chat opens at %(time)s.", time=moment_text(opens_at, zone)))
    if appointment.closed and side.role == "participant":
        return str(
            _l("The therapist has ended the chat. You can still read it until it is deleted.")
        )
    if appointment.closed:
        return str(_l("You have ended the chat. You can still read it until it is deleted."))
    return str(_l("The chat has ended. You can still read it until it is deleted."))


def moment_text(timestamp: int, zone: str) -> str:
    """Return a time of day, with its day when that is not today in the reader's zone."""
    language = current_language()
    clock = format_clock(timestamp, zone, language)
    if local(timestamp, zone).date() == local(now(), zone).date():
        return clock
    return str(_l("%(time)s on %(day)s", time=clock, day=format_day(timestamp, zone, language)))


def empty_text(appointment: ChatAppointment, side: Side) -> str:
    """Return what a chat without messages says: who joins and when, or what became of it."""
    moment = now()
    if side.role == "therapist":
        opens_at = appointment.opens_at(settings().chat_opens_minutes_before)
        if moment < opens_at or moment >= deletion_moment(appointment):
            return str(_l("There are no messages."))
        # Only the participant can delete a conversation before its messages expire; a
        # missing one is all that is kept of that, so the sentence covers both cases.
        return str(_l("There are no messages: none were written, or the participant deleted them."))
    if appointment.is_over(moment):
        return str(_l("There are no messages."))
    therapist = therapist_name(appointment)
    if moment < appointment.starts_at:
        joins = _l(
            "%(therapist)s will join you here at %(time)s.",
            therapist=therapist,
            time=moment_text(appointment.starts_at, side.zone),
        )
    else:
        joins = _l("%(therapist)s will answer you here.", therapist=therapist)
    if appointment.is_open(moment, settings().chat_opens_minutes_before):
        already = _l("You can write already: they will read it when they join.")
        return f"{joins} {already}"
    return str(joins)


def deletion_moment(appointment: ChatAppointment) -> int:
    """Return when this appointment's messages are deleted at the latest (start of that day)."""
    day = expiry_day(appointment, settings().message_retention_days)
    return int(datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.UTC).timestamp())


def therapist_name(appointment: ChatAppointment) -> str:
    """Return the name the participant knows their therapist by."""
    row = (
        db()
        .execute("SELECT name FROM therapists WHERE id = ?", [appointment.therapist_id])
        .fetchone()
    )
    return "" if row is None else str(row[0])


def newest_that_fit(messages: list[ShownMessage]) -> list[ShownMessage]:
    """Return the newest messages whose text fits :data:`FEED_CHARACTERS` (at least one)."""
    kept: list[ShownMessage] = []
    total = 0
    for message in reversed(messages):
        total += len(message.opened.text) if message.opened else 0
        if kept and total > FEED_CHARACTERS:
            break
        kept.append(message)
    return kept[::-1]


def feed(appointment: ChatAppointment, side: Side) -> Response:
    """Answer a reload of the feed frame: the newest messages, or 304 if nothing changed."""
    version = HUB.version(pair_key(appointment))  # before reading: later news moves it on
    conversation_id = conversation_id_of(db(), appointment.participant_id, appointment.therapist_id)
    messages: list[ShownMessage] = []
    locked = False
    if conversation_id is not None:
        try:
            key = conversation_key(db(), conversation_id, side.role, side.secret_key)
            messages = newest_that_fit(
                read_messages(db(), conversation_id, key, newest=FEED_MESSAGES)
            )
        except ConversationLockedError:
            locked = True
    variant = feed_variant()
    interval = None if variant else refresh_seconds(appointment, messages, side.role)
    newest = messages[-1].seq if messages else 0  # what this page shows, not a later count
    status = window_text(appointment, side)
    empty = "" if messages or locked else empty_text(appointment, side)
    state = (
        f"{variant}:{conversation_id}:{newest}:{interval}:{locked}:"
        f"{status}:{empty}:{side.zone}:{current_language()}"
    )
    # 48 bits: a changed page matches the copy a browser holds once in 2**48 changes.
    digest = hashlib.blake2b(state.encode(), digest_size=6).digest()
    etag = base64.urlsafe_b64encode(digest).decode()  # 8 characters, not 12 in hex
    until = next_change(appointment, messages, side.role)
    FEEDS.remember(shown_key(appointment), Shown(etag, version, appointment, until))
    if etag in request.if_none_match:
        return not_modified(etag, side.role)
    response = make_response(
        render_template(
            "chat/feed.html",
            messages=[describe(message, side) for message in reversed(messages)],
            interval=interval,
            locked=locked,
            status=status,
            empty=empty,
            other=other_label(side),
            paused=variant == "pause",
            # Only the frame's own reloads say what they show, and only they are held:
            # opening the page again must show the messages at once.
            reload=f"?{reload_name()}={etag}" if hold_seconds() else "",
        )
    )
    response.set_etag(etag)
    response.headers["Cache-Control"] = feed_cache_control(side.role)
    response.content_type = FRAME_CONTENT_TYPE
    return gzip_if_accepted(response)


def feed_variant() -> str:
    """Return which feed the frame asked for: ``"live"`` (``?live=1``, reloaded by the
    live script on news), ``"pause"`` (``?pause=1``, updates paused by the reader), or
    ``""`` (the feed that reloads itself).

    Neither variant carries a timed refresh (WCAG 2.2.1), and neither is held. The
    pause lives only in the frame's address, never in a cookie.
    """
    if request.args.get("live") == "1":
        return "live"
    if request.args.get("pause") == "1":
        return "pause"
    return ""


def reload_name() -> str:
    """Return how the feed page's own reload names the page it shows: ``first`` on the
    page that opens the chat (its reload is held only briefly, see :func:`held_feed`),
    ``seen`` on every page that came from a reload."""
    return "seen" if "seen" in request.args or "first" in request.args else "first"


def unchanged_feed(appointment: ChatAppointment, role: str) -> Response | None:
    """Answer 304 at once when the browser's feed page is still current, before any decryption.

    Asked before the reader's side is built: finding their time zone costs a read and
    a decryption of its own.
    """
    etag = FEEDS.unchanged(
        shown_key(appointment),
        request.if_none_match,
        HUB.version(pair_key(appointment)),
        appointment,
        now(),
    )
    return None if etag is None else not_modified(etag, role)


def shown_key(appointment: ChatAppointment) -> tuple[bytes, str, str]:
    """Return the feed cache's key: this session, this appointment, this language and
    variant (each variant is a page of its own, with its own ETag), held or not."""
    session = current_session()
    assert session is not None
    # A page that reloads on a timer is another page. The page that opens the chat
    # differs from the one a reload gets only in its reload's name (same ETag: each
    # URL has its own copy in the browser), so each has its own entry.
    page = f"{feed_variant()}{reload_name() if hold_seconds() else '~'}"
    return session.token_hash, appointment.id, f"{current_language()}{page}"


def next_change(appointment: ChatAppointment, messages: list[ShownMessage], role: str) -> int:
    """Return the first moment the feed could change without news: a boundary of the chat,
    the end of the other side's active window, or :data:`~feedcache.LONGEST_SECONDS` on."""
    moment = now()
    s = settings()
    theirs = [m.opened.minute * 60 for m in messages if m.opened and m.opened.sender != role]
    moments = [
        appointment.opens_at(s.chat_opens_minutes_before),
        appointment.starts_at,
        appointment.closes_at(),
        deletion_moment(appointment),
        theirs[-1] + ACTIVE_WINDOW_SECONDS if theirs else 0,
    ]
    return min([t for t in moments if t > moment] + [moment + LONGEST_SECONDS])


def feed_cache_control(role: str) -> str:
    """Return how browsers may keep a feed: participants' in memory, therapists' not at all.

    Tor Browser keeps its cache in memory only, so a participant's feed may be kept
    (``private, no-cache``) and its idle reload answered with a bare 304. An ordinary
    browser writes such pages to disk, so the portal's feed, with its message text
    and pseudonyms, is ``no-store`` like every other page.
    """
    return "private, no-cache" if role == "participant" else "no-store"


def other_label(side: Side) -> Any:
    """Return how a screen reader names the other side's messages."""
    return _l("Therapist:") if side.role == "participant" else _l("Participant:")


def history(appointment: ChatAppointment, side: Side) -> list[dict[str, Any]] | None:
    """Return the whole conversation, oldest first; ``None`` when this side cannot open it."""
    conversation_id = conversation_id_of(db(), appointment.participant_id, appointment.therapist_id)
    if conversation_id is None:
        return []
    try:
        key = conversation_key(db(), conversation_id, side.role, side.secret_key)
    except ConversationLockedError:
        return None
    return [describe(message, side) for message in read_messages(db(), conversation_id, key)]


def not_modified(etag: str, role: str) -> Response:
    """Return a bare 304: the browser keeps the headers of the copy it has."""
    response = Response(status=304)
    response.set_etag(etag)
    response.headers["Cache-Control"] = feed_cache_control(role)
    response.headers.pop("Content-Type", None)
    return response


def describe(message: ShownMessage, side: Side) -> dict[str, Any]:
    """Return what the feed shows of one message, in the reader's zone."""
    if message.opened is None:
        return {"mine": False, "text": None, "time": ""}
    return {
        "mine": message.opened.sender == side.role,
        "text": message.opened.text,
        "time": format_clock(message.opened.minute * 60, side.zone, current_language()),
    }


def compose(appointment: ChatAppointment, side: Side) -> Any:
    """Show the compose frame; on POST, send the message and show an empty form again."""
    error = None
    text = snippet_text() if request.method == "GET" else ""
    sent = False
    if request.method == "POST":
        text = request.form.get("text", "")  # the request size limit bounds it
        error = send(appointment, side, text)
        if error is None:
            text, sent = "", True
    status = {None: 200, SLOW_DOWN: 429, CLOSED: 409, NOT_SAVED: 503}.get(error, 400)
    moment = now()
    over = appointment.is_over(moment)
    page = render_template(
        "chat/compose.html",
        text=text,
        sent=sent,
        error=error,
        # Nothing reloads this frame: a chat that opens later must find the form here.
        writable=not over,
        opens_later=not over
        and not appointment.is_open(moment, settings().chat_opens_minutes_before),
        status=window_text(appointment, side),
        max_chars=MAX_MESSAGE_CHARS,
    )
    return Response(page, status, content_type=FRAME_CONTENT_TYPE)


def snippet_text() -> str:
    """Return the text of the snippet a therapist chose (``?snippet=KEY&lang=xx``) to prefill
    the box; "" in the onion app, which has no snippets, or for a key the library lacks.

    Only the box is filled: nothing is sent until the therapist presses Send.
    """
    assist = current_app.config.get("ASSIST")
    key = request.args.get("snippet", "")
    if assist is None or not key:
        return ""
    close_db()  # support may be slow to answer; the chats need the few connections
    text: str = assist.snippet_text(key, request.args.get("lang", ""))
    return text


def send(appointment: ChatAppointment, side: Side, text: str) -> Any:
    """Send ``text`` from this side; return the calm sentence to show if it was not sent."""
    try:
        cleaned = clean_text(text)
    except MessageInputError as problem:
        return EMPTY if problem.reason == "empty" else TOO_LONG
    session = current_session()
    assert session is not None
    # Per person, not per session: logging in again does not reset the limit.
    if not rate_limiter().allow(f"{side.role}:{session.owner_id}".encode()):
        return SLOW_DOWN
    s = settings()
    try:
        send_message(
            db(),
            appointment,
            side.role,
            side.secret_key,
            cleaned,
            now(),
            s.chat_opens_minutes_before,
            s.message_retention_days,
        )
    except ChatClosedError:
        return CLOSED
    except ConversationLockedError:
        return LOCKED
    except StoreUnwritableError as problem:
        problem.report()
        return NOT_SAVED
    announce(appointment, side.role)
    return None


def announce(appointment: ChatAppointment, sender: str | None = None) -> None:
    """Wake whatever waits for news of the pair: held feeds, live sockets, support panels.

    A message of the therapist (``sender``) leaves the support panel as it is (it is
    about the participant's words), so it does not wake it: each such wake read and
    decrypted the pair's latest messages for nothing, as often as the chats themselves.
    """
    HUB.publish(pair_key(appointment))
    if sender != "therapist":
        HUB.publish(panel_key(appointment))


def page_context(appointment: ChatAppointment, area: str) -> dict[str, Any]:
    """Return what every chat page needs for the live script, and allow it for this page."""
    g.live_script = True
    return {
        "live_url": url_for_live(area, appointment.id),
        "live_script_url": current_app.config["LIVE_SCRIPT_URL"],
    }


def url_for_live(area: str, appointment_id: str) -> str:
    """Return the WebSocket path of a chat (the script adds ws:// or wss:// and the host).

    Werkzeug builds WebSocket routes as absolute ``ws://`` addresses; behind the
    portal's TLS proxy that would be the wrong scheme, so only the path is kept.
    """
    return urlsplit(url_for(f"{area}.chat_live", appointment_id=appointment_id)).path


def refuse_unusable_socket() -> None:
    """Answer 400 to a WebSocket request this server cannot upgrade, or from elsewhere.

    The script then falls back to the reloading frame. The Origin check stops another
    site's page from opening a socket with the visitor's cookie.
    """
    if not any(key in request.environ for key in _SOCKET_KEYS) and not (
        request.environ.get("SERVER_SOFTWARE", "").startswith("gevent")
    ):
        abort(400)
    origin = request.headers.get("Origin")
    if origin is None or _origin_of(origin) != own_origin():
        abort(403)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """Return an address's scheme, host and port (the default port when it names none)."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.scheme, parts.hostname, port


def own_origin() -> tuple[str, str, int] | None:
    """Return the origin a page of this app has, as the browser sees it.

    Behind the portal's TLS proxy the request arrives over plain HTTP, so for the
    portal's public host the scheme and port come from ``PORTAL_URL``.
    """
    public_host = current_app.config["PUBLIC_HOST"]
    host = request.host.lower().rsplit(":", 1)[0]
    if public_host not in (None, "127.0.0.1") and host == public_host:
        return _origin_of(current_app.config["SETTINGS"].portal_base_url)
    return _origin_of(f"{request.scheme}://{request.host}")


def live(ws: Any, appointment: ChatAppointment, logged_in: Callable[[], bool]) -> None:
    """Tell the browser "news" each time the pair's chat changes, until it goes away.

    The socket closes, saying nothing more, once its session has ended (a logout in
    another tab, a timeout, a deletion): ``logged_in`` is asked before each note, so
    at the latest after ``LIVE_PING_SECONDS``.
    """
    key = pair_key(appointment)
    seen = HUB.version(key)
    while True:
        current = HUB.wait(key, seen, LIVE_PING_SECONDS)
        if not logged_in():
            ws.close(reason=SESSION_ENDED)
            return
        ws.send("news" if current != seen else "ping")
        seen = current


def init_app(app: Flask) -> None:
    """Serve the live script under a content-hashed name (only chat pages may run it)."""
    script = (package_dir("webapp") / "live.js").read_bytes()
    app.config["LIVE_SCRIPT_URL"] = serve_hashed(
        app, "live_script", script, "text/javascript", "/script/live.{}.js"
    )


def add_chat_routes(
    bp: Blueprint,
    own: Callable[[str], ChatAppointment],
    side: Callable[[], Side],
    login_required: Callable[[Any], Any],
    logged_in: Callable[[], bool],
) -> None:
    """Register the routes both apps' chats share: the two frames, the history, the socket.

    :param own: returns the logged-in user's appointment of that id, or answers 404.
    :param side: returns the logged-in user as a side of the chat.
    :param logged_in: tells whether the session of a socket's request still stands.
    """

    role = "participant" if bp.name == "participant" else "therapist"

    @login_required
    def chat_feed(appointment_id: str) -> Response:
        """The feed frame, which reloads itself (held until news when nothing is new),
        or its live or paused variant, which does not."""

        def answer_now(appointment: ChatAppointment) -> Response:
            # A 304 from memory when the browser's page is current: no side, no decryption.
            return unchanged_feed(appointment, role) or feed(appointment, side())

        if feed_variant():  # reloaded by the script or by the reader, never by a timer
            return answer_now(own(appointment_id))
        answer = held_feed(lambda: own(appointment_id), answer_now, logged_in)
        if answer is not None:
            return answer
        # The session ended while the reload was held: answer as a reload would now.
        g.session, g.stale_cookie = None, True
        ended: Response = login_required(chat_feed)(appointment_id)
        return ended

    @login_required
    def chat_compose(appointment_id: str) -> Any:
        """The compose frame."""
        return compose(own(appointment_id), side())

    @login_required
    def chat_history(appointment_id: str) -> str:
        """The whole conversation on one page, oldest first, without reloading."""
        appointment = own(appointment_id)
        return render_template(
            "chat/history.html",
            messages=history(appointment, side()),
            empty=empty_text(appointment, side()),
            other=other_label(side()),
            back=url_for(f"{bp.name}.chat", appointment_id=appointment_id, _anchor="chat"),
        )

    def chat_live(ws: Any, appointment_id: str) -> None:
        """The live chat's WebSocket: "news" whenever the chat changes."""
        appointment = own(appointment_id)  # check_live_socket has refused anyone logged out
        close_db()  # the socket lives for the whole chat; its connection goes back now
        live(ws, appointment, logged_in)

    def check_live_socket() -> None:
        """Refuse a socket this server cannot upgrade, from another site, without login,
        or for an appointment that is not this user's.

        Refused before the handshake (no ``101``), so the script sees a failed try and
        gives up.
        """
        if request.endpoint == f"{bp.name}.chat_live":
            refuse_unusable_socket()
            if current_session() is None:
                abort(403)
            own((request.view_args or {}).get("appointment_id", ""))  # 404 if not theirs

    bp.add_url_rule("/chat/<appointment_id>/feed", view_func=chat_feed)
    bp.add_url_rule(
        "/chat/<appointment_id>/compose", view_func=chat_compose, methods=["GET", "POST"]
    )
    bp.add_url_rule("/chat/<appointment_id>/history", view_func=chat_history)
    sock.route("/chat/<appointment_id>/live", bp=bp)(chat_live)
    bp.before_request(check_live_socket)
