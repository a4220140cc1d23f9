"""The researcher's pages: the CONSORT flow, the safety list, the schedule's completion.

A researcher sees counts, masked below 5 as on the command line (the portal has no
exact counts), and of single participants only a pseudonym and which safety rule
fired on which day: never an answer, a message, a note or a time. Everything is read
from the study log and the definition.
"""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, render_template
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from stillroom.webapp.gate import db
from stillroom.webapp.portal.blueprint import bp, login_required
from stillroom.webapp.portal.pages import notice
from stillroom.webapp.study import consort, diagram
from stillroom.webapp.study.definition import Study
from stillroom.webapp.study.intake import running


def study() -> Study:
    """Return the study this deployment runs, or answer 404 when it runs none."""
    found: Study | None = current_app.config.get("STUDY")
    if found is None or not running(db()):
        abort(404)
    return found


def labels() -> dict[str, str]:
    """Return the diagram's texts in the page's language (the same keys as the CLI's)."""
    return {
        "enrolment": _("Enrolment"),
        "allocation": _("Allocation"),
        "follow-up": _("Follow-up"),
        "analysis": _("Analysis"),
        "assessed": _("Assessed for eligibility (n=%(n)s)"),
        "excluded": _("Excluded (n=%(n)s)"),
        consort.NOT_ELIGIBLE: _("Not eligible (n=%(n)s)"),
        consort.WITHDREW: _("Withdrew before randomisation (n=%(n)s)"),
        consort.LEFT: _("Eligible, not randomised (n=%(n)s)"),
        "left-note": _("(left, or still at the baseline)"),
        "randomised": _("Randomised (n=%(n)s)"),
        "allocated": _("Allocated to %(arm)s (n=%(n)s)"),
        "received": _("Received the allocated intervention (n=%(n)s)"),
        "received-note": _("(1 session or more)"),
        "completed-course": _("Completed the course (n=%(n)s)"),
        "timepoint": _("Completed %(timepoint)s (n=%(n)s)"),
        "lost": _("Lost to follow-up (n=%(n)s)"),
        "withdrawn": _("Withdrew: %(level)s (n=%(n)s)"),
        "analysed": _("Analysed (n=%(n)s)"),
        **{f"level:{code}": name for code, name in level_names().items()},
    }


def level_names() -> dict[str, str]:
    """Return the withdrawal levels' names in the page's language."""
    return {
        "stop-sessions": _("stopped sessions"),
        "stop-questionnaires": _("stopped questionnaires"),
        "erase": _("withdrew and erased their data"),
    }


@bp.get("/research")
@login_required
def research_flow() -> Any:
    """The CONSORT flow: its diagram, and its table per arm and stratum (masked counts)."""
    found = study()
    flows = consort.count(db(), found)
    return render_template(
        "portal/research/flow.html",
        study=found,
        flows=consort.as_dict(found, flows),
        levels=consort.LEVELS,
        level_names=level_names(),
        notice=notice(),
    )


@bp.get("/research/consort.svg")
@login_required
def research_diagram() -> Response:
    """The CONSORT flow diagram as an SVG image (masked counts), for the flow's page."""
    found = study()
    svg = diagram.draw(found, consort.count(db(), found), labels=labels())
    return Response(svg, mimetype="image/svg+xml")


@bp.get("/research/safety")
@login_required
def research_safety() -> Any:
    """The safety list: which rule fired for which pseudonym on which day, newest first."""
    found = study()
    return render_template(
        "portal/research/safety.html", study=found, hits=consort.safety_hits(db())
    )


@bp.get("/research/completion")
@login_required
def research_completion() -> Any:
    """The schedule's completion per timepoint: completed of those due so far (masked)."""
    found = study()
    rows = [
        {
            "timepoint": item.timepoint,
            "completed": consort.shown(item.completed),
            "missed": consort.shown(item.missed),
            "withdrawn": consort.shown(item.withdrawn),
            "due": consort.shown(item.due),
            "rate": consort.rate(item.completed, item.due),
        }
        for item in consort.completion(db(), found)
    ]
    return render_template("portal/research/completion.html", study=found, rows=rows)
