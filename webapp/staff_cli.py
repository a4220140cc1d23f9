"""The ``stillroom therapist`` and ``stillroom researcher`` commands: the portal's accounts.

Both enrol the same way (a one-time link, a generated passphrase and a TOTP app); a
researcher is a portal account whose role shows only the study's counts.
"""

from __future__ import annotations

import time

import click

from stillroom.webapp import therapists
from stillroom.webapp.console import fail, load_settings, open_database
from stillroom.webapp.settings import LANGUAGES, Settings
from stillroom.webapp.times import is_zone


@click.group()
def therapist() -> None:
    """Add therapists and look after their accounts."""


def enrolment_url(settings: Settings, language: str, token: str) -> str:
    """Return the portal address where a therapist sets up their account."""
    return f"{settings.portal_base_url}/{language}/enrol/{token}"


def read_languages(value: str) -> tuple[str, ...]:
    """Turn ``de,en`` into a tuple, refusing codes the service does not speak."""
    codes = tuple(dict.fromkeys(code.strip() for code in value.split(",") if code.strip()))
    unknown = [code for code in codes if code not in LANGUAGES]
    choices = f"use a comma-separated list of {', '.join(LANGUAGES)}"
    if unknown:
        raise click.BadParameter(
            f"Stillroom does not speak {', '.join(unknown)}: {choices}", param_hint="--languages"
        )
    if not codes:
        raise click.BadParameter(f"no language given: {choices}", param_hint="--languages")
    return codes


@therapist.command(name="add")
@click.option("--name", required=True, help="The name participants see (a pseudonym is fine).")
@click.option("--languages", required=True, help="Languages offered, e.g. de,en.")
@click.option(
    "--time-zone",
    default="Europe/Berlin",
    show_default=True,
    help="The therapist's own time zone (IANA name); availability is entered in it.",
)
@click.option("--site", default=None, help="The site (centre) they work for, e.g. berlin.")
def therapist_add(name: str, languages: str, time_zone: str, site: str | None) -> None:
    """Add a therapist and print their one-time enrolment link (ENROLMENT_LINK_HOURS)."""
    settings = load_settings()
    codes = read_languages(languages)
    if not is_zone(time_zone):
        raise click.BadParameter(f"unknown time zone {time_zone!r}", param_hint="--time-zone")
    if site is not None:
        read_site(site, "--site")
    with open_database(settings) as database:
        try:
            enrolment = therapists.add_therapist(
                database,
                name,
                codes,
                time_zone,
                int(time.time()),
                settings.enrolment_link_hours * 3600,
                site,
            )
        except therapists.TherapistNameError as problem:
            fail(RuntimeError(name_problem(name, problem)))
    say_enrolment(settings, codes[0], enrolment)


def read_site(site: str, hint: str) -> str:
    """Refuse a site name that is not 2 to 30 of a-z, 0-9 and "-"."""
    try:
        return therapists.check_site(site)
    except therapists.SiteNameError:
        raise click.BadParameter(
            f"{site!r} is not a site name: use 2 to 30 of a-z, 0-9 and '-', e.g. berlin",
            param_hint=hint,
        ) from None


def name_problem(name: str, problem: therapists.TherapistNameError) -> str:
    """Say what is wrong with a therapist's name, for the operator."""
    if problem.reason == "taken":
        by = "" if problem.existing == name else f" (by {problem.existing!r})"
        return f"the name {name!r} is taken{by}; choose another"
    if problem.reason == "look-alike":
        return (
            f"the name {name!r} looks the same as {problem.existing!r} to participants;"
            " choose one that looks different"
        )
    longest = therapists.MAX_NAME_CHARS
    return f"the name {name!r} is empty, longer than {longest} characters or not plain text"


def say_enrolment(
    settings: Settings, language: str, enrolment: therapists.Enrolment, who: str = "therapist"
) -> None:
    """Print the login name and the one-time link, the link last (scripts take the last line)."""
    click.echo(
        f"Give both to the {who} by a safe channel. The link works once, for"
        f" {settings.enrolment_link_hours} hours."
    )
    click.echo(f"Login name (not shown to participants): {enrolment.login_name}")
    click.echo(enrolment_url(settings, language, enrolment.token))


@therapist.command(name="list")
def therapist_list() -> None:
    """List therapists: name, login name, languages, time zone, state and site ("-": none;
    "(lead)" after a site's lead)."""
    with open_database(load_settings()) as database:
        click.echo("name\tlogin name\tlanguages\ttime zone\tstate\tsite")
        for item in therapists.list_therapists(database):
            state = "disabled" if item.disabled else "active" if item.enrolled else "not enrolled"
            click.echo(
                f"{item.name}\t{item.login_name}\t{','.join(item.languages)}"
                f"\t{item.time_zone}\t{state}\t{item.site or '-'}{' (lead)' * item.lead}"
            )


@therapist.command(name="site")
@click.argument("name")
@click.argument("site", required=False)
@click.option("--clear", is_flag=True, help="Take the therapist off any site.")
def therapist_site(name: str, site: str | None, clear: bool) -> None:
    """Move the therapist NAME to SITE (or off any site with --clear)."""
    if clear == (site is not None):
        raise click.UsageError("give either a SITE or --clear")
    if site is not None:
        read_site(site, "SITE")
    with open_database(load_settings()) as database:
        try:
            moved = therapists.set_site(database, name, site)
        except therapists.UnknownTherapistError:
            fail(RuntimeError(f"no therapist named {name!r}"))
    where = f"site {moved.site}" if moved.site else "no site"
    click.echo(f"{moved.name} now belongs to {where}; appointments already booked stay.")


@therapist.command(name="lead")
@click.argument("name")
@click.option("--clear", is_flag=True, help="No longer a lead.")
def therapist_lead(name: str, clear: bool) -> None:
    """Make the therapist NAME a lead of their site (or no longer, with --clear).

    A lead sees, on the portal's "Safety list", the site's study participants whose
    safety flag has no therapist to see it yet. Moving a lead to another site ends it.
    """
    with open_database(load_settings()) as database:
        try:
            changed = therapists.set_lead(database, name, not clear)
        except therapists.UnknownTherapistError:
            fail(RuntimeError(f"no therapist named {name!r}"))
        except therapists.NoSiteError:
            fail(RuntimeError(f"{name} belongs to no site: run 'stillroom therapist site' first"))
    state = f"leads site {changed.site}" if changed.lead else "leads no site"
    click.echo(f"{changed.name} now {state}.")


@therapist.command(name="disable")
@click.argument("name")
def therapist_disable(name: str) -> None:
    """Lock a therapist out at once and withdraw their free times."""
    with open_database(load_settings()) as database:
        try:
            upcoming = therapists.disable_therapist(database, name, int(time.time()))
        except therapists.UnknownTherapistError:
            fail(RuntimeError(f"no therapist named {name!r}"))
    click.echo(f"{name} is disabled; their sessions ended and their free times were withdrawn.")
    if upcoming:
        click.echo(
            f"Warning: {upcoming} booked appointment(s) remain; arrange them with another"
            " therapist or run 'stillroom therapist reset' to let them back in."
        )


@therapist.command(name="reset")
@click.argument("name")
def therapist_reset(name: str) -> None:
    """Clear a therapist's passphrase and TOTP and print a new enrolment link."""
    settings = load_settings()
    with open_database(settings) as database:
        try:
            found = therapists.find_by_name(database, name)
            enrolment = therapists.reset_therapist(
                database, name, int(time.time()), settings.enrolment_link_hours * 3600
            )
        except therapists.UnknownTherapistError:
            fail(RuntimeError(f"no therapist named {name!r}"))
    click.echo(
        "Passphrase and authenticator cleared, sessions ended, conversations deleted and"
        " their keys destroyed (they were sealed to the old key), account enabled."
    )
    say_enrolment(settings, found.languages[0], enrolment)


@click.group()
def researcher() -> None:
    """Add the study team's portal accounts: they see the CONSORT flow, the safety list and
    the schedule's completion, and nothing else."""


@researcher.command(name="add")
@click.option("--name", required=True, help="The researcher's name (a pseudonym is fine).")
@click.option(
    "--language",
    type=click.Choice(LANGUAGES),
    default="en",
    show_default=True,
    help="The language of the portal's pages and of the passphrase's words.",
)
def researcher_add(name: str, language: str) -> None:
    """Add a researcher and print their one-time enrolment link (ENROLMENT_LINK_HOURS).

    They enrol as therapists do: a generated passphrase, shown once, and a TOTP app.
    """
    settings = load_settings()
    with open_database(settings) as database:
        try:
            enrolment = therapists.add_therapist(
                database,
                name,
                (language,),
                "UTC",  # their pages show days only
                int(time.time()),
                settings.enrolment_link_hours * 3600,
                role=therapists.RESEARCHER,
            )
        except therapists.TherapistNameError as problem:
            fail(RuntimeError(name_problem(name, problem)))
    say_enrolment(settings, language, enrolment, "researcher")


@researcher.command(name="list")
def researcher_list() -> None:
    """List researchers: name, login name and state."""
    with open_database(load_settings()) as database:
        click.echo("name\tlogin name\tstate")
        for item in therapists.list_therapists(database, therapists.RESEARCHER):
            state = "disabled" if item.disabled else "active" if item.enrolled else "not enrolled"
            click.echo(f"{item.name}\t{item.login_name}\t{state}")


@researcher.command(name="disable")
@click.argument("name")
def researcher_disable(name: str) -> None:
    """Lock a researcher out at once."""
    with open_database(load_settings()) as database:
        try:
            therapists.disable_therapist(database, name, int(time.time()), therapists.RESEARCHER)
        except therapists.UnknownTherapistError:
            fail(RuntimeError(f"no researcher named {name!r}"))
    click.echo(f"{name} is disabled; their sessions ended.")


@researcher.command(name="reset")
@click.argument("name")
def researcher_reset(name: str) -> None:
    """Clear a researcher's passphrase and TOTP (a lost phone) and print a new enrolment link."""
    settings = load_settings()
    with open_database(settings) as database:
        try:
            found = therapists.find_by_name(database, name, therapists.RESEARCHER)
            enrolment = therapists.reset_therapist(
                database,
                name,
                int(time.time()),
                settings.enrolment_link_hours * 3600,
                therapists.RESEARCHER,
            )
        except therapists.UnknownTherapistError:
            fail(RuntimeError(f"no researcher named {name!r}"))
    click.echo("Passphrase and authenticator cleared, sessions ended, account enabled.")
    say_enrolment(settings, found.languages[0], enrolment, "researcher")
