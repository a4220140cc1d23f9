"""The pseudonymous, encrypted export: what leaves, for whom, and that a changed one is refused.

Participants go through the real intake code with the example study; the export and
its opening run as the real ``stillroom`` commands.
"""

from __future__ import annotations

import base64
import csv
import datetime
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import nacl.signing
import pytest

from stillroom.crypto.stream import SealingWriter, new_recipient_keypair, open_stream
from stillroom.webapp.store import connect, transaction
from stillroom.webapp.study import export, intake
from stillroom.webapp.study import log as study_log
from stillroom.webapp.study.definition import load_study

from enrolment import consent, randomise, run_study, start, study_settings
from support import stillroom_env

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "study"
DAY = datetime.date(2027, 3, 1)
ITEMS = [item.id for item in load_study(EXAMPLE).instruments["wellbeing"].items]
#: Each item answered differently, so that a column swapped with another shows.
FIRST = dict(zip(ITEMS, ["never", "rarely", "sometimes", "often"] * 3, strict=False))
SECOND = dict(zip(ITEMS, ["often", "often", "never", "rarely", "sometimes"] * 2, strict=False))
VALUES = {"never": 0, "rarely": 1, "sometimes": 2, "often": 3}
WELLBEING_ITEMS = ITEMS[:8]


def after(days: int) -> datetime.date:
    """Return the day ``days`` after the first participants were randomised."""
    return DAY + datetime.timedelta(days=days)


def write_key(path: Path, key: bytes) -> Path:
    path.write_text(base64.b64encode(key).decode() + "\n")
    return path


class Trial:
    """A started example study with a few participants, and the keys around it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.study = load_study(EXAMPLE)
        self.settings = study_settings(tmp_path / "instance", EXAMPLE)
        self.study_public, self.study_secret = new_recipient_keypair()
        self.recipient_public, self.recipient_secret = new_recipient_keypair()
        start(self.settings, self.study, self.study_public, DAY, 40)
        self.db = connect(self.settings.database_path)
        self.env = stillroom_env(self.settings.data_dir, 0, {"STILLROOM_STUDY": str(EXAMPLE)})

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return run_study(self.env, *args, stdin=stdin)

    def export(self, out: Path, recipient_public: bytes | None = None) -> Path:
        key = write_key(self.tmp / f"{out.name}.pub", recipient_public or self.recipient_public)
        secret = base64.b64encode(self.study_secret).decode() + "\n"
        done = self.run("export", "--to", str(key), str(out), stdin=secret)
        assert done.returncode == 0, done.stderr
        return out

    def signing_key(self) -> str:
        (public,) = self.db.execute("SELECT signing_public_key FROM study").fetchone()
        return base64.b64encode(public).decode()

    def open(
        self, archive: Path, folder: Path, secret: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        key = write_key(self.tmp / f"{folder.name}.secret", secret or self.recipient_secret)
        return self.run(
            "open-export",
            str(archive),
            "--secret-key",
            str(key),
            "--signing-key",
            self.signing_key(),
            str(folder),
        )

    def opened(self, archive: Path, folder: Path, secret: bytes | None = None) -> Path:
        done = self.open(archive, folder, secret)
        assert done.returncode == 0, done.stderr
        return folder

    def append(self, event: str, day: datetime.date, pseudonym: str, detail) -> None:
        """Log a row exactly as the schedule and the course write theirs."""
        with transaction(self.db):
            study_log.append(self.db, event, day, pseudonym, detail)


def table(folder: Path, name: str) -> list[dict[str, str]]:
    with (folder / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def trial(tmp_path):
    made = Trial(tmp_path)
    yield made
    made.db.close()


@pytest.fixture
def people(trial):
    """Five participants: two randomised, one who stopped questionnaires, one who erased,
    one not eligible, one who only consented."""
    study, db = trial.study, trial.db
    first, first_arm = randomise(db, study, DAY, FIRST, transcripts=True)
    second, second_arm = randomise(db, study, after(3), SECOND, "de")
    erased, _ = randomise(db, study, DAY, FIRST)
    not_eligible = consent(db, study, DAY, "cs")
    refused = {"age": "yes", "recent-use": "no", "wants-chat": "yes"}
    assert not intake.submit_screening(db, study, not_eligible.participant_id, refused, DAY)
    only_consent = consent(db, study, after(1), "es")
    # The first attended one session on day 9 and missed the next on day 16; their
    # week-4 window closed unanswered.
    trial.append("session-attended", after(9), first.pseudonym, {"minutes": 50, "session": 1})
    trial.append("session-missed", after(16), first.pseudonym, {"session": 2})
    missed = {"timepoint": "week-4", "reason": "missed"}
    trial.append("assessment-missed", after(36), first.pseudonym, missed)
    # The second stopped questionnaires on day 5 of theirs: week 2 is "withdrawn".
    intake.withdraw(db, second.participant_id, intake.STOP_QUESTIONNAIRES, after(8), 0)
    withdrawn = {"timepoint": "week-2", "reason": "withdrawn"}
    trial.append("assessment-missed", after(3 + 22), second.pseudonym, withdrawn)
    intake.withdraw(db, erased.participant_id, intake.ERASE, after(2), 0)
    return {
        "first": (first, first_arm),
        "second": (second, second_arm),
        "erased": erased,
        "not_eligible": not_eligible,
        "only_consent": only_consent,
    }


def enrolment(people: dict, who: str) -> intake.Enrolment:
    """Return the enrolment of one of the ``people`` (randomised ones come with their arm)."""
    found = people[who]
    return found[0] if isinstance(found, tuple) else found


def their_pseudonym(trial: Trial, pseudonym: str, recipient_public: bytes | None = None) -> str:
    """Return the pseudonym a recipient sees, computed as the study team could."""
    seed = study_log.read_signing_key(trial.settings.data_dir)
    assert seed is not None
    secret = export.derived_secret(seed, "pseudonyms")
    recipient = export.key_id(recipient_public or trial.recipient_public)
    return export.recipient_pseudonym(secret, recipient, pseudonym)


def test_every_file_holds_what_was_entered_under_the_recipients_pseudonyms(trial, people, tmp_path):
    folder = trial.opened(trial.export(tmp_path / "one.sealed"), tmp_path / "one")
    first_arm, second_arm = people["first"][1], people["second"][1]
    name = {
        who: their_pseudonym(trial, enrolment(people, who).pseudonym)
        for who in ("first", "second", "not_eligible", "only_consent")
    }
    seed = study_log.read_signing_key(trial.settings.data_dir)
    codes = export.arm_codes(trial.study, seed)
    assert sorted(codes.values()) == ["A", "B"]

    participants = {row["pseudonym"]: row for row in table(folder, "participants.csv")}
    assert set(participants) == set(name.values())
    one = participants[name["first"]]
    assert (one["stratum"], one["site"], one["eligible"]) == ("en-berlin", "berlin", "yes")
    assert one["arm"] == codes[first_arm]
    two = participants[name["second"]]
    assert (two["stratum"], two["site"], two["arm"]) == ("de-berlin", "berlin", codes[second_arm])
    assert (two["days_to_stop_questionnaires"], two["withdrawal_level"]) == (
        "5",
        "stop-questionnaires",
    )
    assert two["days_to_stop_sessions"] == "" and one["withdrawal_level"] == ""
    ineligible = participants[name["not_eligible"]]
    assert (ineligible["eligible"], ineligible["arm"], ineligible["stratum"]) == (
        "no",
        "",
        "cs-prague",
    )
    assert participants[name["only_consent"]]["eligible"] == ""

    assessments = table(folder, "assessments.csv")
    by = {(row["pseudonym"], row["timepoint"]): row for row in assessments}
    for who, answers in (("first", FIRST), ("second", SECOND)):
        baseline = by[(name[who], "baseline")]
        assert baseline["status"] == "completed" and baseline["days_since_randomisation"] == "0"
        assert {item: baseline[f"wellbeing.{item}"] for item in ITEMS} == answers
        expected = sum(VALUES[answers[item]] for item in WELLBEING_ITEMS)
        assert baseline["wellbeing.score.wellbeing"] == str(expected)
        assert baseline["wellbeing.score.urge"] == str(VALUES[answers["urge"]])
        assert baseline["wellbeing.score.self-harm"] == str(VALUES[answers["self-harm"]])
        screening = by[(name[who], "screening")]
        assert screening["screening.age"] == "yes" and screening["wellbeing.calm"] == ""
    missed = by[(name["first"], "week-4")]
    assert (missed["status"], missed["days_since_randomisation"]) == ("missed", "36")
    assert missed["wellbeing.calm"] == ""
    withdrawn = by[(name["second"], "week-2")]
    assert (withdrawn["status"], withdrawn["days_since_randomisation"]) == ("withdrawn", "22")
    refused = by[(name["not_eligible"], "screening")]
    assert (refused["screening.recent-use"], refused["days_since_randomisation"]) == ("no", "")

    columns = ("session", "days_since_randomisation", "attended", "minutes")
    sessions = [tuple(row[key] for key in columns) for row in table(folder, "sessions.csv")]
    assert sessions == [("1", "9", "yes", "50"), ("2", "16", "no", "")]
    assert {row["pseudonym"] for row in table(folder, "sessions.csv")} == {name["first"]}

    consents = {row["pseudonym"]: row for row in table(folder, "consent.csv")}
    assert set(consents) == set(name.values())
    assert consents[name["first"]]["transcripts"] == "yes"
    assert consents[name["second"]]["transcripts"] == "no"
    assert consents[name["first"]]["version"] == trial.study.consent_current
    assert "receipt" not in consents[name["first"]]

    events = table(folder, "events.csv")
    mine = [row["event"] for row in events if row["pseudonym"] == name["first"]]
    assert mine == [
        "consent",
        "eligibility",
        "assessment-completed",
        "allocation",
        "session-attended",
        "session-missed",
        "assessment-missed",
    ]
    allocations = [json.loads(row["detail"]) for row in events if row["event"] == "allocation"]
    assert sorted(detail["arm"] for detail in allocations) == sorted(
        [codes[first_arm], codes[second_arm]]
    )
    assert all("position" not in detail for detail in allocations)
    assert not any("receipt" in row["detail"] for row in events)
    assert [row["event"] for row in events if row["pseudonym"] == ""] == ["start"]

    codebook = json.loads((folder / "codebook.json").read_text())
    for name_of_file in ("participants.csv", "assessments.csv", "events.csv"):
        header = next(csv.reader(io.StringIO((folder / name_of_file).read_text())))
        assert list(codebook["columns"][name_of_file]) == header
    assert codebook["instruments"]["wellbeing"]["items"]["urge"]["options"]["often"] == 3
    assert set(codebook["arms"]) == {"A", "B"}


def test_the_servers_pseudonyms_and_arm_names_never_leave_before_unblinding(
    trial, people, tmp_path
):
    folder = trial.opened(trial.export(tmp_path / "one.sealed"), tmp_path / "one")
    text = "".join((folder / name).read_text() for name in export.FILES)
    for found in (people["first"][0], people["second"][0], people["not_eligible"]):
        assert found.pseudonym not in text
    assert '"arm":"chat"' not in text and '"arm":"waitlist"' not in text
    participants = table(folder, "participants.csv")
    assert {row["arm"] for row in participants} - {""} <= {"A", "B"}

    unblinded = trial.run("unblind", "--yes")
    assert unblinded.returncode == 0, unblinded.stderr
    assert [entry.event for entry in study_log.entries(trial.db)][-1] == "unblinding"
    again = trial.opened(trial.export(tmp_path / "two.sealed"), tmp_path / "two")
    manifest = json.loads((again / "manifest.json").read_text())
    assert manifest["arms"] == "unblinded"
    real = {people["first"][1], people["second"][1]}
    assert {row["arm"] for row in table(again, "participants.csv")} - {""} == real
    assert trial.run("unblind", "--yes").returncode == 1  # once only


def test_a_second_recipients_pseudonyms_never_match_the_firsts(trial, people, tmp_path):
    other_public, other_secret = new_recipient_keypair()
    one = trial.opened(trial.export(tmp_path / "one.sealed"), tmp_path / "one")
    two = trial.opened(
        trial.export(tmp_path / "two.sealed", other_public), tmp_path / "two", other_secret
    )
    firsts = {row["pseudonym"] for row in table(one, "participants.csv")}
    seconds = {row["pseudonym"] for row in table(two, "participants.csv")}
    assert len(firsts) == len(seconds) == 4
    assert not firsts & seconds
    # The same person, the same answers: only the pseudonym differs.
    assert len(table(one, "assessments.csv")) == len(table(two, "assessments.csv"))
    # The first recipient's key does not open the second's archive.
    refused = trial.open(tmp_path / "two.sealed", tmp_path / "three")
    assert refused.returncode == 1 and "does not open with this key" in refused.stderr
    assert not (tmp_path / "three").exists()


def test_someone_who_erased_is_in_no_file_and_is_counted(trial, people, tmp_path):
    folder = trial.opened(trial.export(tmp_path / "one.sealed"), tmp_path / "one")
    old = people["erased"].pseudonym
    gone = their_pseudonym(trial, old)
    for name in (*export.FILES, export.MANIFEST):
        text = (folder / name).read_text()
        assert gone not in text and old not in text, name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["erased_participants"] == 1
    assert manifest["participants"] == 4
    # Their rows are still in the server's log (it must keep its chain), just not exported.
    withdrawals = study_log.entries(trial.db, "withdrawal")
    assert any(entry.pseudonym == old for entry in withdrawals)
    events = table(folder, "events.csv")
    assert sum(row["event"] == "allocation" for row in events) == 2


def test_a_changed_byte_of_the_archive_is_refused_and_nothing_is_written(trial, people, tmp_path):
    archive = trial.export(tmp_path / "one.sealed")
    sealed = bytearray(archive.read_bytes())
    sealed[len(sealed) // 2] ^= 1
    archive.write_bytes(bytes(sealed))
    refused = trial.open(archive, tmp_path / "out")
    assert refused.returncode == 1
    assert refused.stderr.startswith("Error: ") and len(refused.stderr.strip().splitlines()) == 1
    assert "does not open" in refused.stderr
    assert not (tmp_path / "out").exists()


def reseal(archive: Path, secret: bytes, public: bytes, change) -> Path:
    """Open an archive, let ``change`` edit its files, and seal it again to the same key."""
    plain = io.BytesIO()
    with archive.open("rb") as source:
        open_stream(source, plain, secret)
    plain.seek(0)
    with tarfile.open(fileobj=plain) as tar:
        files = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
    change(files)
    forged = archive.with_suffix(".forged")
    with forged.open("wb") as out:
        writer = SealingWriter(out, public)
        with tarfile.open(fileobj=writer, mode="w|") as tar:
            for name, content in files.items():
                member = tarfile.TarInfo(name)
                member.size = len(content)
                tar.addfile(member, io.BytesIO(content))
        writer.close()
    return forged


def lower_a_score(files: dict[str, bytes]) -> None:
    files["assessments.csv"] = files["assessments.csv"].replace(b",completed,", b",missed,", 1)


def test_an_archive_resealed_with_a_changed_csv_is_refused(trial, people, tmp_path):
    archive = trial.export(tmp_path / "one.sealed")
    forged = reseal(archive, trial.recipient_secret, trial.recipient_public, lower_a_score)
    refused = trial.open(forged, tmp_path / "out")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "assessments.csv was changed" in refused.stderr
    assert not (tmp_path / "out").exists()
    # Nor does a manifest with the new hash, signed by any key but the study's.
    (tmp_path / "empty").mkdir()

    def resign(files: dict[str, bytes]) -> None:
        lower_a_score(files)
        manifest = json.loads(files["manifest.json"])
        manifest["files"]["assessments.csv"] = hashlib.sha256(files["assessments.csv"]).hexdigest()
        key = nacl.signing.SigningKey.generate()
        manifest["signing_key"] = base64.b64encode(bytes(key.verify_key)).decode()
        signature = key.sign(export.manifest_message(manifest)).signature
        manifest["signature"] = base64.b64encode(signature).decode()
        files["manifest.json"] = json.dumps(manifest).encode()

    forged = reseal(archive, trial.recipient_secret, trial.recipient_public, resign)
    refused = trial.open(forged, tmp_path / "empty")
    assert refused.returncode == 1
    assert "not signed by this study signing key" in refused.stderr
    assert not any((tmp_path / "empty").iterdir())
    # The untouched archive opens.
    assert trial.open(archive, tmp_path / "fine").returncode == 0


def test_the_study_secret_key_is_never_written_anywhere(trial, people, tmp_path):
    out_folder = tmp_path / "exports"
    out_folder.mkdir()
    archive = trial.export(out_folder / "one.sealed")
    trial.opened(archive, out_folder / "opened")
    secret = trial.study_secret
    encoded = base64.b64encode(secret)
    for folder in (trial.settings.data_dir, out_folder):
        for path in folder.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                assert secret not in content and encoded not in content, path


def test_a_wrong_study_secret_key_is_refused_and_leaves_no_file(trial, people, tmp_path):
    key = write_key(tmp_path / "to.pub", trial.recipient_public)
    wrong = base64.b64encode(new_recipient_keypair()[1]).decode()
    done = trial.run("export", "--to", str(key), str(tmp_path / "out.sealed"), stdin=wrong)
    assert done.returncode == 1
    assert "not the study team's secret key" in done.stderr
    assert not (tmp_path / "out.sealed").exists()
    assert os.listdir(tmp_path / "instance")  # the data directory is still there


def test_another_recipients_export_sealed_again_to_this_one_is_refused(trial, people, tmp_path):
    # Whoever received an export can seal its files, unchanged and still signed, to
    # anyone's public key: the manifest names the recipient it was made for.
    other_public, other_secret = new_recipient_keypair()
    archive = trial.export(tmp_path / "one.sealed")
    passed_on = reseal(archive, trial.recipient_secret, other_public, lambda files: None)
    refused = trial.open(passed_on, tmp_path / "out", other_secret)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "made for another recipient" in refused.stderr
    assert not (tmp_path / "out").exists()
    # Their own export, made for them, opens.
    theirs = trial.export(tmp_path / "two.sealed", other_public)
    assert trial.open(theirs, tmp_path / "fine", other_secret).returncode == 0
