"""The ``stillroom snippets`` commands: check the operator's snippet library."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from stillroom.webapp.assist.snippets import read_library
from stillroom.webapp.settings import LANGUAGES


@click.group()
def snippets() -> None:
    """Manage the snippet library that the therapist portal offers as related material."""


@snippets.command(name="check")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), metavar="DIR")
def snippets_check(folder: Path) -> None:
    """Check the snippet library DIR: print every problem, one a line, and exit 1, or print
    a one-line summary.

    Needs no data directory and loads no model: the clinical team can run it anywhere.
    """
    problems, found, _ = read_library(folder)
    if problems:
        for problem in problems:
            click.echo(problem)
        click.echo(f"{len(problems)} problem(s) in {folder}.", err=True)
        sys.exit(1)
    keys = {snippet.key for snippet in found}
    click.echo(f"{folder}: {len(keys)} snippets, each in {', '.join(LANGUAGES)}; no problems.")
