"""The ``stillroom study`` commands: check, start, verify, amend, reveal, simulate, consort,
export, open-export and unblind.

They call the same functions as the pages (:mod:`stillroom.webapp.study`); the shared
command-line helpers come from :mod:`stillroom.webapp.console`.
"""

from __future__ import annotations

import base64
import datetime
import json
import sys
from pathlib import Path

import click
from sqlite_utils import Database

from stillroom.webapp.backup import BackupError, decode_key
from stillroom.webapp.console import SETTINGS_EPILOG, fail, load_settings, open_database
from stillroom.webapp.instance import running_serve
from stillroom.webapp.study import allocation, amendment, consort, diagram, export, intake
from stillroom.webapp.study import log as study_log
from stillroom.webapp.study.definition import Study, read_study


@click.group()
def study() -> None:
    """Run a research study: check and start it, verify its log, count its CONSORT flow,
    reveal its allocation lists, export its data."""


@study.command(name="check")
@click.argument(
    "folder", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="DIR"
)
def study_check(folder: Path) -> None:
    """Check the study folder DIR: print each problem as file:line: key: message and exit 1,
    or print a one-line summary of the study.

    Needs no data directory: the study team can run it anywhere.
    """
    problems, found = read_study(folder)
    if found is None:
        for problem in problems:
            click.echo(str(problem))
        sys.exit(1)
    click.echo(found.summary())


def today() -> datetime.date:
    """Return today's UTC day: study days are UTC days."""
    return datetime.datetime.now(datetime.UTC).date()


def read_definition(folder: Path) -> Study:
    """Load the study folder, or end with each of its problems on a line of its own."""
    problems, found = read_study(folder)
    if found is None:
        for problem in problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    return found


STUDY_OPTION = click.option(
    "--study",
    "folder",
    envvar="STILLROOM_STUDY",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The study folder (default: STILLROOM_STUDY).",
)


def read_key_file(path: Path, option: str) -> bytes:
    """Return the base64 X25519 key in the file ``path`` (as ``backup-key`` writes them)."""
    try:
        return decode_key(path.read_text(), f"{option} {path}")
    except (BackupError, OSError, UnicodeDecodeError) as error:
        fail(RuntimeError(f"{option} {path}: {error}"))


KEY_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@study.command(name="start", epilog=SETTINGS_EPILOG)
@STUDY_OPTION
@click.option("--study-key", type=KEY_FILE, required=True, help="The study team's public key.")
@click.option(
    "--statistician-key", type=KEY_FILE, required=True, help="The statistician's public key."
)
def study_start(folder: Path, study_key: Path, statistician_key: Path) -> None:
    """Freeze the study and make its sealed allocation lists; print their commitments.

    Publish the commitments (trial registry, statistician) and note the log's head.
    """
    values = read_definition(folder)
    keys = (
        read_key_file(study_key, "--study-key"),
        read_key_file(statistician_key, "--statistician-key"),
    )
    settings = load_settings()
    with open_database(settings) as database:
        try:
            commitments = amendment.start(database, settings.data_dir, values, today(), keys)
        except (allocation.AllocationError, ValueError) as error:
            fail(error)
        head = study_log.verify(database)
    click.echo(f"Study {values.id} started; definition SHA-256 {values.sha256}.")
    click.echo("Allocation list commitments, SHA-256(salt || list), to publish:")
    for stratum, commitment in commitments.items():
        click.echo(f"  {stratum} {commitment}")
    click.echo(f"Study log head: {head}")


def study_id(database: Database) -> tuple[str, bytes]:
    """Return the started study's id and signing public key, or end: there is none."""
    row = database.execute("SELECT id, signing_public_key FROM study").fetchone()
    if row is None:
        fail(RuntimeError("no study has been started here ('stillroom study start')"))
    return str(row[0]), bytes(row[1])


@study.command(name="verify", epilog=SETTINGS_EPILOG)
@click.option(
    "--head",
    "known",
    metavar="SEQ:HASH",
    help="A head noted down before: the log must still pass through it.",
)
def study_verify(known: str | None) -> None:
    """Recompute the study log's hash chain and print its signed head, for the sites."""
    try:
        noted = study_log.Head.parse(known) if known else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--head") from error
    settings = load_settings()
    with open_database(settings) as database:
        name, public = study_id(database)
        try:
            head = study_log.verify(database, noted)
        except study_log.StudyLogError as error:
            fail(error)
        places = intake.places_left(database)
    signing = study_log.read_signing_key(settings.data_dir)
    click.echo(f"The study log of {name} is intact.")
    click.echo(f"Head: {head}")
    if signing is not None:
        signature = study_log.sign_head(name, head, signing)
        click.echo(f"Signature: {base64.b64encode(signature).decode()}")
        click.echo(f"Signing key: {base64.b64encode(public).decode()}")
    # A warning, not a failure: the log is intact, but intake in this stratum will soon
    # end in "closed for now" (no list can be extended without breaking its commitment).
    for stratum, (left, length) in places.items():
        if left < length * intake.FEW_PLACES_LEFT:
            click.echo(
                f"Warning: the allocation list of {stratum} has {left} of {length} entries left;"
                " when none is left, intake in that stratum closes for now."
            )


@study.command(name="reveal", epilog=SETTINGS_EPILOG)
@click.option(
    "--secret-key",
    "secret_file",
    type=KEY_FILE,
    required=True,
    help="The statistician's secret key (after data lock).",
)
def study_reveal(secret_file: Path) -> None:
    """Open the allocation lists, check them and every allocation; print them as JSON.

    Anyone can then recompute each commitment from the salt and the list.
    """
    secret = read_key_file(secret_file, "--secret-key")
    settings = load_settings()
    with open_database(settings) as database:
        study_id(database)
        try:
            revealed = allocation.reveal(allocation.sealed_lists(database), secret)
            checked = allocation.verify_reveal(database, revealed)
        except (allocation.RevealError, study_log.StudyLogError) as error:
            fail(error)
    lists = {
        stratum: {"salt": made.salt.hex(), "blocks": made.blocks, "commitment": made.commitment()}
        for stratum, made in revealed.items()
    }
    click.echo(json.dumps({"strata": lists}))
    click.echo(
        f"Every list matches its commitment; {checked} allocations match their lists.", err=True
    )


@study.command(name="simulate")
@STUDY_OPTION
@click.option("--participants", type=click.IntRange(min=0), required=True)
@click.option("--seed", type=int, required=True, help="Makes the run repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def study_simulate(folder: Path, participants: int, seed: int, as_json: bool) -> None:
    """Allocate N simulated participants with the real code in a throwaway directory.

    Prints the counts per arm in each stratum; nothing of this data directory is used.
    """
    values = read_definition(folder)
    try:
        found = allocation.simulate(
            values.strata(),
            [(arm.id, arm.ratio) for arm in values.arms],
            list(values.block_sizes),
            values.participants_per_stratum,
            participants,
            seed,
        )
    except (allocation.AllocationError, ValueError) as error:
        fail(error)
    if as_json:
        click.echo(json.dumps(found.as_dict()))
        return
    for stratum, counts in found.counts().items():
        click.echo(f"{stratum}: " + ", ".join(f"{arm} {count}" for arm, count in counts.items()))


@study.command(name="amend", epilog=SETTINGS_EPILOG)
@STUDY_OPTION
def study_amend(folder: Path) -> None:
    """Take the changed study folder as the study's rules from now on, and log the change.

    A new consent version is logged too; a major one asks participants again at their
    next login. The strata, arms, ratios and block sizes cannot change. ``serve`` must be
    stopped meanwhile: it reads the rules once, when it starts.
    """
    values = read_definition(folder)
    settings = load_settings()
    serving = running_serve(settings.data_dir)
    if serving is not None:  # it keeps the rules it started with until it starts again
        fail(
            RuntimeError(
                f"'stillroom serve' (PID {serving[0]}) runs on this data directory: stop it,"
                " amend, then start it again, so that it serves the amended rules"
            )
        )
    with open_database(settings) as database:
        try:
            logged = amendment.amend(database, values, today())
        except amendment.AmendmentError as error:
            fail(error)
        head = study_log.verify(database)
    for line in logged:
        click.echo(f"Logged {line}")
    click.echo(f"Study log head: {head}")


def read_secret_key() -> bytes:
    """Return the study team's secret key: asked for, hidden, or read from standard input.

    On a terminal it is typed (or pasted) without being shown; otherwise the first line
    of standard input is read, so that it can be piped from where it is kept offline.
    It is only ever held in memory.
    """
    if sys.stdin.isatty():
        text = click.prompt("The study team's secret key (base64; not shown)", hide_input=True)
    else:
        text = sys.stdin.readline()
    try:
        return decode_key(text, "the study team's secret key")
    except BackupError as error:
        fail(error)


@study.command(name="export", epilog=SETTINGS_EPILOG)
@STUDY_OPTION
@click.option(
    "--to",
    "recipient_file",
    type=KEY_FILE,
    required=True,
    metavar="RECIPIENT_PUBLIC_KEY",
    help="A file with the recipient's public key (base64, as 'backup-key' prints it).",
)
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT")
def study_export(folder: Path, recipient_file: Path, out: Path) -> None:
    """Write the study's pseudonymous data to OUT, encrypted to the recipient as it is written.

    Asks for the study team's secret key to open the answers (or reads it from standard
    input when that is not a terminal); the key is never stored. Give the recipient
    OUT and the signing key this prints.
    """
    values = read_definition(folder)
    recipient = read_key_file(recipient_file, "--to")
    settings = load_settings()
    with open_database(settings) as database:
        study_id(database)
        try:
            amendment.check_unchanged(database, values)
        except amendment.StudyChangedError as error:
            fail(error)
        secret = read_secret_key()
        try:
            written = export.write_export(
                database, values, settings.data_dir, out, recipient, secret, today()
            )
        except export.ExportError as error:
            fail(error)
    click.echo(
        f"Export written to {out} ({written.size} bytes), encrypted to the key"
        f" {written.recipient[:16]}: {written.participants} participants; left out because"
        f" they withdrew and erased: {written.erased}."
    )
    click.echo(f"Signing key: {written.signing_key}")


@study.command(name="open-export")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--secret-key",
    "secret_file",
    type=KEY_FILE,
    required=True,
    help="The recipient's secret key.",
)
@click.option(
    "--signing-key",
    required=True,
    metavar="BASE64",
    help="The study signing key, as 'stillroom study verify' prints it.",
)
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), metavar="DIR")
def study_open_export(archive: Path, secret_file: Path, signing_key: str, folder: Path) -> None:
    """Check an export and unpack it into the new or empty folder DIR.

    Nothing is written unless it opens with the secret key, its manifest is signed by
    the study signing key and every file has the manifest's hash. Needs no data
    directory: recipients run it on their own computer.
    """
    secret = read_key_file(secret_file, "--secret-key")
    try:
        public = decode_key(signing_key, "--signing-key")
    except BackupError as error:
        raise click.BadParameter(str(error), param_hint="--signing-key") from error
    try:
        manifest = export.open_export(archive, secret, public, folder)
    except export.OpenExportError as error:
        fail(error)
    click.echo(
        f"Export of {manifest['study']} from {manifest['export_day']} checked and unpacked"
        f" into {folder}: signed by the study signing key {signing_key.strip()}; study log"
        f" head {manifest['log_head']}; arms {manifest['arms']}; left out because they"
        f" withdrew and erased: {manifest['erased_participants']}."
    )


@study.command(name="unblind", epilog=SETTINGS_EPILOG)
@click.confirmation_option(
    prompt="From now on every export carries the real arms. This cannot be undone. Go on?"
)
def study_unblind() -> None:
    """Log the unblinding: from now on exports carry the real arm ids instead of A, B, ..."""
    settings = load_settings()
    with open_database(settings) as database:
        study_id(database)
        try:
            export.unblind(database, today())
        except export.ExportError as error:
            fail(error)
        head = study_log.verify(database)
    click.echo("Unblinding logged: exports from now on carry the real arm ids.")
    click.echo(f"Study log head: {head}")


@study.command(name="consort", epilog=SETTINGS_EPILOG)
@STUDY_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for machines.")
@click.option(
    "--svg",
    "svg_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the CONSORT flow diagram to FILE, as a standalone SVG.",
)
@click.option("--exact", is_flag=True, help="Show counts from 1 to 4 as they are, not as <5.")
def study_consort(folder: Path, as_json: bool, svg_file: Path | None, exact: bool) -> None:
    """Print the CONSORT flow, counted from the study log: in total and per stratum.

    Counts from 1 to 4 appear as "<5" unless --exact is given; 0 stays 0.
    docs/research.md defines every box.
    """
    values = read_definition(folder)
    settings = load_settings()
    with open_database(settings) as database:
        study_id(database)
        flows = consort.count(database, values)
    if svg_file is not None:
        try:
            svg_file.write_text(diagram.draw(values, flows, exact), encoding="utf-8")
        except OSError as error:
            fail(RuntimeError(f"--svg {svg_file}: {error.strerror}"))
    if as_json:
        click.echo(json.dumps(consort.as_dict(values, flows, exact)))
        return
    click.echo(consort.format_table(consort.table(values, flows, exact)))
