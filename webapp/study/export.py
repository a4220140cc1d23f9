"""The pseudonymous export of a study's data, sealed to one recipient as it is written.

An export is a tar archive sealed with :class:`stillroom.crypto.stream.SealingWriter`
to the recipient's X25519 public key while it is made: each file is built in memory,
one at a time, and reaches the disk only encrypted. The answers are opened at export
time with the study team's secret key, which the caller passes in and nobody stores.

What leaves, and what never does:

- every participant appears under a pseudonym of their own for this recipient,
  ``HMAC-SHA256(secret, recipient key id || study pseudonym)``, where the secret is
  derived from the study signing key: two recipients' files cannot be joined without
  the study team, and the server's pseudonyms never leave;
- days are counted from the participant's randomisation, never calendar dates;
- arms are coded ``A``, ``B``, ... until ``stillroom study unblind`` is logged (see
  :func:`arm_codes`);
- no free text, no consent receipt code (the participant holds it, so it would name
  them to whoever they showed it), no position in an allocation list (with the revealed
  lists it would unblind the arm);
- someone who withdrew with "erase" is left out of every file, their old pseudonym's
  log rows too; the manifest counts them.

``manifest.json`` comes last: every file's SHA-256, the definition's, the log's head,
the day, and an Ed25519 signature by the study signing key over the rest of it.
:func:`open_export` checks all of it, in memory, before it writes a single file.
"""

from __future__ import annotations

import base64
import csv
import datetime
import hashlib
import hmac
import io
import json
import os
import string
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.public
import nacl.signing
from sqlite_utils import Database

from stillroom.crypto.box import UnsealError, open_sealed
from stillroom.crypto.keys import UnwrapError
from stillroom.crypto.stream import SealingWriter, StreamOpenError, open_file_in_memory
from stillroom.webapp.keyslots import SlotGoneError, unlock
from stillroom.webapp.store import transaction
from stillroom.webapp.study import log
from stillroom.webapp.study.definition import CONSENT_ITEMS, Study
from stillroom.webapp.study.intake import ERASE, SCREENING, STOP_QUESTIONNAIRES, STOP_SESSIONS
from stillroom.webapp.study.questionnaires import score

#: The data files of an export, in the order they are written; the manifest follows.
FILES = (
    "participants.csv",
    "assessments.csv",
    "sessions.csv",
    "consent.csv",
    "events.csv",
    "codebook.json",
)
MANIFEST = "manifest.json"
#: The manifest's ``format``: what :func:`open_export` knows how to read.
FORMAT = "stillroom-study-export-1"
#: Hex characters of a recipient's pseudonym: 80 bits, as the study's own pseudonyms.
PSEUDONYM_HEX = 20
#: Detail keys that never leave (see the module's docstring).
WITHHELD_DETAIL = ("receipt", "position")


class ExportError(Exception):
    """An export cannot be written: the message says what to do."""


class OpenExportError(Exception):
    """An export does not open, or was changed: nothing was written."""


# --- Pseudonyms and arm codes ------------------------------------------------------------


def key_id(public_key: bytes) -> str:
    """Return a recipient's key id: the SHA-256 of their public key, as hex."""
    return hashlib.sha256(public_key).hexdigest()


def derived_secret(signing_seed: bytes, purpose: str) -> bytes:
    """Return a secret for one ``purpose``, derived from the study signing key.

    The signing key stays on the server and lives as long as the study, so what is
    derived from it stays the same for every export, and nobody without it can compute it.
    """
    return hmac.new(signing_seed, f"stillroom-export:{purpose}".encode(), "sha256").digest()


def recipient_pseudonym(secret: bytes, recipient: str, pseudonym: str) -> str:
    """Return the pseudonym ``recipient`` (a key id) sees for the study's ``pseudonym``.

    The key id has a fixed length, so the concatenation is unambiguous.
    """
    message = bytes.fromhex(recipient) + pseudonym.encode()
    return hmac.new(secret, message, "sha256").hexdigest()[:PSEUDONYM_HEX]


def arm_codes(study: Study, signing_seed: bytes) -> dict[str, str]:
    """Return ``{arm id: code}``: ``A``, ``B``, ... in an order drawn from the signing key.

    The order is that of each arm's HMAC under a secret derived from the signing key:
    random for anyone who lacks the key, not the order of study.toml, and the same in
    every export of the study, so that analyses of two exports agree, until unblinding.
    """
    secret = derived_secret(signing_seed, "arm-codes")
    drawn = sorted(study.arms, key=lambda arm: hmac.new(secret, arm.id.encode(), "sha256").digest())
    return {arm.id: string.ascii_uppercase[number] for number, arm in enumerate(drawn)}


def unblinded(db: Database) -> bool:
    """Return whether ``stillroom study unblind`` was logged: exports carry the real arms."""
    row = db.execute("SELECT 1 FROM study_log WHERE event = 'unblinding'").fetchone()
    return row is not None


def unblind(db: Database, day: datetime.date) -> None:
    """Log the unblinding: from now on, exports carry the real arm ids.

    :raises ExportError: when it was logged already (it cannot be undone).
    """
    with transaction(db):
        if unblinded(db):
            raise ExportError("the study was unblinded already")
        log.append(db, "unblinding", day, None, {})


# --- Reading the study's data --------------------------------------------------------------


@dataclass
class Person:
    """What the export knows of one participant (under the study's pseudonym)."""

    pseudonym: str
    first_day: datetime.date
    stratum: str = ""
    arm: str = ""
    randomised: datetime.date | None = None
    eligible: bool | None = None
    crossover: datetime.date | None = None
    stopped: dict[str, datetime.date] = field(default_factory=dict)
    last_withdrawal: str = ""
    account_kept: bool = False

    def days(self, day: str | datetime.date) -> int | str:
        """Return the days from randomisation to ``day``, or "" when never randomised."""
        if self.randomised is None:
            return ""
        when = datetime.date.fromisoformat(day) if isinstance(day, str) else day
        return (when - self.randomised).days


@dataclass
class Data:
    """Everything an export is made of, read once."""

    entries: list[log.Entry]
    people: dict[str, Person]
    erased: set[str]
    started: datetime.date


def read_data(db: Database, study: Study) -> Data:
    """Read the log and the participants, leaving out everyone who withdrew with erase."""
    entries = log.entries(db)
    erased = {
        str(entry.pseudonym)
        for entry in entries
        if entry.event == "withdrawal" and entry.detail.get("level") == ERASE
    }
    strata = {stratum for stratum in study.strata()}
    kept = dict(db.execute("SELECT pseudonym, stratum FROM study_participants WHERE erased = 0"))
    people: dict[str, Person] = {}
    started = datetime.date.fromisoformat(entries[0].day) if entries else datetime.date.today()
    for entry in entries:
        if entry.pseudonym is None or entry.pseudonym in erased:
            continue
        day = datetime.date.fromisoformat(entry.day)
        person = people.get(entry.pseudonym)
        if person is None:
            stratum = kept.get(entry.pseudonym, "")
            person = people[entry.pseudonym] = Person(
                entry.pseudonym,
                day,
                stratum=stratum if stratum in strata else "",
                account_kept=entry.pseudonym in kept,
            )
        if entry.event == "eligibility":
            person.eligible = bool(entry.detail.get("eligible"))
        elif entry.event == "allocation":
            person.stratum = str(entry.detail.get("stratum"))
            person.arm = str(entry.detail.get("arm"))
            person.randomised = day
        elif entry.event == "crossover":
            person.crossover = day
        elif entry.event == "withdrawal":
            level = str(entry.detail.get("level"))
            person.stopped.setdefault(level, day)
            person.last_withdrawal = level
    return Data(entries, people, erased, started)


def open_answers(
    db: Database, pseudonym: str, slot: int, sealed: bytes, secret_key: bytes
) -> dict[str, str]:
    """Return the answers of one form: unlocked with the research slot, opened with the key."""
    try:
        plain = open_sealed(unlock(db, slot, sealed), secret_key)
    except (SlotGoneError, UnwrapError, UnsealError) as error:
        raise ExportError(f"the answers of {pseudonym} do not open: {error}") from error
    answers: dict[str, str] = json.loads(plain)
    return answers


# --- The files -------------------------------------------------------------------------------


def csv_bytes(header: list[str], rows: Iterable[Sequence[object]]) -> bytes:
    """Return a CSV file (RFC 4180 line ends) with ``header`` and ``rows``."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def yes_no(value: bool | None) -> str:
    """Return "yes", "no", or "" for unknown."""
    return "" if value is None else ("yes" if value else "no")


def days_or_empty(person: Person, day: datetime.date | None) -> int | str:
    """Return the days from randomisation to ``day``, or "" when either is missing."""
    return "" if day is None else person.days(day)


PARTICIPANT_COLUMNS = {
    "pseudonym": (
        "This recipient's pseudonym of the participant (differs in every recipient's files)."
    ),
    "stratum": "The stratum: <language>-<site>.",
    "site": "The site of the stratum.",
    "eligible": "The screening's outcome: yes, no, or empty when screening was not finished.",
    "arm": (
        "The arm allocated: a code (A, B, ...) until the study is unblinded, then the arm's id; "
        "empty when never randomised."
    ),
    "days_to_crossover": (
        "Days from randomisation to the end of the waitlist (crossover); empty when none."
    ),
    "days_to_stop_sessions": (
        "Days from randomisation to the withdrawal from sessions; empty when none."
    ),
    "days_to_stop_questionnaires": (
        "Days from randomisation to the withdrawal from questionnaires; empty when none."
    ),
    "withdrawal_level": (
        "The last withdrawal chosen: stop-sessions or stop-questionnaires; empty when none."
    ),
    "account_deleted": (
        "yes when the participant deleted their account (their answers went with it)."
    ),
}


def participants_file(data: Data, study: Study, name: dict[str, str], arm: dict[str, str]) -> bytes:
    """Return participants.csv: one row per participant."""
    sites = {study.stratum_of(language): study.sites[language] for language in study.languages}
    rows = []
    for person in data.people.values():
        rows.append(
            [
                name[person.pseudonym],
                person.stratum,
                sites.get(person.stratum, ""),
                yes_no(person.eligible),
                arm.get(person.arm, ""),
                days_or_empty(person, person.crossover),
                days_or_empty(person, person.stopped.get(STOP_SESSIONS)),
                days_or_empty(person, person.stopped.get(STOP_QUESTIONNAIRES)),
                person.last_withdrawal,
                yes_no(not person.account_kept),
            ]
        )
    return csv_bytes(list(PARTICIPANT_COLUMNS), sorted(rows, key=lambda row: str(row[0])))


ASSESSMENT_COLUMNS = {
    "pseudonym": "This recipient's pseudonym of the participant.",
    "timepoint": "The timepoint: screening (before randomisation), or an id of the schedule.",
    "instrument": "The instrument of the timepoint.",
    "days_since_randomisation": (
        "Days from randomisation to the day the form was sent (completed), or to the first day "
        "its window was closed (missed, withdrawn); empty when never randomised."
    ),
    "status": (
        "completed; missed (the window closed without an answer); withdrawn (closed after the "
        "participant stopped questionnaires)."
    ),
}


def answer_columns(study: Study) -> list[tuple[str, str, str]]:
    """Return ``(column, instrument, item or score)`` for every item and score, in order."""
    columns = []
    for instrument in study.instruments.values():
        columns += [
            (f"{instrument.id}.{item.id}", instrument.id, item.id) for item in instrument.items
        ]
        columns += [
            (f"{instrument.id}.score.{name}", instrument.id, name) for name in instrument.scores
        ]
    return columns


def assessment_rows(
    db: Database, study: Study, data: Data, name: dict[str, str], secret_key: bytes
) -> Iterator[list[object]]:
    """Yield a row per form sent (answers opened and scored) and per window missed."""
    columns = answer_columns(study)
    timepoints = {point.id: point.instrument for point in study.schedule}
    timepoints[SCREENING] = study.eligibility_instrument
    for pseudonym, instrument_id, timepoint, day, sealed, slot in db.execute(
        "SELECT study_answers.pseudonym, instrument, timepoint, day, sealed, slot"
        " FROM study_answers JOIN study_participants USING (pseudonym)"
        " WHERE erased = 0 ORDER BY study_answers.id"
    ):
        person = data.people.get(pseudonym)
        if person is None:  # only someone erased has answers but no rows in the log
            continue
        instrument = study.instruments[instrument_id]
        answers = open_answers(db, pseudonym, slot, bytes(sealed), secret_key)
        scores = score(instrument, answers)
        # An item and a score may share a name: the score's column is the ".score." one.
        values = [
            (scores.get(key, "") if ".score." in column else answers.get(key, ""))
            if owner == instrument_id
            else ""
            for column, owner, key in columns
        ]
        yield [name[pseudonym], timepoint, instrument_id, person.days(day), "completed", *values]
    for entry in data.entries:
        if entry.event != "assessment-missed" or entry.pseudonym not in data.people:
            continue
        person = data.people[entry.pseudonym]
        timepoint = str(entry.detail.get("timepoint"))
        reason = "withdrawn" if entry.detail.get("reason") == "withdrawn" else "missed"
        blank = [""] * len(columns)
        yield [
            name[person.pseudonym],
            timepoint,
            timepoints.get(timepoint, ""),
            person.days(entry.day),
            reason,
            *blank,
        ]


def assessments_file(
    db: Database, study: Study, data: Data, name: dict[str, str], secret_key: bytes
) -> bytes:
    """Return assessments.csv, ordered by pseudonym, then timepoint as scheduled."""
    order = {SCREENING: -1} | {point.id: index for index, point in enumerate(study.schedule)}
    rows = sorted(
        assessment_rows(db, study, data, name, secret_key),
        key=lambda row: (str(row[0]), order.get(str(row[1]), len(order))),
    )
    header = list(ASSESSMENT_COLUMNS) + [column for column, _, _ in answer_columns(study)]
    return csv_bytes(header, rows)


SESSION_COLUMNS = {
    "pseudonym": "This recipient's pseudonym of the participant.",
    "session": "The session's number in the course (a missed one: the number it would have had).",
    "days_since_randomisation": "Days from randomisation to the appointment's day.",
    "attended": (
        "yes when both sides wrote in the chat; no for an appointment that was not cancelled but "
        "where they did not."
    ),
    "minutes": (
        "Minutes of the chat window (booked time and extensions) of an attended session; never "
        "content or clock times."
    ),
}


def sessions_file(data: Data, name: dict[str, str]) -> bytes:
    """Return sessions.csv from the log's session-attended and session-missed rows."""
    rows = []
    for entry in data.entries:
        person = data.people.get(str(entry.pseudonym))
        if person is None or entry.event not in ("session-attended", "session-missed"):
            continue
        attended = entry.event == "session-attended"
        minutes = entry.detail.get("minutes", "") if attended else ""
        session = entry.detail.get("session", "")
        rows.append(
            [name[person.pseudonym], session, person.days(entry.day), yes_no(attended), minutes]
        )
    rows.sort(key=lambda row: (str(row[0]), int(row[1] or 0)))
    return csv_bytes(list(SESSION_COLUMNS), rows)


CONSENT_COLUMNS = {
    "pseudonym": "This recipient's pseudonym of the participant.",
    "version": "The consent version agreed to.",
    "text_sha256": (
        "The SHA-256 of the consent text shown (its file, in the participant's language)."
    ),
    "days_since_randomisation": (
        "Days from randomisation to the consent (negative before it); empty when never randomised."
    ),
    **{item: f"The consent item '{item}': yes when ticked." for item in CONSENT_ITEMS},
}


def consent_file(data: Data, name: dict[str, str]) -> bytes:
    """Return consent.csv: every consent given, from the log (only the choices made)."""
    rows = []
    for entry in data.entries:
        person = data.people.get(str(entry.pseudonym))
        if person is None or entry.event != "consent":
            continue
        rows.append(
            [
                name[person.pseudonym],
                entry.detail.get("version", ""),
                entry.detail.get("text", ""),
                person.days(entry.day),
                *(yes_no(bool(entry.detail.get(item))) for item in CONSENT_ITEMS),
            ]
        )
    return csv_bytes(list(CONSENT_COLUMNS), sorted(rows, key=lambda row: str(row[0])))


EVENT_COLUMNS = {
    "pseudonym": (
        "This recipient's pseudonym of the participant; empty for a row about the whole study."
    ),
    "order": (
        "The row's place among the participant's rows (or among the study's own rows), from 1."
    ),
    "event": "The study log's event.",
    "days_since_randomisation": (
        "Days from the participant's randomisation to the row's day; empty when never randomised,"
        " or for the study's own rows."
    ),
    "days_since_first_event": (
        "Days from the participant's first row (their first consent) to the row's day; for "
        "everyone, randomised or not."
    ),
    "days_since_study_start": (
        "For the study's own rows only (start, amendment, unblinding): days from the study's start."
    ),
    "detail": (
        "The row's coded details as JSON (arms coded as in participants.csv; no receipt code, no "
        "list position)."
    ),
}


def events_file(data: Data, name: dict[str, str], arm: dict[str, str]) -> bytes:
    """Return events.csv: the study log without erased participants, with relative days."""
    rows = []
    order: dict[str, int] = {}
    for entry in data.entries:
        detail = {key: value for key, value in entry.detail.items() if key not in WITHHELD_DETAIL}
        if "arm" in detail:
            detail["arm"] = arm.get(str(detail["arm"]), "")
        day = datetime.date.fromisoformat(entry.day)
        if entry.pseudonym is None:
            order[""] = order.get("", 0) + 1
            since_start = (day - data.started).days
            rows.append(["", order[""], entry.event, "", "", since_start, _json(detail)])
            continue
        person = data.people.get(entry.pseudonym)
        if person is None:
            continue
        pseudonym = name[person.pseudonym]
        order[pseudonym] = order.get(pseudonym, 0) + 1
        rows.append(
            [
                pseudonym,
                order[pseudonym],
                entry.event,
                person.days(day),
                (day - person.first_day).days,
                "",
                _json(detail),
            ]
        )
    return csv_bytes(list(EVENT_COLUMNS), sorted(rows, key=lambda row: (str(row[0]), row[1])))


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def codebook(study: Study, arm: dict[str, str], blinded: bool) -> bytes:
    """Return codebook.json: every column of every file, the arms, the instruments."""
    instruments = {}
    for instrument in study.instruments.values():
        words = instrument.texts.get("en") or next(iter(instrument.texts.values()))
        instruments[instrument.id] = {
            "title": words.title,
            "items": {
                item.id: {
                    "column": f"{instrument.id}.{item.id}",
                    "text_en": words.items.get(item.id, ""),
                    "options": dict(
                        zip(
                            instrument.option_sets[item.options].options,
                            instrument.option_sets[item.options].values,
                            strict=True,
                        )
                    ),
                }
                for item in instrument.items
            },
            "scores": {
                name: {
                    "column": f"{instrument.id}.score.{name}",
                    "meaning": "The sum of the option values of these items.",
                    "items": list(items),
                }
                for name, items in instrument.scores.items()
            },
        }
    if blinded:
        arms = {
            code: "A coded arm; which arm it is stays hidden until unblinding."
            for code in sorted(arm.values())
        }
    else:
        arms = {
            item.id: f"gets {item.gets}"
            + (f", after {item.waitlist_weeks} weeks of waiting" if item.waitlist_weeks else "")
            for item in study.arms
        }
    columns = {
        "participants.csv": PARTICIPANT_COLUMNS,
        "assessments.csv": ASSESSMENT_COLUMNS
        | {
            f"{instrument.id}.{item.id}": f"The option chosen for {item.id} (see instruments)."
            for instrument in study.instruments.values()
            for item in instrument.items
        }
        | {
            f"{instrument.id}.score.{name}": f"The score {name} (see instruments)."
            for instrument in study.instruments.values()
            for name in instrument.scores
        },
        "sessions.csv": SESSION_COLUMNS,
        "consent.csv": CONSENT_COLUMNS,
        "events.csv": EVENT_COLUMNS,
    }
    content = {
        "study": study.id,
        "arms": arms,
        "timepoints": {
            point.id: {"instrument": point.instrument, "week": point.week}
            for point in study.schedule
        },
        "columns": columns,
        "instruments": instruments,
        "days": "Days are whole UTC days; day 0 is the day of randomisation.",
    }
    return json.dumps(content, indent=2, ensure_ascii=False).encode()


# --- Writing and opening -------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    """What :func:`write_export` wrote: its size, whom for, how many in and left out."""

    size: int
    recipient: str
    participants: int
    erased: int
    signing_key: str


def manifest_message(manifest: dict[str, object]) -> bytes:
    """Return the bytes the signature covers: the manifest without it, as canonical JSON."""
    unsigned = {key: value for key, value in manifest.items() if key != "signature"}
    return _json(unsigned).encode()


def write_export(
    db: Database,
    study: Study,
    data_dir: Path,
    destination: Path,
    recipient_public_key: bytes,
    study_secret_key: bytes,
    day: datetime.date,
) -> Written:
    """Write the export for one recipient to ``destination``, sealed as it is written.

    :raises ExportError: when ``destination`` exists, the secret key is not the study
        team's, there is no signing key, or the study log does not verify.
    """
    row = db.execute("SELECT id, definition_sha256, study_public_key FROM study").fetchone()
    if row is None:
        raise ExportError("no study has been started here ('stillroom study start')")
    study_id, definition_sha256, public_key = row
    try:
        derived = bytes(nacl.public.PrivateKey(study_secret_key).public_key)
    except (nacl.exceptions.CryptoError, TypeError, ValueError):
        derived = b""
    if derived != bytes(public_key):
        raise ExportError("this is not the study team's secret key (its public half differs)")
    signing_seed = log.read_signing_key(data_dir)
    if signing_seed is None:
        raise ExportError(f"no study signing key in {data_dir} ({log.SIGNING_KEY_FILE})")
    try:
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ExportError(f"{destination} exists; choose a new name") from None
    recipient = key_id(recipient_public_key)
    signing = nacl.signing.SigningKey(signing_seed)
    try:
        with reading(db):  # one snapshot: the files agree with each other and the head
            try:
                head = log.verify(db)
            except log.StudyLogError as error:
                raise ExportError(f"the study log does not verify: {error}") from error
            data = read_data(db, study)
            secret = derived_secret(signing_seed, "pseudonyms")
            name = {
                pseudonym: recipient_pseudonym(secret, recipient, pseudonym)
                for pseudonym in data.people
            }
            blinded = not unblinded(db)
            codes = arm_codes(study, signing_seed)
            arm = codes if blinded else {arm_id: arm_id for arm_id in codes}
            builders = {
                "participants.csv": lambda: participants_file(data, study, name, arm),
                "assessments.csv": lambda: assessments_file(
                    db, study, data, name, study_secret_key
                ),
                "sessions.csv": lambda: sessions_file(data, name),
                "consent.csv": lambda: consent_file(data, name),
                "events.csv": lambda: events_file(data, name, arm),
                "codebook.json": lambda: codebook(study, arm, blinded),
            }
            with os.fdopen(fd, "wb") as out:
                sealed = SealingWriter(out, recipient_public_key)
                hashes = {}
                with tarfile.open(fileobj=sealed, mode="w|") as tar:  # type: ignore[call-overload]
                    for file_name in FILES:
                        content = builders[file_name]()  # one file in memory at a time
                        hashes[file_name] = hashlib.sha256(content).hexdigest()
                        _add_bytes(tar, file_name, content)
                        del content
                    manifest: dict[str, object] = {
                        "format": FORMAT,
                        "study": study_id,
                        "definition_sha256": definition_sha256,
                        "log_head": str(head),
                        "export_day": day.isoformat(),
                        "recipient": recipient,
                        "arms": "coded" if blinded else "unblinded",
                        "participants": len(data.people),
                        "erased_participants": len(data.erased),
                        "files": hashes,
                        "signing_key": base64.b64encode(bytes(signing.verify_key)).decode(),
                    }
                    signature = signing.sign(manifest_message(manifest)).signature
                    manifest["signature"] = base64.b64encode(bytes(signature)).decode()
                    _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
                sealed.close()
    except BaseException:
        destination.unlink()  # no half-written export to mistake for a whole one
        raise
    return Written(
        destination.stat().st_size,
        recipient,
        len(data.people),
        len(data.erased),
        base64.b64encode(bytes(signing.verify_key)).decode(),
    )


@contextmanager
def reading(db: Database) -> Iterator[None]:
    """Read in one transaction, so that every read sees the database at one moment."""
    db.conn.execute("BEGIN")
    try:
        yield
    finally:
        db.conn.execute("COMMIT")


def _add_bytes(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(content)
    member.mode = 0o600
    tar.addfile(member, io.BytesIO(content))


def open_export(
    archive: Path, secret_key: bytes, signing_key: bytes, folder: Path
) -> dict[str, object]:
    """Open, check and unpack an export into ``folder``; return its manifest.

    Everything is checked in memory first: the archive opens with ``secret_key``, holds
    exactly the expected files, the manifest is signed by ``signing_key`` (the study's,
    as ``stillroom study verify`` prints it), names the holder of ``secret_key`` as its
    recipient, and every file has the hash it names. Only then is ``folder`` made and
    written.

    :raises OpenExportError: naming the first thing wrong; ``folder`` is left untouched.
    """
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OpenExportError(f"{folder} is not an empty folder")
    try:
        plain = open_file_in_memory(archive, secret_key)
    except OSError as error:
        raise OpenExportError(f"cannot read {archive}: {error.strerror}") from error
    except StreamOpenError as error:
        raise OpenExportError(f"{archive} does not open with this key: {error}") from error
    contents = {}
    try:
        with tarfile.open(fileobj=plain) as tar:
            for member in tar.getmembers():
                if not member.isfile() or member.name not in (*FILES, MANIFEST):
                    raise OpenExportError(f"{archive} holds something other than an export")
                extracted = tar.extractfile(member)
                assert extracted is not None  # a regular file, checked above
                contents[member.name] = extracted.read()
    except tarfile.TarError as error:
        raise OpenExportError(f"{archive} holds something other than an export") from error
    manifest = check_manifest(contents, signing_key)
    # Signed files can be sealed again, unchanged, to anyone's public key: only the
    # signed recipient tells that this export was made for the holder of this key.
    if manifest.get("recipient") != key_id(bytes(nacl.public.PrivateKey(secret_key).public_key)):
        raise OpenExportError("the export was made for another recipient, not for this key")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for file_name in (*FILES, MANIFEST):
        target = os.open(folder / file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(target, "wb") as out:
            out.write(contents[file_name])
    return manifest


def check_manifest(contents: dict[str, bytes], signing_key: bytes) -> dict[str, object]:
    """Check the manifest's signature and every file's hash; return the manifest.

    :raises OpenExportError: for a missing, unsigned or foreign manifest, or a file
        that is missing, extra or changed.
    """
    try:
        manifest = json.loads(contents[MANIFEST])
        signature = base64.b64decode(manifest["signature"], validate=True)
        nacl.signing.VerifyKey(signing_key).verify(manifest_message(manifest), signature)
    except KeyError as error:
        raise OpenExportError("the export has no readable, signed manifest") from error
    except (ValueError, TypeError, nacl.exceptions.CryptoError) as error:
        raise OpenExportError(
            "the manifest is not signed by this study signing key (changed, or another key)"
        ) from error
    if manifest.get("format") != FORMAT:
        raise OpenExportError(f"the export's format is not {FORMAT}")
    hashes = manifest.get("files")
    if (
        not isinstance(hashes, dict)
        or set(hashes) != set(FILES)
        or set(contents) != {*FILES, MANIFEST}
    ):
        raise OpenExportError("the export's files are not the ones its manifest lists")
    for file_name in FILES:
        if hashlib.sha256(contents[file_name]).hexdigest() != hashes[file_name]:
            raise OpenExportError(f"{file_name} was changed (its SHA-256 is not the manifest's)")
    result: dict[str, object] = manifest
    return result
