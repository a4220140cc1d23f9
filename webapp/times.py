"""Time zones: everything is stored in UTC and shown in the reader's own zone.

Participants choose one of four broad bands rather than a city, so the stored
choice says as little as possible about where they live. Every European band
follows the same daylight-saving rules, so one representative zone per band
gives the right local time everywhere in it.
"""

from __future__ import annotations

import datetime
import functools
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from babel.dates import format_date, format_time
from flask_babel import lazy_gettext as _l

#: The participant's choices: a representative zone and how the band is named.
PARTICIPANT_ZONES = {
    "Europe/Lisbon": _l("Western Europe (Lisbon, London, Dublin)"),
    "Europe/Berlin": _l("Central Europe (Berlin, Madrid, Prague, Vienna)"),
    "Europe/Athens": _l("Eastern Europe (Athens, Helsinki, Bucharest)"),
    "UTC": _l("UTC (no daylight saving)"),
}

#: The band a new account starts with, by the language it was created in.
DEFAULT_ZONE = {
    "en": "Europe/Lisbon",
    "pt": "Europe/Lisbon",
    "de": "Europe/Berlin",
    "cs": "Europe/Berlin",
    "es": "Europe/Berlin",
}

#: Babel locales for dates: European conventions (a 24-hour clock, day before month).
DATE_LOCALES = {"en": "en_GB", "de": "de_DE", "cs": "cs_CZ", "pt": "pt_PT", "es": "es_ES"}


class LocalTimeError(ValueError):
    """A wall-clock time that does not exist, or exists twice, on that day in that zone."""


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())  # walks the zone files: once per process


def is_zone(name: str) -> bool:
    """Return whether ``name`` is an IANA time zone this machine knows."""
    return name in _known_zones()


def zone(name: str) -> ZoneInfo:
    """Return the zone called ``name``.

    :raises ZoneInfoNotFoundError: for an unknown name.
    """
    if not is_zone(name):
        raise ZoneInfoNotFoundError(name)
    return ZoneInfo(name)


def to_utc(day: datetime.date, clock: datetime.time, zone_name: str) -> int:
    """Return the UTC timestamp of the wall-clock time ``clock`` on ``day`` in a zone.

    :raises LocalTimeError: when the clocks skip that time (spring) or pass it twice
        (autumn); guessing either way would put an appointment at the wrong hour.
    """
    tz = zone(zone_name)
    naive = datetime.datetime.combine(day, clock)
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset():
        raise LocalTimeError(naive.isoformat())
    back = first.astimezone(datetime.UTC).astimezone(tz).replace(tzinfo=None)
    if back != naive:
        raise LocalTimeError(naive.isoformat())
    return int(first.timestamp())


def local(timestamp: int, zone_name: str) -> datetime.datetime:
    """Return the UTC ``timestamp`` as an aware time in the zone ``zone_name``."""
    return datetime.datetime.fromtimestamp(timestamp, ZoneInfo(zone_name))


def format_day(timestamp: int, zone_name: str, language: str) -> str:
    """Return the day of ``timestamp`` in the reader's zone, written out in full."""
    return format_date(local(timestamp, zone_name).date(), "full", locale=DATE_LOCALES[language])


def format_clock(timestamp: int, zone_name: str, language: str) -> str:
    """Return the wall-clock time of ``timestamp`` in the reader's zone (24-hour)."""
    return format_time(local(timestamp, zone_name), "HH:mm", locale=DATE_LOCALES[language])


def format_when(starts_at: int, ends_at: int, zone_name: str, language: str) -> str:
    """Return "day, HH:MM–HH:MM" for an appointment in the reader's zone.

    When it ends on the next day, that day is written out too.
    """
    day = format_day(starts_at, zone_name, language)
    start = f"{day}, {format_clock(starts_at, zone_name, language)}"
    end = format_clock(ends_at, zone_name, language)
    if local(starts_at, zone_name).date() != local(ends_at, zone_name).date():
        end = f"{format_day(ends_at, zone_name, language)}, {end}"
    return f"{start}–{end}"
