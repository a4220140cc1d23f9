"""A study's pages for participants: intake, questionnaires, the arm's page, withdrawal.

The steps live in :mod:`stillroom.webapp.study.intake`; these views only show them and
pass the answers on. Everything works without JavaScript: one page of a form per POST.
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Any

from babel import Locale
from babel.dates import format_date
from flask import abort, current_app, make_response, redirect, render_template, request, url_for
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response

from stillroom.webapp.accounts import delete_account
from stillroom.webapp.gate import current_session, db, now, settings
from stillroom.webapp.i18n import current_language
from stillroom.webapp.instance import with_reserve
from stillroom.webapp.participant.blueprint import bp, gate, login_required, zone
from stillroom.webapp.study import intake, safety, schedule
from stillroom.webapp.study.allocation import ListExhaustedError
from stillroom.webapp.study.definition import CONSENT_ITEMS, Study
from stillroom.webapp.study.questionnaires import AnswersError, pages
from stillroom.webapp.times import DATE_LOCALES, PARTICIPANT_ZONES

CONSENT_NEEDED = _l(
    "To take part, please tick the first two boxes. The third one is your free choice."
)
CONSENT_CHANGED = _l(
    "The consent text has changed since this page was opened. Please read the text below"
    " as it is now, and tick the boxes again if you agree."
)
ANSWER_ALL = _l("Please choose an answer for each question on this page.")

#: What a participant who must consent again can still reach: help, the information
#: pages, their booked sessions' chats, and their own account's way out.
OPEN_DURING_CONSENT = {
    "participant.home",
    "participant.help_now",
    "participant.privacy",
    "participant.privacy_table",
    "participant.logout",
    "participant.delete",
    "participant.study_consent",
    "participant.study_withdraw",
    "participant.study_erase",
}


def study() -> Study | None:
    """Return the study this deployment runs, or ``None`` in open mode."""
    value: Study | None = current_app.config.get("STUDY")
    return value


def today() -> datetime.date:
    """Return today's date (UTC): study data keeps days, never times."""
    return datetime.datetime.fromtimestamp(now(), datetime.UTC).date()


def own_id() -> str:
    """Return the logged-in participant's id."""
    session = current_session()
    assert session is not None
    return session.owner_id


def current_enrolment() -> intake.Enrolment | None:
    """Return the participant's place in the running study, making it at the first visit."""
    running = study()
    if running is None or not intake.running(db()):
        return None
    found = intake.enrolment(db(), own_id())
    if found is None and not intake.over(db(), today()):  # an ended study takes nobody new
        found = intake.enrol(db(), own_id(), running.stratum_of(current_language()))
    return found


def ended_for_me() -> bool:
    """Return whether the study has ended and leaves this participant to the open service."""
    return study() is not None and intake.outside_study(db(), own_id(), today())


def intake_redirect() -> Response | None:
    """For the account page: lead a participant whose intake is unfinished back to their step."""
    if study() is None or current_session() is None or ended_for_me():
        return None
    found = current_enrolment()
    if found is None or (found.step != intake.DONE and not found.erased):
        return redirect(url_for("participant.study_step"))
    return None


@bp.before_request
def ask_consent_again() -> Response | None:
    """After a new major consent version, ask for consent before anything else.

    Crisis help, the information pages, the chat of a booked session and the account's
    way out stay open.
    """
    running = study()
    endpoint = request.endpoint or ""
    if running is None or current_session() is None or endpoint in OPEN_DURING_CONSENT:
        return None
    if endpoint.startswith("participant.chat") or "chat" in endpoint.split(".")[-1]:
        return None
    found = intake.enrolment(db(), own_id())
    if intake.over(db(), today()):  # after the study's last day nobody is asked anything more
        return None
    if found is not None and intake.needs_consent_again(running, found):
        return redirect(url_for("participant.study_consent"))
    return None


def study_values() -> dict[str, Any]:
    """Return what the account page's study part shows (empty in open mode)."""
    running = study()
    if running is not None and ended_for_me():
        found = intake.enrolment(db(), own_id())
        # Someone whose intake the end cut short may still erase what they gave.
        return {"study_ended": True, "study_may_erase": found is not None and not found.erased}
    found = current_enrolment() if running is not None else None
    if running is None or found is None:
        return {}
    allocated = intake.allocation_of(db(), found.pseudonym)
    return {
        "study_enrolment": found,
        "study_arm": None if allocated is None else running.arm(allocated[0]),
        "study_waitlist_ends": None if allocated is None else waitlist_day(running, *allocated),
        "study_minor_news": intake.has_minor_news(running, found)
        and not intake.over(db(), today()),
        "study_receipts": intake.consent_receipts(db(), found.pseudonym),
    }


def waitlist_day(running: Study, arm_id: str, allocated: datetime.date) -> str | None:
    """Return the day the participant's wait ends, written out, with their time-zone band."""
    ends = intake.waitlist_ends(running, arm_id, allocated)
    return None if ends is None else written_day(ends)


def written_day(day: datetime.date) -> str:
    """Return a study day written out in the participant's language, with their zone band."""
    words = format_date(day, "full", locale=DATE_LOCALES[current_language()])
    return f"{words} ({PARTICIPANT_ZONES[zone()]})"


#: English ordinal endings by CLDR's ordinal categories (1st, 2nd, 3rd, 4th, 11th, 21st).
ENGLISH_ORDINALS = {"one": "st", "two": "nd", "few": "rd"}


def ordinal(number: int) -> str:
    """Return ``number`` as the ordinal in "after your 2nd session".

    English takes an ending; the other four languages write an ordinal as the number and
    a full stop (2.), which their translations build on.
    """
    if current_language() != "en":
        return f"{number}."
    return f"{number}{ENGLISH_ORDINALS.get(Locale('en').ordinal_form(number), 'th')}"


def assessment_due(record: bool = False) -> dict[str, Any] | None:
    """Return what the account and chat pages say of the questionnaire due now, if one is.

    :param record: first log this participant's windows that closed unanswered (the
        account page does, so that the log is current even between maintenance passes).
    """
    running = study()
    if running is None or current_session() is None or not intake.running(db()):
        return None
    found = intake.enrolment(db(), own_id())
    if found is None or found.erased:
        return None
    if record and found.step == intake.DONE:
        schedule.record_missed(db(), running, today(), found.pseudonym)
        found = intake.enrolment(db(), own_id())  # a closed form's draft may have gone
        assert found is not None
    assessment = intake.assessment_form(db(), running, found, today())
    if assessment is None:
        return None
    _, due = assessment
    return {
        "day": written_day(due.last_day),
        "minutes": due.minutes,
        "session": None if due.after_session is None else ordinal(due.after_session),
        "begun": found.draft is not None and found.draft_form == due.timepoint,
    }


STEP_ENDPOINTS = {
    intake.INFORMATION: "participant.study_information",
    intake.CONSENT: "participant.study_consent",
    intake.SCREENING: "participant.study_form",
    intake.BASELINE: "participant.study_form",
    intake.DONE: "participant.study_arm",
    intake.INELIGIBLE: "participant.study_ineligible",
    intake.WITHDRAWN: "participant.account",
}


def at_step(*steps: str) -> intake.Enrolment | Response:
    """Return the enrolment when the participant is at one of ``steps``, else a redirect."""
    if study() is None:
        abort(404)
    if ended_for_me():
        return make_response(render_template("participant/study/closed.html", ended=True))
    found = current_enrolment()
    if found is None:
        return make_response(render_template("participant/study/closed.html"))
    if found.erased:  # withdrawn and erased: no step of the study is open any more
        return redirect(url_for("participant.account"))
    if found.step not in steps:
        return redirect(url_for(STEP_ENDPOINTS[found.step]))
    return found


@bp.get("/study")
@login_required
def study_step() -> Any:
    """Lead the participant to the step of the study they are at."""
    found = at_step()
    if isinstance(found, intake.Enrolment):  # no step is "none": never reached
        abort(404)
    return found


@bp.route("/study/information", methods=["GET", "POST"])
@login_required
def study_information() -> Any:
    """The study's information page; going on leads to consent."""
    found = at_step(intake.INFORMATION)
    if not isinstance(found, intake.Enrolment):
        return found
    running = study()
    assert running is not None
    if request.method == "POST":
        intake.read_information(db(), own_id())
        return redirect(url_for("participant.study_consent"))
    title, body = running.information[current_language()]
    return render_template(
        "participant/study/information.html", title=title, paragraphs=paragraphs(body)
    )


def paragraphs(body: str) -> list[str]:
    """Split a plain text into its paragraphs (blank lines between them)."""
    return [part.strip() for part in body.strip().split("\n\n") if part.strip()]


@bp.route("/study/consent", methods=["GET", "POST"])
@login_required
def study_consent() -> Any:
    """Consent, one box per item: at intake, and again after a new major version."""
    running = study()
    if running is None:
        abort(404)
    if ended_for_me():
        return render_template("participant/study/closed.html", ended=True)
    found = current_enrolment()
    if found is None:
        return render_template("participant/study/closed.html")
    again = intake.needs_consent_again(running, found) and not intake.over(db(), today())
    if found.step != intake.CONSENT and not again:
        return redirect(url_for(STEP_ENDPOINTS[found.step]))
    version = running.consent()
    text = version.texts[current_language()]
    error = None
    changed = False
    if request.method == "POST":
        ticked = {item for item in CONSENT_ITEMS if request.form.get(item) == "yes"}
        shown = (request.form.get("version", ""), request.form.get("text", ""))
        try:
            receipt = intake.give_consent(
                db(), running, own_id(), current_language(), ticked, today(), shown
            )
        except intake.ConsentTextChangedError:
            error = CONSENT_CHANGED
            changed = True
        except intake.ConsentMissingError:
            error = CONSENT_NEEDED
        except intake.WrongStepError:
            return redirect(url_for("participant.study_step"))
        else:
            return render_template("participant/study/consented.html", receipt=receipt, again=again)
    return render_template(
        "participant/study/consent.html",
        text=text,
        paragraphs=paragraphs(text.body),
        version=version.version,
        items=[(item, text.items[item], required) for item, required in CONSENT_ITEMS.items()],
        again=again,
        # Boxes ticked for another text are not carried over to this one.
        ticked=set(request.form) if request.method == "POST" and not changed else set(),
        error=error,
    ), (400 if error else 200)


@bp.get("/study/consent/current")
@login_required
def study_consent_text() -> Any:
    """Read the current consent text (a newer minor version is only a notice)."""
    running = study()
    found = current_enrolment() if running is not None else None
    if running is None or found is None:
        abort(404)
    text = running.consent().texts[current_language()]
    return render_template(
        "participant/study/consent_text.html",
        text=text,
        paragraphs=paragraphs(text.body),
        version=running.consent_current,
        news=intake.has_minor_news(running, found),
    )


@bp.post("/study/consent/read")
@login_required
def study_consent_read() -> Response:
    """Note that the participant has read the newer minor version; the notice goes."""
    running = study()
    if running is None:
        abort(404)
    intake.read_minor_version(db(), running, own_id(), today())
    return redirect(url_for("participant.account"))


@bp.route("/study/questions", methods=["GET", "POST"])
@login_required
def study_form() -> Any:
    """The questionnaire of this step, one page at a time; answers so far stay sealed."""
    found = at_step(intake.SCREENING, intake.BASELINE, intake.DONE)
    if not isinstance(found, intake.Enrolment):
        return found
    running = study()
    session = current_session()
    assert running is not None and session is not None
    due = None
    if found.step == intake.DONE:  # after intake: the assessment due now, if any
        assessment = intake.assessment_form(db(), running, found, today())
        if assessment is None:
            return redirect(url_for("participant.account"))
        form, due = assessment
    else:
        current = intake.current_form(running, found)
        assert current is not None
        form = current
    answers = intake.draft_answers(db(), found, form, session.secret_key)
    number = intake.page_number(form, answers)
    error = None
    if request.method == "POST":
        if request.form.get("form") != form.timepoint or request.form.get("page") != str(number):
            return redirect(url_for("participant.study_form"))  # an old page sent again
        chosen = {key: value for key, value in request.form.items() if key not in ("page", "form")}
        try:
            answers = intake.save_page(
                db(), own_id(), public_key(), session.secret_key, form, number, chosen
            )
        except intake.AnswersMissingError:
            error = ANSWER_ALL
            answers = {**answers, **{k: v for k, v in chosen.items() if v}}
        except AnswersError:
            abort(400)
        except intake.WrongStepError:
            return redirect(url_for("participant.study_step"))
        else:
            if intake.complete(form, answers):
                if due is not None:
                    return submit_assessment(running, form, answers)
                return submit(running, form, answers)
            return redirect(url_for("participant.study_form"))
    split = pages(form.instrument)
    words = form.instrument.texts[current_language()]
    return render_template(
        "participant/study/form.html",
        form=form,
        words=words,
        items=split[number],
        number=number,
        count=len(split),
        answers=answers,
        option_ids=lambda item: form.instrument.option_sets[item.options].options,
        due_day=None if due is None else written_day(due.last_day),
        error=error,
    ), (400 if error else 200)


def public_key() -> bytes:
    """Return the participant's public key, to which an unfinished form's answers are sealed."""
    (key,) = db().execute("SELECT public_key FROM participants WHERE id = ?", [own_id()]).fetchone()
    return bytes(key)


def submit(running: Study, form: intake.Form, answers: dict[str, str]) -> Response:
    """Send a complete form: screening decides eligibility, the baseline leads to allocation."""
    try:
        if form.timepoint == intake.SCREENING:
            eligible = intake.submit_screening(db(), running, own_id(), answers, today())
            if not eligible:
                return redirect(url_for("participant.study_ineligible"))
            return redirect(url_for("participant.study_form"))
        _, fired = intake.submit_baseline(db(), running, own_id(), answers, today())
        if fired:  # crisis help at once, before the way on to the arm's page
            return make_response(safety_page(url_for("participant.study_step")))
    except intake.WrongStepError:
        pass  # sent twice: the first one did it
    except ListExhaustedError:
        # The stratum's list is used up. The baseline's transaction was rolled back, so
        # the participant stays at this step with their draft, and nothing was logged.
        # Crisis help still comes first when their answers met a safety rule.
        hard = bool(safety.fired(running, form.instrument, answers))
        page = render_template(
            "participant/study/full.html",
            hard=hard,
            lines=settings().crisis_lines(current_language()),
        )
        return make_response(page, 503)
    return redirect(url_for("participant.study_step"))


def safety_page(onward: str) -> str:
    """Return the page shown when a safety rule fired: crisis help, then the way on.

    It never repeats the answers, nor says which rule fired: only that help is there.
    """
    return render_template(
        "participant/study/safety.html",
        lines=settings().crisis_lines(current_language()),
        onward=onward,
    )


def submit_assessment(running: Study, form: intake.Form, answers: dict[str, str]) -> Any:
    """Send a complete assessment: a short thank-you, or a calm word if its time ran out."""
    try:
        fired = intake.submit_assessment(db(), running, own_id(), form.timepoint, answers, today())
    except intake.WindowClosedError:
        return render_template("participant/study/thanks.html", closed=True)
    except intake.WrongStepError:
        return redirect(url_for("participant.account"))  # sent twice: the first one did it
    if fired:  # crisis help at once, before the way back to the account
        return safety_page(url_for("participant.account"))
    return render_template("participant/study/thanks.html", closed=False)


@bp.route("/study/not-eligible", methods=["GET", "POST"])
@login_required
def study_ineligible() -> Any:
    """A respectful page with help for people the study does not fit.

    With ``ineligible_account = "delete"`` the page offers deleting the account, which a
    POST does as the participant's own deletion does. Loading the page changes nothing:
    someone who just leaves keeps the account until unused accounts are deleted.
    """
    found = at_step(intake.INELIGIBLE)
    if not isinstance(found, intake.Enrolment):
        return found
    running = study()
    assert running is not None
    deleting = running.ineligible_account == "delete"
    deleted = request.method == "POST"
    if deleted and not deleting:
        abort(400)
    page = render_template(
        "participant/study/ineligible.html",
        lines=settings().crisis_lines(current_language()),
        deleting=deleting,
        deleted=deleted,
        retention_days=settings().account_retention_days,
        logged_in=not deleted,
    )
    if not deleted:
        return page
    with_reserve(settings(), lambda: delete_account(db(), own_id()))
    return gate.clear_cookie(make_response(page))


@bp.get("/study/arm")
@login_required
def study_arm() -> Any:
    """The page of the participant's arm: book the first session, or when the wait ends."""
    found = at_step(intake.DONE)
    if not isinstance(found, intake.Enrolment):
        return found
    return render_template("participant/study/arm.html", **study_values())


@bp.route("/study/withdraw", methods=["GET", "POST"])
@login_required
def study_withdraw() -> Any:
    """Stop the sessions, or stop the questionnaires; erasing has a confirmation of its own."""
    found = current_enrolment() if study() is not None else None
    if found is None:
        abort(404)
    if request.method == "POST":
        level = request.form.get("level", "")
        if level not in (intake.STOP_SESSIONS, intake.STOP_QUESTIONNAIRES):
            abort(400)
        with contextlib.suppress(intake.WrongStepError):  # erased already: nothing to stop
            intake.withdraw(db(), own_id(), level, today(), now())
        return redirect(url_for("participant.account", done=level))
    return render_template("participant/study/withdraw.html", enrolment=found)


@bp.route("/study/withdraw/erase", methods=["GET", "POST"])
@login_required
def study_erase() -> Any:
    """Withdraw and erase the research data, after one confirmation."""
    found = current_enrolment() if study() is not None else None
    if found is None:
        abort(404)
    if request.method == "POST":
        with contextlib.suppress(intake.WrongStepError):  # erased already
            intake.withdraw(db(), own_id(), intake.ERASE, today(), now())
        return redirect(url_for("participant.account", done=intake.ERASE))
    return render_template("participant/study/erase.html", enrolment=found)
