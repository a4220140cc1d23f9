"""What each open feed frame last showed, so that an unchanged reload costs no decryption.

Kept in memory only, like the hub, and never written anywhere. An entry belongs to one
session (its token hash), one appointment and one language, and holds the ETag of the
feed page that session was last sent, with what that page depended on: the pair's
news counter in the hub, the appointment as it was, and the moment until which nothing
time-dependent on the page (the status line, the refresh interval) can change.

A reload whose ``If-None-Match`` still names that ETag, while all of these hold, is
answered ``304`` without reading or opening a single message. The session check is
not part of this: the gate has already loaded the session and the view has checked
the appointment is this user's, so an ended session never reaches it, and another
session has entries of its own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from stillroom.webapp.chat import ChatAppointment

#: At most this long between full checks of a feed, whatever it shows: what no news
#: announces (a change of time zone, a key reset, a day's turn) shows within this time.
#: Longer than a held reload (about a minute), so that an idle chat's reloads stay cheap.
LONGEST_SECONDS = 300
#: Entries beyond this many are dropped all at once (each is about 300 bytes).
MOST_ENTRIES = 20_000


@dataclass(frozen=True)
class Shown:
    """The feed page one session was last sent, and what it depended on."""

    etag: str
    version: int
    appointment: ChatAppointment
    until: int


class FeedCache:
    """The last feed page of each session and appointment, by language."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shown: dict[tuple[bytes, str, str], Shown] = {}

    def remember(self, key: tuple[bytes, str, str], shown: Shown) -> None:
        """Note what was just sent to ``key`` (session hash, appointment id, language)."""
        with self._lock:
            if len(self._shown) >= MOST_ENTRIES:
                self._shown.clear()  # the next reload of each just renders again
            self._shown[key] = shown

    def unchanged(
        self,
        key: tuple[bytes, str, str],
        if_none_match: object,
        version: int,
        appointment: ChatAppointment,
        moment: int,
    ) -> str | None:
        """Return the ETag the browser holds if its page is still current, else ``None``."""
        with self._lock:
            shown = self._shown.get(key)
        if (
            shown is None
            or shown.etag not in if_none_match  # type: ignore[operator]
            or shown.version != version
            or shown.appointment != appointment
            or moment >= shown.until
        ):
            return None
        return shown.etag


#: One per process, beside the hub whose counters it compares.
FEEDS = FeedCache()
