"""Availability and booking: the rules a participant and a therapist rely on."""

from __future__ import annotations

import dataclasses
import itertools
import re
import threading
from datetime import UTC, datetime

import pytest
from flask_babel import force_locale, gettext

from stillroom.webapp.app import create_participant_app
from stillroom.webapp.booking import SlotTakenError, book, booking_opens_at
from stillroom.webapp.retention import purge
from stillroom.webapp.store import connect
from stillroom.webapp.times import format_when

from support import NASTY, AuthActions, LoopbackClient, form_fields

SLOT = re.compile(r"name=slot value=([0-9a-f]+)")
#: 2027-01-15 08:00 UTC, the tests' clock.
MONDAY = "2027-01-18"


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def free_slot_ids(client, lang: str = "en", move: str | None = None, week: int = 0) -> list[str]:
    page = client.get(f"/{lang}/book?week={week}" + (f"&move={move}" if move else ""))
    return SLOT.findall(page.get_data(as_text=True))


def book_slot(auth: AuthActions, slot_id: str, move: str | None = None):
    data = {"slot": slot_id, **({"move": move} if move else {})}
    page = f"/book?move={move}" if move else "/book"
    return auth.post("/book", data, page=page)


def rows(settings, sql: str) -> list[tuple]:
    db = connect(settings.database_path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.fixture
def published(therapist):
    """Anna (de, en; Europe/Berlin) offers Monday 18:00 and 19:00."""
    therapist.create()
    assert therapist.publish(MONDAY, "18:00").status_code == 302
    assert therapist.publish(MONDAY, "19:00").status_code == 302
    return therapist


@pytest.fixture
def today_and_monday(therapist):
    """Anna offers today 11:00 in Berlin (two hours ahead) and Monday 18:00."""
    therapist.create()
    assert therapist.publish("2027-01-15", "11:00").status_code == 302
    assert therapist.publish(MONDAY, "18:00").status_code == 302
    return therapist


def test_the_earliest_bookable_time_is_a_setting(today_and_monday, auth, client, settings, clock):
    strict_app = create_participant_app(
        dataclasses.replace(settings, booking_notice_minutes=180), clock=clock
    )
    strict_app.test_client_class = LoopbackClient
    strict = AuthActions(strict_app.test_client())
    strict.create()
    auth.create()
    today_slot, monday_slot = free_slot_ids(client)  # two hours ahead is enough by default
    assert free_slot_ids(strict.client) == [monday_slot]  # three hours are asked for here
    refused = book_slot(strict, today_slot)
    assert refused.status_code == 409
    assert "no longer available" in refused.get_data(as_text=True)
    assert book_slot(auth, today_slot).status_code == 302


def test_times_within_the_cutoff_say_they_cannot_be_changed(
    today_and_monday, auth, client, settings
):
    auth.create()
    note = "less than 24 hours ahead: once booked, it cannot be moved or cancelled"
    today_slot, monday_slot = free_slot_ids(client)
    page = client.get("/en/book").get_data(as_text=True)
    assert page.count(note) == 1
    assert page.index(today_slot) < page.index(note) < page.index(monday_slot)
    book_slot(auth, monday_slot)
    [[appointment_id]] = rows(settings, "SELECT id FROM appointments")
    moving = client.get(f"/en/book?move={appointment_id}").get_data(as_text=True)
    assert moving.count(note) == 1 and today_slot in moving  # as a move target too


def test_the_move_page_names_the_appointment_being_moved(published, auth, client, settings):
    auth.create()
    first, _ = free_slot_ids(client)
    book_slot(auth, first)
    [[appointment_id]] = rows(settings, "SELECT id FROM appointments")
    page = client.get(f"/en/book?move={appointment_id}").get_data(as_text=True)
    booked = format_when(utc("2027-01-18T17:00"), utc("2027-01-18T17:50"), "Europe/Lisbon", "en")
    heading = page.index("Move your appointment")
    assert heading < page.index(booked) < page.index("Chat with Anna, in English.")
    assert booked not in client.get("/en/book").get_data(as_text=True)


def test_a_participant_books_a_published_time_and_sees_it(published, auth, client):
    auth.create()
    slots = free_slot_ids(client)
    assert len(slots) == 2
    page = client.get("/en/book").get_data(as_text=True)
    # Anna's 18:00 and 19:00 in Berlin, shown in Western Europe (an English account's band).
    assert "Monday, 18 January 2027" in page
    assert page.index("17:00–17:50, Anna") < page.index("18:00–18:50, Anna")
    response = book_slot(auth, slots[0])
    assert response.status_code == 302 and "done=booked" in response.location
    account = client.get(response.location).get_data(as_text=True)
    assert "Your appointment is booked" in account
    assert "Chat with Anna, in English." in account
    assert free_slot_ids(client) == [slots[1]]


def test_the_booking_page_shows_one_week_at_a_time(therapist, auth, client):
    therapist.create()
    assert therapist.publish("2027-02-01", "18:00").status_code == 302  # in 17 days
    auth.create()
    first = client.get("/en/book").get_data(as_text=True)
    assert "name=slot" not in first and "in these seven days" in first
    assert 'href="/en/book?week=1">Later times<' in first
    assert free_slot_ids(client, week=1) == []
    third = client.get("/en/book?week=2").get_data(as_text=True)
    assert len(SLOT.findall(third)) == 1 and "Earlier times" in third and "Later times" not in third
    for tampered in ("-3", "x", "99", "1e9"):
        assert client.get(f"/en/book?week={tampered}").status_code == 200


def test_times_are_shown_in_the_participants_band(published, auth, client):
    auth.create()  # English accounts start in Western Europe (UTC+0 in January)
    assert "17:00–17:50" in client.get("/en/book").get_data(as_text=True)
    assert auth.post("/time-zone", {"zone": "Europe/Athens"}, page="/book").status_code == 302
    assert "19:00–19:50" in client.get("/en/book").get_data(as_text=True)
    assert auth.post("/time-zone", {"zone": "Mars/Olympus"}, page="/book").status_code == 400


def test_a_german_account_starts_in_central_europe(published, app):
    german = AuthActions(app.test_client(), lang="de")
    german.create()
    assert "18:00–18:50" in german.client.get("/de/book").get_data(as_text=True)


def test_only_slots_in_the_participants_language_are_offered(published, app):
    czech = AuthActions(app.test_client(), lang="cs")
    czech.create()
    assert free_slot_ids(czech.client, "cs") == []
    assert len(free_slot_ids(czech.client, "en")) == 2  # the language of the page decides


def test_the_therapist_sees_a_random_stable_pseudonym(published, auth, client, settings):
    auth.create()
    first, second = free_slot_ids(client)
    book_slot(auth, first)
    home = published.client.get("/en/").get_data(as_text=True)
    [pseudonym] = re.findall(r'class="pseudonym">([A-Z0-9-]+)<', home)
    assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}", pseudonym)
    [[appointment_id]] = rows(settings, "SELECT id FROM appointments")
    assert auth.post(f"/appointments/{appointment_id}/cancel").status_code == 302
    book_slot(auth, second)
    assert re.findall(
        r'class="pseudonym">([A-Z0-9-]+)<', published.client.get("/en/").get_data(as_text=True)
    ) == [pseudonym]


def test_at_most_one_upcoming_booking_by_default(published, auth, client):
    auth.create()
    first, second = free_slot_ids(client)
    book_slot(auth, first)
    response = book_slot(auth, second)
    assert response.status_code == 409
    assert "You already have an upcoming appointment" in response.get_data(as_text=True)


def test_cancelling_frees_the_time_until_the_cutoff(published, auth, client, clock, settings):
    passphrase = auth.create()
    first, _ = free_slot_ids(client)
    book_slot(auth, first)
    [[appointment_id]] = rows(settings, "SELECT id FROM appointments")
    clock.now = utc("2027-01-17T17:30:00")  # 23.5 hours before
    auth.login(passphrase)
    assert "can no longer be moved or cancelled here" in client.get("/en/account").get_data(
        as_text=True
    )
    late = auth.post(f"/appointments/{appointment_id}/cancel")
    assert late.status_code == 409
    assert "less than 24 hours away" in late.get_data(as_text=True)
    clock.now = utc("2027-01-17T16:00:00")  # the same session, 25.5 hours before
    assert auth.post(f"/appointments/{appointment_id}/cancel").status_code == 302
    assert rows(settings, "SELECT id FROM appointments") == []
    assert first in free_slot_ids(client)


def test_moving_is_atomic(published, auth, client, app, settings):
    auth.create()
    first, second = free_slot_ids(client)
    book_slot(auth, first)
    [[appointment_id]] = rows(settings, "SELECT id FROM appointments")
    other = AuthActions(app.test_client())
    other.create()
    book_slot(other, second)
    taken = book_slot(auth, second, move=appointment_id)
    assert taken.status_code == 409
    assert rows(settings, f"SELECT slot_id FROM appointments WHERE id = '{appointment_id}'") == [
        (first,)
    ]
    book_slot(other, second)  # nothing changed for the other participant either
    other_id = rows(settings, f"SELECT id FROM appointments WHERE id != '{appointment_id}'")[0][0]
    assert other.post(f"/appointments/{other_id}/cancel").status_code == 302
    moved = book_slot(auth, second, move=appointment_id)
    assert moved.status_code == 302 and "done=moved" in moved.location
    assert rows(settings, "SELECT slot_id FROM appointments") == [(second,)]


def test_a_therapist_cancels_with_a_note_only_the_participant_can_read(
    published, auth, client, settings
):
    auth.create()
    book_slot(auth, free_slot_ids(client)[0])
    [[appointment_id]] = rows(settings, "SELECT id FROM appointments")
    note = "I am ill today, please book again next week."
    response = published.post(f"/en/appointments/{appointment_id}/cancel", {"note": note})
    assert response.status_code == 302
    assert note.encode() not in settings.database_path.read_bytes()
    assert note.encode() not in b"".join(
        path.read_bytes() for path in settings.data_dir.glob("stillroom.db*")
    )
    account = client.get("/en/account").get_data(as_text=True)
    assert note in account and "had to cancel" in account
    assert auth.post(f"/appointments/{appointment_id}/dismiss", page="/account").status_code == 302
    assert rows(settings, "SELECT id FROM appointments") == []
    assert len(free_slot_ids(client)) == 1  # the cancelled time is withdrawn, not reopened


def test_another_users_objects_answer_404(published, auth, client, app, settings, therapist):
    auth.create()
    slot_a, slot_b = free_slot_ids(client)
    book_slot(auth, slot_a)
    [[appointment_id]] = rows(settings, "SELECT id FROM appointments")
    stranger = AuthActions(app.test_client())
    stranger.create()
    assert stranger.client.get(f"/en/appointments/{appointment_id}/cancel").status_code == 404
    assert stranger.client.get(f"/en/book?move={appointment_id}").status_code == 404
    assert (
        stranger.post("/book", {"slot": slot_b, "move": appointment_id}, page="/book").status_code
        == 404
    )
    assert (
        stranger.post(f"/appointments/{appointment_id}/dismiss", page="/account").status_code == 404
    )
    for tampered in ("0" * 32, appointment_id[:-1] + "x", "../../etc", "%00"):
        assert auth.client.get(f"/en/appointments/{tampered}/cancel").status_code == 404
        gone = auth.post("/book", {"slot": tampered}, page="/book")
        assert gone.status_code == 409  # an unknown or withdrawn time: said calmly
        assert "This time is no longer available" in gone.get_data(as_text=True)


def test_another_therapists_objects_answer_404(published, auth, client, settings, portal_app):
    auth.create()
    book_slot(auth, free_slot_ids(client)[0])
    [[appointment_id]] = rows(settings, "SELECT id FROM appointments")
    [[free_id]] = rows(
        settings, "SELECT id FROM slots WHERE id NOT IN (SELECT slot_id FROM appointments)"
    )
    other = type(published)(portal_app.test_client(), published.clock, settings.database_path)
    other.create("Bruno", ("en",))
    assert other.client.get(f"/en/appointments/{appointment_id}/cancel").status_code == 404
    assert other.post(f"/en/slots/{free_id}/delete", page="/en/availability").status_code == 404
    assert published.post(f"/en/slots/{free_id}/delete", page="/en/availability").status_code == 302


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"date": "tomorrow"}, "could not be read"),
        ({"date": "2027-02-30"}, "could not be read"),
        ({"date": "9999-12-31", "weeks": "2"}, "could not be read"),
        ({"time": "25:00"}, "could not be read"),
        ({"time": "18"}, "could not be read"),
        ({"date": ""}, "could not be read"),
        ({"date": "2027-01-01"}, "must start in the future"),
        ({"date": "9999-12-31", "time": "23:30"}, "at most a year ahead"),
        ({"date": "2028-01-31"}, "at most a year ahead"),
        ({"duration": "5"}, "between 15 and 180 minutes"),
        ({"duration": "600"}, "between 15 and 180 minutes"),
        ({"duration": "fifty"}, "could not be read"),
        ({"weeks": "0"}, "1 to 12 weeks"),
        ({"weeks": "13"}, "1 to 12 weeks"),
        ({"languages": ()}, "at least one of your languages"),
        ({"languages": ("cs",)}, "at least one of your languages"),
    ],
)
def test_bad_availability_input_is_explained(therapist, fields, says):
    therapist.create()
    values = {
        "date": MONDAY,
        "time": "18:00",
        "duration": "50",
        "weeks": "1",
        "languages": ("de", "en"),
        **fields,
    }
    response = therapist.publish(**values)
    assert response.status_code == 400
    assert says in response.get_data(as_text=True)
    assert "Your published times" in response.get_data(as_text=True)


def test_a_weekly_pattern_publishes_one_slot_per_week(therapist, settings):
    therapist.create()
    assert therapist.publish(MONDAY, "09:30", weeks="3").status_code == 302
    starts = [row[0] for row in rows(settings, "SELECT starts_at FROM slots ORDER BY starts_at")]
    assert [b - a for a, b in itertools.pairwise(starts)] == [7 * 24 * 3600] * 2


def test_overlapping_slots_are_refused_and_nothing_is_published(therapist, settings):
    therapist.create()
    therapist.publish("2027-01-25", "18:00")
    response = therapist.publish(MONDAY, "17:00", duration="120", weeks="2")  # week 2 clashes
    assert response.status_code == 400
    assert "overlaps a time you already have" in response.get_data(as_text=True)
    assert "Monday, 25 January 2027, 18:00–18:50" in response.get_data(as_text=True)
    assert len(rows(settings, "SELECT id FROM slots")) == 1


def test_a_booked_slot_cannot_be_withdrawn(published, auth, client, settings):
    auth.create()
    slot = free_slot_ids(client)[0]
    book_slot(auth, slot)
    assert published.post(f"/en/slots/{slot}/delete", page="/en/availability").status_code == 409


def test_fifty_participants_racing_for_one_slot_get_exactly_one_booking(published, app, settings):
    [[slot_id], _] = rows(settings, "SELECT id FROM slots ORDER BY starts_at")
    racers = [AuthActions(app.test_client()) for _ in range(50)]
    forms = []
    for racer in racers:
        racer.create()
        forms.append(form_fields(racer.client.get("/en/book").get_data(as_text=True)))
    barrier = threading.Barrier(len(racers))
    results: list[tuple[int, str]] = []

    def race(racer: AuthActions, form: dict[str, str]) -> None:
        barrier.wait(timeout=30)
        response = racer.client.post("/en/book", data={**form, "slot": slot_id})
        results.append((response.status_code, response.get_data(as_text=True)))

    threads = [threading.Thread(target=race, args=pair) for pair in zip(racers, forms, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(code for code, _ in results) == [302] + [409] * 49
    assert all(
        "Someone booked this time just before you" in body for code, body in results if code == 409
    )
    assert rows(settings, f"SELECT count(*) FROM appointments WHERE slot_id = '{slot_id}'") == [
        (1,)
    ]


def test_booking_the_same_slot_twice_in_the_domain_raises_taken(published, auth, app, settings):
    [[slot_id], _] = rows(settings, "SELECT id FROM slots ORDER BY starts_at")
    auth.create()
    other = AuthActions(app.test_client())
    other.create()
    ids = [row[0] for row in rows(settings, "SELECT id FROM participants")]
    db = connect(settings.database_path)
    try:
        book(db, ids[0], slot_id, "en", int(published.clock()), 1, 0)
        with pytest.raises(SlotTakenError):
            book(db, ids[1], slot_id, "en", int(published.clock()), 1, 0)
    finally:
        db.close()


@pytest.mark.parametrize(
    ("therapist_zone", "first", "weeks", "utc_starts", "lisbon"),
    [
        # Berlin 18:00 on the Sundays around the last Sunday of March and of October 2027.
        ("Europe/Berlin", "2027-03-21", "2", ["2027-03-21T17:00", "2027-03-28T16:00"], "17:00"),
        ("Europe/Berlin", "2027-10-24", "2", ["2027-10-24T16:00", "2027-10-31T17:00"], "17:00"),
        ("Europe/Lisbon", "2027-03-21", "2", ["2027-03-21T18:00", "2027-03-28T17:00"], "18:00"),
        ("Europe/Lisbon", "2027-10-24", "2", ["2027-10-24T17:00", "2027-10-31T18:00"], "18:00"),
    ],
)
def test_weekly_times_keep_their_wall_clock_across_daylight_saving(
    therapist, auth, client, clock, settings, therapist_zone, first, weeks, utc_starts, lisbon
):
    clock.now = utc(first + "T00:00:00") - 7 * 24 * 3600
    therapist.create(time_zone=therapist_zone)
    assert therapist.publish(first, "18:00", weeks=weeks).status_code == 302
    starts = [row[0] for row in rows(settings, "SELECT starts_at FROM slots ORDER BY starts_at")]
    assert starts == [utc(text + ":00") for text in utc_starts]
    auth.create()  # English: Western Europe, which changes its clocks at the same instant
    pages = "".join(client.get(f"/en/book?week={week}").get_data(as_text=True) for week in range(3))
    assert pages.count(f"{lisbon}–") == 2


@pytest.mark.parametrize(
    ("zone", "day", "time"),
    [
        ("Europe/Berlin", "2027-03-28", "02:30"),  # skipped
        ("Europe/Berlin", "2027-10-31", "02:30"),  # happens twice
        ("Europe/Lisbon", "2027-03-28", "01:30"),
        ("Europe/Lisbon", "2027-10-31", "01:30"),
    ],
)
def test_wall_clock_times_that_the_clock_change_skips_or_repeats_are_refused(
    therapist, clock, zone, day, time
):
    clock.now = utc("2027-03-01T00:00:00")
    therapist.create(time_zone=zone)
    response = therapist.publish(day, time)
    assert response.status_code == 400
    assert "clocks change that night" in response.get_data(as_text=True)


def test_appointments_are_deleted_after_the_retention_period(
    published, auth, client, clock, settings
):
    auth.create()
    book_slot(auth, free_slot_ids(client)[0])
    db = connect(settings.database_path)
    try:
        end = utc("2027-01-18T17:50:00")
        clock.now = end + 14 * 24 * 3600 - 1
        purge(db, int(clock()), settings)
        assert db.execute("SELECT count(*) FROM appointments").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM slots").fetchone() == (0,)  # past slots go
        clock.advance(1)
        purge(db, int(clock()), settings)
        assert db.execute("SELECT count(*) FROM appointments").fetchone() == (0,)
    finally:
        db.close()
    privacy = client.get("/en/privacy").get_data(as_text=True)
    assert "Deleted 14 days after the appointment ends" in privacy


def test_a_reset_therapists_free_times_disappear(published, auth, client, settings):
    from stillroom.webapp.therapists import reset_therapist

    auth.create()
    assert len(free_slot_ids(client)) == 2
    db = connect(settings.database_path)
    try:
        reset_therapist(db, "Anna", int(published.clock()))
    finally:
        db.close()
    assert free_slot_ids(client) == []


def test_a_disabled_therapists_free_times_disappear(published, auth, client, settings):
    from stillroom.webapp.therapists import disable_therapist

    auth.create()
    db = connect(settings.database_path)
    try:
        assert disable_therapist(db, "anna", int(published.clock())) == 0
    finally:
        db.close()
    assert free_slot_ids(client) == []
    assert published.client.get("/en/").status_code == 302  # logged out


def test_a_time_that_ends_after_midnight_names_both_days():
    starts = utc("2027-01-18T22:30:00")  # 23:30 in Berlin
    text = format_when(starts, starts + 3600, "Europe/Berlin", "en")
    assert text == "Monday, 18 January 2027, 23:30–Tuesday, 19 January 2027, 00:30"


@pytest.mark.parametrize("lang", ["de", "cs", "pt", "es"])
def test_errors_are_in_the_pages_language(therapist, auth, client, portal_app, app, lang):
    """A therapist's and a participant's error both come in the language of the page."""
    therapist.create()
    with portal_app.test_request_context(f"/{lang}/"), force_locale(lang):
        past = gettext("A time must start in the future.")
        taken = gettext("This time is no longer available. Please choose another one.")
    assert past != "A time must start in the future."
    assert taken != "This time is no longer available. Please choose another one."
    response = therapist.post(
        f"/{lang}/availability",
        {
            "date": "2027-01-01",
            "time": "18:00",
            "duration": "50",
            "weeks": "1",
            "languages": ["de"],
        },
    )
    assert response.status_code == 400 and past in response.get_data(as_text=True)
    participant = AuthActions(app.test_client(), lang=lang)
    participant.create()
    gone = participant.post("/book", {"slot": "0" * 32}, page="/book")
    assert gone.status_code == 409 and taken in gone.get_data(as_text=True)


@pytest.mark.parametrize("value", NASTY)
def test_no_booking_input_produces_a_500(published, auth, client, value):
    """Every participant booking form and parameter, with a valid token."""
    auth.create()
    assert client.get(f"/en/book?week={value}&move={value}").status_code < 500
    for fields in ({"slot": value}, {"slot": value, "move": value}):
        assert auth.post("/book", fields, page="/book").status_code < 500
    assert auth.post("/time-zone", {"zone": value}, page="/book").status_code < 500
    for path in (f"/appointments/{value}/cancel", f"/appointments/{value}/dismiss"):
        assert auth.post(path, {}, page="/book").status_code < 500


@pytest.mark.parametrize("made_at", ["2027-01-15T00:00:00", "2027-01-15T23:59:59"])
def test_the_minimum_age_holds_however_late_in_its_day_an_account_was_made(made_at):
    opens_at = booking_opens_at("2027-01-15", 12)
    age = opens_at - utc(made_at)
    assert 12 * 3600 <= age <= 36 * 3600
    assert booking_opens_at(None, 12) == booking_opens_at("2027-01-15", 0) == 0


def test_a_new_account_books_only_once_the_minimum_age_has_passed(published, settings, clock):
    app = create_participant_app(
        dataclasses.replace(settings, booking_min_account_hours=12), clock=clock
    )
    app.test_client_class = LoopbackClient
    auth = AuthActions(app.test_client())
    passphrase = auth.create()  # on 2027-01-15: may book from 2027-01-16, 12:00 UTC
    account = auth.client.get("/en/account").get_data(as_text=True)
    assert "New accounts can book a time from Saturday, 16 January 2027, 12:00" in account
    assert 'href="/en/book"' not in account
    page = auth.client.get("/en/book")
    assert page.status_code == 200 and "16 January 2027" in page.get_data(as_text=True)
    assert not SLOT.findall(page.get_data(as_text=True))
    [[slot], _] = rows(settings, "SELECT id FROM slots ORDER BY starts_at")
    opens_at = utc("2027-01-16T12:00:00")
    for moment in (clock.now, opens_at - 1):
        clock.now = moment
        auth.client.delete_cookie("stillroom", domain="127.0.0.1")
        assert auth.login(passphrase).status_code == 302
        refused = book_slot(auth, slot)
        assert refused.status_code == 403 and "16 January 2027" in refused.get_data(as_text=True)
        assert rows(settings, "SELECT id FROM appointments") == []
    clock.now = opens_at
    auth.client.delete_cookie("stillroom", domain="127.0.0.1")
    assert auth.login(passphrase).status_code == 302
    assert slot in free_slot_ids(auth.client)
    assert book_slot(auth, slot).status_code == 302
    assert len(rows(settings, "SELECT id FROM appointments")) == 1
