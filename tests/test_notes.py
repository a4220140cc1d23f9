"""A therapist's private notes: theirs alone, never the participant's to see, and shredded."""

from __future__ import annotations

import re

import pytest

from stillroom.crypto.slots import SLOT_BYTES
from stillroom.webapp.audit import run_audit
from stillroom.webapp.notes import MAX_NOTE_CHARS
from stillroom.webapp.retention import purge
from stillroom.webapp.store import connect
from stillroom.webapp.therapists import reset_therapist

from support import STARTS, every_rule_url, rows

DAY = 24 * 3600
NOTE = "canary-note-7f3a: session 1 went well; wants to talk about evenings next time."


def pseudonym(chat) -> str:
    [[name]] = rows(chat.settings, "SELECT pseudonym FROM pairs")
    return str(name)


def save(chat, text: str):
    """Save notes on the chat's participant as the logged-in therapist."""
    return chat.therapist.post(f"/en/notes/{pseudonym(chat)}", {"text": text})


def shown_notes(chat) -> str:
    html = chat.therapist.client.get(f"/en/notes/{pseudonym(chat)}").get_data(as_text=True)
    found = re.search(r'<textarea id="text"[^>]*>([^<]*)</textarea>', html)
    assert found, html
    return found.group(1)


def slot_bytes(settings, slot: int) -> bytes:
    content = (settings.data_dir / "keys.slots").read_bytes()
    return content[slot * SLOT_BYTES : (slot + 1) * SLOT_BYTES]


def note_slot(settings) -> int:
    [[slot]] = rows(settings, "SELECT slot FROM notes")
    return int(slot)


def raw_files(settings) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(settings.data_dir.rglob("*")) if p.is_file())


def test_notes_are_kept_for_their_therapist_and_sealed_at_rest(chat, settings):
    home = chat.therapist.client.get("/en/").get_data(as_text=True)
    assert f'href="/en/notes/{pseudonym(chat)}"' in home  # reached from the appointment list
    page = chat.therapist.client.get(f"/en/chat/{chat.id}").get_data(as_text=True)
    assert f'href="/en/notes/{pseudonym(chat)}"' in page  # and from the chat
    assert shown_notes(chat) == ""
    response = save(chat, NOTE + "\r\nsecond line")
    assert response.status_code == 302 and "done=notes-saved" in response.location
    assert shown_notes(chat) == NOTE + "\nsecond line"
    assert NOTE.encode() not in raw_files(settings)
    [[body, day]] = rows(settings, "SELECT body, edited_day FROM notes")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", day)  # a day, not a time
    assert len(body) > 1024  # padded: the row does not tell how long the notes are


def test_too_long_notes_are_refused_calmly_and_the_old_ones_stay(chat, settings):
    save(chat, NOTE)
    response = save(chat, "x" * (MAX_NOTE_CHARS + 1))
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert f"at most {MAX_NOTE_CHARS} characters" in html
    assert "x" * (MAX_NOTE_CHARS + 1) in html  # what was typed is not lost
    assert shown_notes(chat) == NOTE


def test_each_change_overwrites_the_previous_versions_key(chat, settings):
    save(chat, NOTE)
    first = note_slot(settings)
    save(chat, "rewritten")
    assert note_slot(settings) != first
    assert slot_bytes(settings, first) == bytes(SLOT_BYTES)
    save(chat, "")  # empty: the notes are deleted
    assert rows(settings, "SELECT count(*) FROM notes") == [(0,)]


def test_another_therapist_can_neither_reach_nor_open_the_notes(chat, settings):
    save(chat, NOTE)
    anna, anna_totp = pseudonym(chat), chat.therapist.secret
    chat.therapist.create("Bruno", languages=("en",))  # the portal's browser is Bruno's now
    response = chat.therapist.client.get(f"/en/notes/{anna}")
    assert response.status_code == 404
    refused = chat.therapist.post(f"/en/notes/{anna}", {"text": "overwritten"}, page="/en/")
    assert refused.status_code == 404
    assert NOTE not in response.get_data(as_text=True)
    chat.therapist.logout()
    chat.therapist.secret = anna_totp
    assert chat.therapist.login("Anna").status_code == 302
    assert shown_notes(chat) == NOTE


def test_the_participant_never_sees_the_notes(chat, settings, app):
    save(chat, NOTE)
    client = chat.auth.client
    pages = [f"/en/chat/{chat.id}", f"/en/chat/{chat.id}/feed", f"/en/chat/{chat.id}/history"]
    pages += [url for url in every_rule_url(app) if "<" not in url]
    seen = []
    for url in pages:
        response = client.get(url)
        seen.append(response.status_code)
        assert NOTE not in response.get_data(as_text=True), url
    assert 200 in seen
    assert client.get(f"/en/notes/{pseudonym(chat)}").status_code == 404
    privacy = client.get("/en/privacy").get_data(as_text=True)
    assert "private notes about you" in privacy  # but "What we store" says they exist


def test_the_purge_deletes_notes_unchanged_for_the_retention_period(chat, settings, clock):
    chat.at(STARTS)
    save(chat, NOTE)
    slot = note_slot(settings)
    db = connect(settings.database_path)
    try:
        purge(db, STARTS + (settings.note_retention_days - 1) * DAY, settings)
        assert rows(settings, "SELECT count(*) FROM notes") == [(1,)]
        purge(db, STARTS + settings.note_retention_days * DAY, settings)
    finally:
        db.close()
    assert rows(settings, "SELECT count(*) FROM notes") == [(0,)]
    assert slot_bytes(settings, slot) == bytes(SLOT_BYTES)


def test_a_change_restarts_the_retention(chat, settings, clock):
    chat.at(STARTS)
    save(chat, NOTE)
    chat.at(STARTS + 60 * DAY)
    save(chat, "still seeing each other")
    db = connect(settings.database_path)
    try:
        purge(db, STARTS + settings.note_retention_days * DAY, settings)
    finally:
        db.close()
    chat.at(STARTS + settings.note_retention_days * DAY)
    assert shown_notes(chat) == "still seeing each other"


def test_deleting_the_account_shreds_the_notes(chat, settings):
    save(chat, NOTE)
    slot = note_slot(settings)
    assert chat.auth.post("/account/delete").status_code == 302
    assert rows(settings, "SELECT count(*) FROM notes") == [(0,)]
    assert slot_bytes(settings, slot) == bytes(SLOT_BYTES)


def test_resetting_the_therapist_shreds_their_notes(chat, settings):
    save(chat, NOTE)
    slot = note_slot(settings)
    db = connect(settings.database_path)
    try:
        reset_therapist(db, "Anna", int(chat.clock()))
    finally:
        db.close()
    assert rows(settings, "SELECT count(*) FROM notes") == [(0,)]
    assert slot_bytes(settings, slot) == bytes(SLOT_BYTES)


@pytest.mark.parametrize("how", ["the participant deletes the chat", "the therapist blocks"])
def test_the_notes_outlive_the_conversation_and_a_block(chat, settings, how):
    chat.at(STARTS)
    assert chat.say("participant", "hello").status_code == 200
    save(chat, NOTE)
    if how == "the therapist blocks":
        assert chat.therapist.post(f"/en/chat/{chat.id}/block").status_code == 302
    else:
        assert chat.auth.post(f"/chat/{chat.id}/delete").status_code == 302
        assert rows(settings, "SELECT count(*) FROM conversations") == [(0,)]
    assert shown_notes(chat) == NOTE


def test_the_audit_counts_the_notes_key_as_a_live_one(chat, settings, clock):
    save(chat, NOTE)
    checks = {check.name: check for check in run_audit(settings, int(clock()))}
    assert checks["key-slots"].ok, checks["key-slots"].detail
    assert checks["schema"].ok, checks["schema"].detail
    assert checks["retention"].ok, checks["retention"].detail
