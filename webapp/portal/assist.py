"""The therapist's support beside a chat: related snippets, quiet prompts, a draft summary.

Everything here is shown to the therapist only, and nothing of it is written: the panel
is worked out in memory at each message of the participant (and kept there, for reloads,
until the next), and a draft is kept only if the therapist saves it into their notes.
Nothing here ever writes to the participant.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any

from flask import (
    Response,
    abort,
    make_response,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_babel import lazy_gettext as _l
from markupsafe import escape

from stillroom.webapp import chatroom
from stillroom.webapp.assist.model import (
    ModelAbsentError,
    ModelError,
    ModelTimeoutError,
    draft_estimate_seconds,
    stream_draft,
)
from stillroom.webapp.assist.risk import PROMPTS, TOPICS
from stillroom.webapp.assist.service import Support, SupportUnavailableError, current_assist
from stillroom.webapp.chat import (
    ChatAppointment,
    ConversationLockedError,
    ShownMessage,
    conversation_id_of,
    conversation_key,
    read_messages,
)
from stillroom.webapp.db import close_db
from stillroom.webapp.gate import current_session, db, now, settings
from stillroom.webapp.hub import HUB
from stillroom.webapp.i18n import current_language
from stillroom.webapp.notes import NoteLockedError, NoteTooLongError, read_note, save_note
from stillroom.webapp.portal.appointments import own, pseudonym_of
from stillroom.webapp.portal.blueprint import bp, gate, login_required
from stillroom.webapp.portal.chat import side

#: The participant's latest messages the panel is about.
LATEST_MESSAGES = 3
#: Seconds between the panel's reloads while the chat is open.
PANEL_SECONDS = 15
#: Never kept on the therapist's disk: a prompt ("consider asking about thoughts of
#: suicide") says something about the participant. Reloads are held until the chat
#: changes, so few are made; a client that keeps a copy anyway may still get a 304.
PANEL_CACHE = "no-store"
#: Where the model's draft and a failure's message go in the rendered page.
DRAFT_MARK = "\x1edraft\x1e"
FAILURE_MARK = "\x1efailure\x1e"
#: How draft.html shows a failure (the streamed page writes it in the same form).
ALERT = '<p class="error" role="alert">{}</p>'
TOPIC_NAMES = {
    "self-harm": _l("suicidality or self-harm"),
    "children": _l("access to children or contact with a child"),
    "intent": _l("escalation or intent to act"),
    "material": _l("use of abuse material"),
    "crisis": _l("an acute crisis"),
}
ABSENT = _l(
    "The draft could not be written: the summary model is not running on this server just"
    " now. Nothing was lost. A draft usually takes about %(minutes)s minutes; please try"
    " again later, or write your notes yourself."
)
SLOW = _l(
    "The summary model took too long, so the draft stopped here. Nothing was lost. A draft"
    " usually takes about %(minutes)s minutes; please try again when the server is quieter."
)
FAILED = _l(
    "The summary model stopped before the draft was finished. Nothing was lost: what it"
    " wrote is above. A draft usually takes about %(minutes)s minutes; please try again later."
)
NOTHING = _l(
    "There is nothing to summarise: no message of this session can be read any more (the"
    " participant may have deleted the conversation, or its messages have expired)."
)
UNCHECKED = _l(
    "Risk topics: they could not be checked just now (the service's support is starting or"
    " busy), so this draft says nothing about which were discussed. Ask again in a minute."
)
GONE = _l(
    "The messages of this session can no longer be read (the participant may have deleted"
    " the conversation), so this draft cannot be saved."
)


class LastWorkedOut:
    """Each chat's last panel suggestions, in the portal's memory only, for a short while.

    A panel is reloaded far more often than the participant writes: after each answer,
    when the therapist writes, when a hold ends. Only a new message of the participant
    (or another language) changes what support would say, so the rest are answered from
    here instead of asking support again.
    """

    #: How long after its last use a chat's suggestions are kept: past a held reload.
    SECONDS = 180.0

    def __init__(self) -> None:
        """Start with nothing kept."""
        self._kept: dict[str, tuple[str, Any, float, bool]] = {}
        self._next_sweep = 0.0

    #: How long a panel support did not answer waits before it asks again (the next
    #: message asks at once): retried at each reload, 1,000 such panels kept a busy
    #: support process busier still.
    RETRY_SECONDS = 20.0

    def get(self, chat: str, state: str) -> Any | None:
        """Return what was worked out for ``chat`` in ``state``, or ``None``."""
        kept = self._kept.get(chat)
        if kept is None or kept[0] != state or kept[2] < time.monotonic():
            return None
        if kept[3]:  # an answer: kept as long as the panel is looked at
            self._kept[chat] = (state, kept[1], time.monotonic() + self.SECONDS, True)
        return kept[1]

    def keep(self, chat: str, state: str, worked_out: Any, answered: bool = True) -> None:
        """Keep what was worked out for ``chat`` in ``state``, in place of the last; not
        ``answered`` (support did not answer), only for :data:`RETRY_SECONDS`."""
        moment = time.monotonic()
        until = moment + (self.SECONDS if answered else self.RETRY_SECONDS)
        self._kept[chat] = (state, worked_out, until, answered)
        if moment >= self._next_sweep:  # drop the chats no panel looked at for a while
            self._kept = {c: k for c, k in list(self._kept.items()) if k[2] >= moment}
            self._next_sweep = moment + self.SECONDS


LAST_WORKED_OUT = LastWorkedOut()


class PanelPages:
    """Each open panel's last page, in the portal's memory only, while nothing on it can
    have changed.

    A held panel looks again when its hold ends and is asked for again at once, and holds
    begun together end together: 1,000 panels reading and decrypting their pair's latest
    messages at once took the chats' event loop for seconds (``chat_load.py --assist``).
    A page stays good while the panel's key on the notice board stands still (nothing
    the participant wrote, no deletion, no end) and none of the chat's own moments has
    come; it is never kept when support did not answer, so that it is asked again.
    """

    #: How long after its last use a panel's page is kept: past a held reload.
    SECONDS = 180.0

    def __init__(self) -> None:
        """Start with nothing kept."""
        self._kept: dict[tuple[Any, ...], tuple[int, float, str, str, float]] = {}
        self._next_sweep = 0.0

    def get(self, viewer: tuple[Any, ...], version: int, moment: int) -> tuple[str, str] | None:
        """Return the (ETag, page) kept for ``viewer`` at board ``version``, or ``None``."""
        kept = self._kept.get(viewer)
        if kept is None or kept[0] != version or moment >= kept[1]:
            return None
        self._kept[viewer] = (*kept[:4], time.monotonic() + self.SECONDS)
        return kept[2], kept[3]

    def keep(
        self, viewer: tuple[Any, ...], version: int, until: float, etag: str, page: str
    ) -> None:
        """Keep ``viewer``'s page, worked out at board ``version``, until the moment ``until``."""
        moment = time.monotonic()
        self._kept[viewer] = (version, until, etag, page, moment + self.SECONDS)
        if moment >= self._next_sweep:  # drop the panels nobody looked at for a while
            self._kept = {v: k for v, k in list(self._kept.items()) if k[4] >= moment}
            self._next_sweep = moment + self.SECONDS


PANEL_PAGES = PanelPages()


def support() -> Support:
    """Return the portal's therapist support, or answer 404 when it is off."""
    assist = current_assist()
    if assist is None:
        abort(404)
    return assist


def chat_language(appointment: ChatAppointment) -> str:
    """Return the language the participant booked in: the language of what they read."""
    row = (
        db().execute("SELECT language FROM appointments WHERE id = ?", [appointment.id]).fetchone()
    )
    return str(row[0]) if row and row[0] else current_language()


def messages_of(appointment: ChatAppointment, newest: int | None = None) -> list[ShownMessage]:
    """Return the pair's messages, oldest first (unreadable ones with ``opened=None``).

    A conversation the participant asked to delete when the chat ends counts as gone once
    it has ended, even in the minute before the purge removes it.
    """
    conversation_id = conversation_id_of(db(), appointment.participant_id, appointment.therapist_id)
    if conversation_id is None:
        return []
    flagged = (
        db()
        .execute("SELECT delete_when_chat_ends FROM conversations WHERE id = ?", [conversation_id])
        .fetchone()
    )
    if flagged and flagged[0] and appointment.is_over(now()):
        return []
    try:
        key = conversation_key(db(), conversation_id, "therapist", side().secret_key)
    except ConversationLockedError:
        return []
    return read_messages(db(), conversation_id, key, newest=newest)


def transcript_of(
    appointment: ChatAppointment, newest: int | None = None
) -> list[tuple[int, str, str]]:
    """Return the chat's readable messages as (number, speaker, text), oldest first."""
    return [
        (message.seq, message.opened.sender, message.opened.text)
        for message in messages_of(appointment, newest)
        if message.opened is not None
    ]


def session_transcript(appointment: ChatAppointment) -> tuple[list[tuple[str, str]], int]:
    """Return this session's readable messages as (speaker, text), and how many were not.

    The pair's conversation may hold earlier sessions too: a draft is of this one only,
    the messages sent while its chat was open.
    """
    first = appointment.opens_at(settings().chat_opens_minutes_before) // 60
    last = appointment.closes_at() // 60
    readable, unreadable = [], 0
    for message in messages_of(appointment):
        if message.opened is None:
            unreadable += 1
        elif first <= message.opened.minute <= last:
            readable.append((message.opened.sender, message.opened.text))
    return readable, unreadable


@bp.get("/chat/<appointment_id>/assist")
@login_required
def chat_assist(appointment_id: str) -> Response:
    """The support frame: snippets related to the participant's latest messages, and prompts.

    It reloads like the feed: held under ``stillroom serve`` until the participant writes
    or the chat changes otherwise (no timed refresh, WCAG 2.2.1), and answered with a
    bare 304 while the participant's latest messages are unchanged.
    """
    assist = support()
    answer = chatroom.held_feed(
        lambda: own(appointment_id),
        lambda shown: panel(shown, assist),
        gate.session_still_live,
        chatroom.panel_key,
    )
    if answer is None:  # the session ended while the reload was held
        abort(403)
    return answer


def panel(appointment: ChatAppointment, assist: Support) -> Response:
    """Answer one load of the support frame: the page, or 304 when nothing changed."""
    session = current_session()
    assert session is not None
    held = chatroom.hold_seconds()
    # Each kind of page apart: its language, held or not, and what its reload is called.
    viewer = (session.token_hash, appointment.id, current_language(), held, chatroom.reload_name())
    version = HUB.version(chatroom.panel_key(appointment))  # before reading: news moves it on
    kept = PANEL_PAGES.get(viewer, version, now())
    if kept is None:
        worked_out = work_out_panel(appointment, assist, held)
        if isinstance(worked_out, Response):
            return worked_out
        etag, page, unchecked = worked_out
        if not unchecked:
            until = now() + chatroom.seconds_to_next_change(appointment)
            PANEL_PAGES.keep(viewer, version, until, etag, page)
    else:
        etag, page = kept
        if etag in request.if_none_match:
            return panel_unchanged(etag)
    response = make_response(page)
    response.set_etag(etag)
    response.headers["Cache-Control"] = PANEL_CACHE
    return response


def panel_unchanged(etag: str) -> Response:
    """Answer a panel whose copy is current: a bare 304."""
    unchanged = Response(status=304)
    unchanged.set_etag(etag)
    unchanged.headers["Cache-Control"] = PANEL_CACHE
    return unchanged


def participant_latest(appointment: ChatAppointment) -> list[tuple[int, str]]:
    """Return the participant's latest messages the panel is about, as (number, text).

    Looked for among the feed's newest messages first, and among all of them when the
    therapist wrote so much since that fewer are there: the therapist's words must not
    change the panel.
    """
    newest = transcript_of(appointment, newest=chatroom.FEED_MESSAGES)
    theirs = [(seq, text) for seq, speaker, text in newest if speaker == "participant"]
    if len(theirs) < LATEST_MESSAGES and len(newest) >= chatroom.FEED_MESSAGES:
        every = transcript_of(appointment)
        theirs = [(seq, text) for seq, speaker, text in every if speaker == "participant"]
    return theirs[-LATEST_MESSAGES:]


def work_out_panel(
    appointment: ChatAppointment, assist: Support, held: int
) -> tuple[str, str, bool] | Response:
    """Return the panel's (ETag, page, whether support did not answer), or a 304 when the
    browser's copy is current (support is then not asked)."""
    latest = participant_latest(appointment)
    lang = chat_language(appointment)
    interval = None if appointment.is_over(now()) else (0 if held else PANEL_SECONDS)
    seqs = [seq for seq, _ in latest]
    state = f"{assist.features}:{seqs}:{lang}:{current_language()}:{interval}"
    digest = hashlib.blake2b(state.encode(), digest_size=6).digest()
    etag = base64.urlsafe_b64encode(digest).decode()
    if etag in request.if_none_match:
        return panel_unchanged(etag)
    texts = [text for _, text in latest]
    # Embedding takes a while and the connections are few: the chats must not wait for one.
    close_db()
    known = LAST_WORKED_OUT.get(appointment.id, etag)
    if known is None:
        try:
            snippets = assist.related(texts, lang) if "related" in assist.features else []
            topics = assist.topics(texts) if "risk" in assist.features else []
            known = (snippets, topics, False)
        except SupportUnavailableError:  # said on the page: no prompt is not "no risk"
            known = ([], [], True)
        LAST_WORKED_OUT.keep(appointment.id, etag, known, answered=not known[2])
    snippets, topics, unchecked = known
    if unchecked:  # another page: the reload after it is answered as soon as support is back
        etag = f"{etag}-unchecked"
    page = render_template(
        "portal/assist.html",
        related_on="related" in assist.features,
        risk_on="risk" in assist.features,
        snippets=snippets,
        snippet_lang=lang,
        prompts=[PROMPTS[topic] for topic in topics],
        heard=bool(latest),
        unchecked=unchecked,
        interval=interval,
        reload=f"?{chatroom.reload_name()}={etag}" if held else "",
        compose_url=url_for("portal.chat_compose", appointment_id=appointment.id),
    )
    return etag, page, unchecked


def estimate_minutes(transcript: Sequence[tuple[str, str]]) -> int:
    """Return roughly how many minutes a draft of ``transcript`` takes on this server."""
    return max(1, math.ceil(draft_estimate_seconds(settings(), transcript) / 60))


def risk_lines(transcript: Sequence[tuple[str, str]], assist: Support) -> list[str]:
    """Return the draft's risk-topic lines, listed by code from every message, never guessed.

    Both sides' words count: a topic the therapist asked about was discussed. They are
    shown apart from the model's text, which cannot imitate them.
    """
    try:
        found = set(assist.topics([text for _, text in transcript], whole=True))
    except SupportUnavailableError:  # never "not discussed" of a check that did not run
        return [str(UNCHECKED)]
    discussed = [str(TOPIC_NAMES[t]) for t in TOPICS if t in found]
    missing = [str(TOPIC_NAMES[t]) for t in TOPICS if t not in found]
    none = str(_l("none"))
    return [
        str(_l("Risk topics (found by the service in the words of the chat, not by the model):")),
        str(_l("Discussed: %(topics)s", topics="; ".join(discussed) or none)),
        str(
            _l(
                "Not discussed (no words about it were found): %(topics)s",
                topics="; ".join(missing) or none,
            )
        ),
    ]


def clean_piece(piece: str) -> str:
    """Drop the control and format characters of a model's text (line breaks and tabs stay).

    A direction override could reorder a line of the draft the therapist reads.
    """
    return "".join(
        c for c in piece if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf", "Cs")
    )


def summary_support() -> Support:
    """Return the portal's therapist support, or answer 404 unless the draft summary is on."""
    assist = support()
    if "summary" not in assist.features:
        abort(404)
    return assist


@bp.post("/chat/<appointment_id>/draft")
@login_required
def draft(appointment_id: str) -> Any:
    """Write a draft summary of a closed chat, streamed into an editable field."""
    assist = summary_support()
    appointment = own(appointment_id)
    if not appointment.is_over(now()):
        return redirect(url_for("portal.chat", appointment_id=appointment_id))
    transcript, unreadable = session_transcript(appointment)
    if not transcript:  # nothing to draft from: no "not discussed" list of an empty chat
        return draft_page(appointment, failure=NOTHING)
    lang = chat_language(appointment)
    minutes = estimate_minutes(transcript)
    pseudonym = pseudonym_of(appointment)
    close_db()  # the risk lines read the whole session: the chats must not wait for it
    risks = risk_lines(transcript, assist)
    page, _ = draft_page(
        appointment,
        DRAFT_MARK,
        FAILURE_MARK,
        risks,
        pseudonym=pseudonym,
        minutes=minutes,
        unreadable=unreadable,
    )
    head, _, rest = page.partition(DRAFT_MARK)
    middle, _, tail = rest.partition(ALERT.format(FAILURE_MARK))
    s = settings()
    close_db()  # a draft takes minutes; its connection goes back now

    def body() -> Iterator[str]:
        yield head
        failure = None
        try:
            for piece in stream_draft(s, transcript, lang):
                yield str(escape(clean_piece(piece)))  # the model's words are untrusted text
        except ModelAbsentError:
            failure = ABSENT
        except ModelTimeoutError:
            failure = SLOW
        except ModelError:
            failure = FAILED
        yield middle
        if failure is not None:
            yield ALERT.format(escape(str(failure) % {"minutes": minutes}))
        yield tail

    response = Response(stream_with_context(body()), content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/chat/<appointment_id>/draft/save")
@login_required
def save_draft(appointment_id: str) -> Any:
    """Add the (edited) draft and its risk lines to the end of the therapist's notes."""
    summary_support()
    appointment = own(appointment_id)
    if not appointment.is_over(now()):
        return redirect(url_for("portal.chat", appointment_id=appointment_id))
    session = current_session()
    assert session is not None
    text = request.form.get("text", "").strip()
    risks = request.form.get("risks", "").strip()
    pseudonym = pseudonym_of(appointment)
    if not session_transcript(appointment)[0]:  # deleted since: its draft goes with it
        return draft_page(appointment, text=text, failure=GONE, status=400)
    joined_draft = f"{text}\n\n{risks}" if risks else text
    error = None
    try:
        note = read_note(db(), session.owner_id, appointment.participant_id, session.secret_key)
        joined = f"{note.text}\n\n{joined_draft}" if note and note.text else joined_draft
        save_note(db(), session.owner_id, appointment.participant_id, joined, now())
    except NoteTooLongError:
        error = _l("Your notes and this draft together are too long: please shorten the draft.")
    except NoteLockedError:
        error = _l(
            "Your notes were sealed to a key you no longer have, so nothing can be added to them."
        )
    if error is None:
        return redirect(url_for("portal.notes", pseudonym=pseudonym, done="notes-saved"))
    return draft_page(appointment, text=text, failure=error, risks=risks.splitlines(), status=400)


def draft_page(
    appointment: ChatAppointment,
    text: str = "",
    failure: Any = None,
    risks: list[str] | None = None,
    status: int = 200,
    pseudonym: str | None = None,
    minutes: int | None = None,
    unreadable: int = 0,
) -> tuple[str, int]:
    """Render the draft's page: with ``minutes``, the one the model's text streams into;
    without, a calm message and the text kept."""
    page = render_template(
        "portal/draft.html",
        pseudonym=pseudonym or pseudonym_of(appointment),
        appointment=appointment,
        text=text,
        failure=failure,
        minutes=minutes,
        risks=risks,
        unreadable=unreadable,
        nothing=failure is NOTHING,
        paused_when_busy=not settings().assist_model_address,  # serve's own model only
    )
    return page, status
