"""The data inventory: every table and column Stillroom stores, and why.

This is the published promise. A test fails when the database schema and this
inventory differ, and the privacy page is rendered from it, so nothing can be
stored without being declared here first.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask_babel import lazy_gettext as _l

from stillroom.webapp.settings import Settings


@dataclass(frozen=True)
class Column:
    """One stored column.

    :param name: the column name in SQLite.
    :param purpose: why it is kept.
    :param encrypted: how it is protected at rest, or ``None`` when stored in clear.
    """

    name: str
    purpose: str
    encrypted: str | None = None


@dataclass(frozen=True)
class Table:
    """One table: what it is for, who can read it, and how long its rows live."""

    name: str
    purpose: str
    readers: str
    retention: str
    columns: tuple[Column, ...]
    #: Listed on the public "What we store" pages at all.
    public: bool = True
    #: Listed on the participants' page too (therapist-only tables are on the portal's).
    about_participants: bool = True


INVENTORY: tuple[Table, ...] = (
    Table(
        name="participants",
        purpose=_l("One row per account. There is no name, e-mail or other identifier."),
        readers=_l("The server, to let you log in."),
        retention=_l(
            "Until you delete your account, or %(account_days)s days after your last login."
        ),
        columns=(
            Column("id", _l("A random number that links your data together.")),
            Column(
                "slot",
                _l(
                    "The number of your account's place in the key file. That place holds a"
                    " random key and a keyed hash of your passphrase (to find your account"
                    " when you log in); deleting your account overwrites it."
                ),
            ),
            Column("public_key", _l("Your public key, so messages can be encrypted to you.")),
            Column(
                "wrapped_secret_key",
                _l("Your secret key, locked with your passphrase."),
                encrypted=_l(
                    "encrypted under a key only your passphrase gives, and under your"
                    " account's key in the key file"
                ),
            ),
            Column(
                "last_login_day",
                _l("The day (not the time) of your last login, to remove unused accounts."),
            ),
            Column(
                "time_zone",
                _l("The broad time zone you chose for showing times (for example Central Europe)."),
                encrypted=_l("encrypted to your key; only you can read it"),
            ),
            Column("blocked", _l("Whether a therapist has stopped this account from booking.")),
            Column(
                "created_day",
                _l(
                    "The day (not the time) your account was made: a new account books after a"
                    " short wait, and a therapist may hide their times from accounts made after"
                    " they blocked someone. Empty for accounts made before this was kept."
                ),
            ),
        ),
    ),
    Table(
        name="sessions",
        purpose=_l("Logged-in sessions. Your browser holds a random token; we hold its hash."),
        readers=_l("The server, while you are logged in."),
        retention=_l(
            "Deleted when you log out, after %(idle)s idle minutes, or %(hours)s hours after login."
        ),
        columns=(
            Column("token_hash", _l("A hash of the session token in your cookie.")),
            Column("participant_id", _l("The account the session belongs to.")),
            Column(
                "wrapped_secret_key",
                _l("Your secret key for this session, locked with the session token."),
                encrypted=_l("encrypted under a key only your cookie gives"),
            ),
            Column("idle_expires_at", _l("When the session ends if you do nothing.")),
            Column("absolute_expires_at", _l("When the session ends at the latest.")),
        ),
    ),
    Table(
        name="slots",
        purpose=_l("Times the therapists offer. Nothing about participants."),
        readers=_l("Everyone logged in, to book; the therapist who offers them."),
        retention=_l("Deleted when the time has passed, or when the therapist withdraws it."),
        columns=(
            Column("id", _l("A random number for the time.")),
            Column("therapist_id", _l("The therapist who offers it.")),
            Column("starts_at", _l("When it starts.")),
            Column("ends_at", _l("When it ends.")),
            Column("languages", _l("The languages offered at that time.")),
            Column(
                "for_participant",
                _l(
                    "Your account, when your therapist made this time for you alone as the"
                    " proposed next session; empty for times everyone can book."
                ),
            ),
        ),
    ),
    Table(
        name="appointments",
        purpose=_l("Booked appointments: which account meets which therapist, and when."),
        readers=_l("You, and the therapist you booked (who sees only a random name for you)."),
        retention=_l(
            "Deleted %(days)s days after the appointment ends, at once when you cancel it,"
            " or with your account."
        ),
        columns=(
            Column("id", _l("A random number for the appointment.")),
            Column("slot_id", _l("The time that was booked, while it exists.")),
            Column("participant_id", _l("Your account.")),
            Column("therapist_id", _l("The therapist.")),
            Column("starts_at", _l("When it starts.")),
            Column("ends_at", _l("When it ends.")),
            Column("language", _l("The language you booked it in.")),
            Column("cancelled", _l("Whether the therapist had to cancel it.")),
            Column(
                "cancel_note",
                _l("The therapist's note when they cancel."),
                encrypted=_l(
                    "encrypted to your key (only you can read it), and under the key of the"
                    " day the appointment is deleted"
                ),
            ),
            Column("chat_extra_minutes", _l("How long the therapist extended the chat.")),
            Column("chat_closed", _l("Whether the therapist closed the chat early.")),
            Column(
                "course_counted",
                _l("Whether it has been counted in your course of sessions, so it counts once."),
            ),
            Column(
                "sides_wrote",
                _l(
                    "Whether you, your therapist or both wrote in its chat (never what, or"
                    " when), so that a session counts only when both of you came."
                ),
            ),
        ),
    ),
    Table(
        name="conversations",
        purpose=_l("One conversation per pair of you and a therapist, with its key."),
        readers=_l("You and the therapist; the server only while one of you is logged in."),
        retention=_l(
            "Deleted with its last message, when you delete it, or when the chat ends if you"
            " chose so. Its keys are deleted with it."
        ),
        columns=(
            Column("id", _l("A random number for the conversation.")),
            Column("participant_id", _l("Your account.")),
            Column("therapist_id", _l("The therapist.")),
            Column(
                "slot",
                _l(
                    "The number of the conversation's place in the key file, which holds a"
                    " random key; deleting the conversation overwrites it."
                ),
            ),
            Column(
                "key_for_participant",
                _l("The conversation's key, for you."),
                encrypted=_l(
                    "encrypted to your key, and under the conversation's key in the key file"
                ),
            ),
            Column(
                "key_for_therapist",
                _l("The conversation's key, for the therapist."),
                encrypted=_l(
                    "encrypted to the therapist's key, and under the conversation's key in"
                    " the key file"
                ),
            ),
            Column(
                "delete_when_chat_ends",
                _l("Whether you asked for the conversation to be deleted when the chat ends."),
            ),
        ),
    ),
    Table(
        name="messages",
        purpose=_l("Chat messages. Sender, time and text exist only inside the encryption."),
        readers=_l("You and the therapist."),
        retention=_l(
            "Deleted on the day %(message_days)s days after the appointment ends, or sooner."
        ),
        columns=(
            Column("conversation_id", _l("The conversation.")),
            Column("seq", _l("The message's place in the conversation.")),
            Column(
                "envelope",
                _l("The message, padded to a fixed size and encrypted."),
                encrypted=_l(
                    "encrypted under a key made of the conversation's key and the key of the"
                    " day it is deleted"
                ),
            ),
            Column("expires_day", _l("The day the message is deleted.")),
        ),
    ),
    Table(
        name="day_keys",
        purpose=_l(
            "One key for each day on which messages and cancellation notes are deleted,"
            " kept in the key file. On that day the key is overwritten first, so copies"
            " that the disk may still hold can never be read again."
        ),
        readers=_l(
            "The server, to encrypt and show messages and notes to the people they are for."
        ),
        retention=_l("Deleted on its day, before that day's messages."),
        columns=(
            Column("expires_day", _l("The day.")),
            Column("slot", _l("The number of the day's place in the key file.")),
        ),
    ),
    Table(
        name="pairs",
        purpose=_l(
            "The random name a therapist sees for you. It is made by the server, not from"
            " anything you typed, and it is different for each therapist."
        ),
        readers=_l("The therapist it belongs to."),
        retention=_l(
            "Until you delete your account, or %(account_days)s days after your last login."
        ),
        columns=(
            Column("participant_id", _l("Your account.")),
            Column("therapist_id", _l("The therapist.")),
            Column("pseudonym", _l("The random name, such as KX7M-Q2PD.")),
        ),
    ),
    Table(
        name="notes",
        purpose=_l(
            "A therapist's private notes about you, so that they remember your earlier"
            " sessions once the messages are deleted. You are never shown them."
        ),
        readers=_l("Only the therapist who wrote them; the server only while they are logged in."),
        retention=_l(
            "Deleted %(note_days)s days after the therapist last changed them, with your"
            " account, or when the therapist's account is reset; if you take part in a study,"
            " at the latest with the study's research data. Their key is deleted with them."
        ),
        columns=(
            Column("participant_id", _l("Your account.")),
            Column("therapist_id", _l("The therapist who wrote them.")),
            Column(
                "slot",
                _l(
                    "The number of the notes' place in the key file, which holds a random"
                    " key; each change and the deletion overwrite it."
                ),
            ),
            Column(
                "body",
                _l("The notes, in plain text, padded to a fixed size."),
                encrypted=_l(
                    "encrypted to the therapist's key, and under the notes' key in the key file"
                ),
            ),
            Column("edited_day", _l("The day (not the time) of the last change.")),
        ),
    ),
    Table(
        name="therapists",
        purpose=_l("Therapist accounts. Therapists may use a pseudonym as their name."),
        readers=_l("The server, to let therapists log in; participants see the name."),
        retention=_l("Until the operator removes the therapist."),
        columns=(
            Column("id", _l("A random number for the therapist.")),
            Column("name", _l("The name participants see.")),
            Column(
                "login_name",
                _l("A random name the therapist logs in with, known only to them."),
            ),
            Column("languages", _l("The languages the therapist works in.")),
            Column("time_zone", _l("The therapist's time zone.")),
            Column(
                "slot",
                _l(
                    "The number of the therapist's place in the key file, which holds a"
                    " random key; a new passphrase or a reset overwrites it."
                ),
            ),
            Column("public_key", _l("The therapist's public key.")),
            Column(
                "wrapped_secret_key",
                _l(
                    "The therapist's secret key and the secret of their authenticator app,"
                    " locked with their passphrase."
                ),
                encrypted=_l(
                    "encrypted under a key only the generated passphrase gives, and under"
                    " the therapist's key in the key file"
                ),
            ),
            Column(
                "totp_secret",
                _l(
                    "Only for a therapist who chose a password before passphrases were"
                    " generated: the secret of their authenticator app, until their first"
                    " login gives them a passphrase."
                ),
                encrypted=_l("encrypted under a server key"),
            ),
            Column(
                "renew_passphrase",
                _l("Whether the therapist must replace a chosen password at the next login."),
            ),
            Column("totp_last_step", _l("The last code used, so that no code works twice.")),
            Column("failed_logins", _l("Failed logins in a row, to pause guessing.")),
            Column("locked_until", _l("Until when logging in is paused after failures.")),
            Column(
                "failures_expire_at",
                _l(
                    "When the count of failed logins is forgotten: a pause's length after the last."
                ),
            ),
            Column("disabled", _l("Whether the operator has locked the account.")),
            Column(
                "site",
                _l(
                    "The centre the therapist works for, if the operator named one, so that"
                    " a study can offer each language the therapists of its centre."
                ),
            ),
            Column(
                "withhold_from_day",
                _l(
                    "The day of a block after which the therapist chose to hide their free"
                    " times from accounts made on or after it; empty when they hide nothing."
                ),
            ),
            Column(
                "role",
                _l(
                    "Whether the account is a therapist's, or a researcher's who sees only the"
                    " study's counts and safety list (and never appears to participants)."
                ),
            ),
            Column(
                "site_lead",
                _l(
                    "Whether the operator made the therapist a lead of their centre, who sees"
                    " the study's safety flags of participants there who have no therapist yet."
                ),
            ),
        ),
        about_participants=False,
    ),
    Table(
        name="enrolments",
        purpose=_l("One-time links with which a new therapist sets up their account."),
        readers=_l("The server, when the link is opened."),
        retention=_l("Deleted when used, or after %(link_hours)s hours."),
        columns=(
            Column("token_hash", _l("A hash of the link's secret part.")),
            Column("therapist_id", _l("The therapist the link is for.")),
            Column("expires_at", _l("When the link stops working.")),
        ),
        about_participants=False,
    ),
    Table(
        name="therapist_sessions",
        purpose=_l("Therapists' logged-in sessions, kept like yours."),
        readers=_l("The server, while the therapist is logged in."),
        retention=_l(
            "Deleted at logout, after %(idle)s idle minutes, or %(hours)s hours after login."
        ),
        columns=(
            Column("token_hash", _l("A hash of the session token in the cookie.")),
            Column("therapist_id", _l("The therapist the session belongs to.")),
            Column(
                "wrapped_secret_key",
                _l("The therapist's secret key for this session, locked with the session token."),
                encrypted=_l("encrypted under a key only the cookie gives"),
            ),
            Column("idle_expires_at", _l("When the session ends if nothing happens.")),
            Column("absolute_expires_at", _l("When the session ends at the latest.")),
        ),
        about_participants=False,
    ),
    Table(
        name="study",
        purpose=_l(
            "Only while a research study runs: which study it is, the fingerprint of its"
            " rules, and the public keys its data is sealed to. Nothing about you."
        ),
        readers=_l("The server."),
        retention=_l(
            "Kept after the study ends as the record that it ran; its research data is"
            " erased on the day its published rules set."
        ),
        columns=(
            Column("id", _l("The study's short name.")),
            Column(
                "definition_sha256",
                _l("A fingerprint of the study's rules, so they cannot change unnoticed."),
            ),
            Column("started_day", _l("The day the study started.")),
            Column(
                "study_public_key",
                _l("The study team's public key, to which questionnaire answers are sealed."),
            ),
            Column(
                "statistician_public_key",
                _l(
                    "The trial statistician's public key, to which the allocation lists are sealed."
                ),
            ),
            Column(
                "signing_public_key",
                _l("The public half of the key with which the server signs the study log."),
            ),
            Column(
                "allocation_sha256",
                _l(
                    "A fingerprint of the rules the allocation lists were made from, which"
                    " no amendment may change."
                ),
            ),
            Column("consent_version", _l("The consent version participants are asked for now.")),
            Column(
                "last_day",
                _l("The study's last day: after it, nobody new is asked to take part."),
            ),
            Column(
                "erase_day",
                _l("The day the study's research data is erased for good, as its rules say."),
            ),
            Column(
                "erased_day",
                _l(
                    "The day the study's research data was erased, so that everyone can see"
                    " the study ran and that its data is gone."
                ),
            ),
        ),
    ),
    Table(
        name="study_log",
        purpose=_l(
            "Only in a research study: what happened in it, such as a consent or an"
            " allocation, with a random study name and the day. Never any content. Each"
            " entry is chained to the one before, so no entry can be changed unnoticed."
        ),
        readers=_l("The server and the study team."),
        retention=_l("Erased for good on the day the study's published rules set after it ends."),
        columns=(
            Column("seq", _l("The entry's number.")),
            Column("day", _l("The day (not the time) it happened.")),
            Column("event", _l("What happened, as a fixed code.")),
            Column("pseudonym", _l("Your random study name, if it is about you.")),
            Column("detail", _l("Fixed codes that describe it, never text you wrote.")),
            Column("prev_hash", _l("The fingerprint of the entry before.")),
            Column("hash", _l("The fingerprint of this entry and all before it.")),
        ),
    ),
    Table(
        name="allocation_lists",
        purpose=_l(
            "Only in a research study: for each group of participants (language and"
            " site), the list that decides who is offered chat now and who later. It is"
            " sealed, so nobody can look ahead."
        ),
        readers=_l(
            "Nobody before the study ends: the server opens one entry at a time, and the"
            " statistician opens the lists afterwards to check them."
        ),
        retention=_l("Erased for good on the day the study's published rules set after it ends."),
        columns=(
            Column("stratum", _l("The group: language and site.")),
            Column("length", _l("How many entries the list has.")),
            Column(
                "commitment",
                _l("A published fingerprint of the list, so it cannot be changed later."),
            ),
            Column(
                "sealed",
                _l("The list, for the statistician."),
                encrypted=_l("encrypted to the statistician's key"),
            ),
            Column(
                "slot",
                _l("The number of the list's place in the key file, which holds its key."),
            ),
            Column(
                "entries",
                _l("The list, for the server, each entry locked on its own."),
                encrypted=_l("encrypted under the list's key in the key file"),
            ),
        ),
    ),
    Table(
        name="allocations",
        purpose=_l(
            "Only in a research study: which part of the study you were allocated to,"
            " once and for good."
        ),
        readers=_l("The server, to offer you the right next step; the study team."),
        retention=_l("Erased for good on the day the study's published rules set after it ends."),
        columns=(
            Column("pseudonym", _l("Your random study name.")),
            Column("stratum", _l("Your group: language and site.")),
            Column("position", _l("The entry of the group's list you received.")),
            Column("arm", _l("The part of the study you were allocated to.")),
            Column("day", _l("The day (not the time) of the allocation.")),
        ),
    ),
    Table(
        name="study_participants",
        purpose=_l(
            "Only in a research study: your place in it. It carries a random study name,"
            " never anything that identifies you."
        ),
        readers=_l("The server, to lead you through the study's steps."),
        retention=_l(
            "Until you delete your account, and at the latest until the day the study's"
            " published rules set for erasing its research data; the study name stays in the"
            " study log until then."
        ),
        columns=(
            Column("participant_id", _l("The account this place belongs to.")),
            Column("pseudonym", _l("Your random study name, the only name study data carries.")),
            Column("stratum", _l("Your group: language and site.")),
            Column(
                "slot",
                _l(
                    "The number of your research data's place in the key file. Withdrawing and"
                    " erasing overwrites it, so your answers can never be opened again."
                ),
            ),
            Column("step", _l("Which step of the study's start you are at.")),
            Column("consent_version", _l("The version of the consent text you agreed to.")),
            Column("draft_form", _l("Which questionnaire you have started and not yet sent.")),
            Column(
                "draft",
                _l("Your answers to a questionnaire you have not yet sent, so you can resume."),
                encrypted=_l(
                    "encrypted to your key, so only you can read it, and under your research"
                    " data's key in the key file; deleted when you send the questionnaire"
                ),
            ),
            Column("sessions_stopped", _l("Whether you chose to stop the sessions.")),
            Column("questionnaires_stopped", _l("Whether you chose to stop the questionnaires.")),
            Column("erased", _l("Whether you withdrew and erased your research data.")),
        ),
    ),
    Table(
        name="study_consents",
        purpose=_l(
            "Only in a research study: each consent you gave, so that nobody can claim you"
            " agreed to a text you never saw."
        ),
        readers=_l("The server and the study team."),
        retention=_l(
            "Until you withdraw and erase, or delete your account, and at the latest until"
            " the day the study's published rules set for erasing its research data."
        ),
        columns=(
            Column("pseudonym", _l("Your random study name.")),
            Column("version", _l("The version of the consent text.")),
            Column("text_sha256", _l("A fingerprint of the exact text you were shown.")),
            Column("items", _l("Which boxes you ticked, as fixed codes.")),
            Column("day", _l("The day (not the time) you agreed.")),
            Column("receipt", _l("The short receipt code you were shown.")),
        ),
    ),
    Table(
        name="study_answers",
        purpose=_l(
            "Only in a research study: your questionnaire answers, sealed so that only the"
            " study team can read them. The server cannot."
        ),
        readers=_l("Only the study team, with its own key."),
        retention=_l(
            "Until you withdraw and erase, or delete your account, and at the latest until"
            " the day the study's published rules set for erasing its research data."
        ),
        columns=(
            Column("id", _l("Row number.")),
            Column("pseudonym", _l("Your random study name.")),
            Column("instrument", _l("Which questionnaire it was.")),
            Column("timepoint", _l("Which of the study's questionnaire times it was for.")),
            Column("day", _l("The day (not the time) you sent it.")),
            Column(
                "sealed",
                _l("Your answers."),
                encrypted=_l(
                    "sealed to the study team's key, and encrypted again under your research"
                    " data's key in the key file"
                ),
            ),
        ),
    ),
    Table(
        name="safety_flags",
        purpose=_l(
            "Only in a research study: when your answers to a questionnaire meet one of the"
            " study's published safety rules, a note that this rule applied, so that your"
            " therapist (or, until you have one, the lead of your centre) can take care. It"
            " never holds your answers or scores."
        ),
        readers=_l(
            "Your therapist, or the lead of your centre while you have no therapist; the server."
        ),
        retention=_l(
            "Until you withdraw and erase, or delete your account, and at the latest until"
            " the day the study's published rules set for erasing its research data."
        ),
        columns=(
            Column("id", _l("Row number.")),
            Column("participant_id", _l("Your account, so that your therapist sees it.")),
            Column("pseudonym", _l("Your random study name.")),
            Column("rule", _l("Which of the study's safety rules applied (its name, not why).")),
            Column("timepoint", _l("Which of the study's questionnaire times it was.")),
            Column("day", _l("The day (not the time) you sent the questionnaire.")),
            Column("site", _l("Your centre, whose lead sees it while you have no therapist.")),
            Column("seen_day", _l("The day your therapist marked it seen; empty until then.")),
        ),
    ),
    Table(
        name="_sqlite_migrations",
        purpose=_l("Which versions of the database layout have been applied."),
        readers=_l("The server, when it starts."),
        retention=_l("Kept; it holds nothing about anyone."),
        columns=(
            Column("id", _l("Row number.")),
            Column("migration_set", _l("Name of the set of layout changes.")),
            Column("name", _l("Name of the layout change.")),
            Column("applied_at", _l("When the server applied it.")),
        ),
        public=False,
    ),
    Table(
        name="courses",
        purpose=_l(
            "Your course of sessions: the therapist you keep across it, and how many"
            " sessions you have had."
        ),
        readers=_l("The server, to offer you your therapist's times and show your progress."),
        retention=_l("Until your account is deleted."),
        columns=(
            Column("participant_id", _l("Your account.")),
            Column("therapist_id", _l("The therapist of your course.")),
            Column(
                "attended",
                _l("How many sessions took place: a chat in which something was written."),
            ),
        ),
    ),
    Table(
        name="proposals",
        purpose=_l("The next time your therapist proposed to you, until you confirm it."),
        readers=_l("You and your therapist."),
        retention=_l("Until you confirm it, its time begins or someone else books it."),
        columns=(
            Column("participant_id", _l("Your account.")),
            Column("therapist_id", _l("The therapist who proposed it.")),
            Column("slot_id", _l("The proposed time.")),
            Column("language", _l("The language of your course.")),
        ),
    ),
)


def retention_values(settings: Settings) -> dict[str, int]:
    """Return this deployment's periods, to fill the placeholders of the retention texts."""
    return {
        "idle": settings.idle_timeout_minutes,
        "hours": settings.absolute_timeout_hours,
        "days": settings.appointment_retention_days,
        "message_days": settings.message_retention_days,
        "account_days": settings.account_retention_days,
        "note_days": settings.note_retention_days,
        "link_hours": settings.enrolment_link_hours,
    }


def declared_columns() -> dict[str, set[str]]:
    """Return ``{table: {column, ...}}`` as the inventory declares them."""
    return {table.name: {column.name for column in table.columns} for table in INVENTORY}
