"""One exception per way Tor can fail, each telling the operator what to do.

``str(error)`` is a single sentence with the fix. When ``stillroom serve`` cannot
start, it prints it and exits with status 1; once it is serving, it prints it and
keeps trying to bring the onion service back.
"""

from __future__ import annotations


class TorError(Exception):
    """Base class: something about Tor stops the onion service from starting."""


class TorMissingError(TorError):
    """The tor binary is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "tor is not installed: run 'sudo apt-get install tor' (or the Quick start "
            "command), then start Stillroom again."
        )


class TorTooOldError(TorError):
    """The tor found is too old for the proof-of-work defences."""

    def __init__(self, found: str, needed: str) -> None:
        super().__init__(
            f"tor {found} is too old: Stillroom needs {needed} or newer for its "
            "proof-of-work defences; install a current tor from Debian backports or the "
            "Tor Project's package repository."
        )


class ControlUnreachableError(TorError):
    """Nothing answers on the configured control port or socket."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(
            f"cannot reach tor's control interface at {target} ({reason}): check that tor "
            "runs and that STILLROOM_TOR_CONTROL names its ControlPort or ControlSocket."
        )


class ControlAuthError(TorError):
    """Tor refused the control authentication."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(
            f"tor at {target} refused authentication ({reason}): set "
            "STILLROOM_TOR_CONTROL_PASSWORD to its HashedControlPassword secret, or let "
            "this user read tor's cookie file (add it to the debian-tor group)."
        )


class BootstrapTimeoutError(TorError):
    """Tor did not finish bootstrapping in time."""

    def __init__(self, seconds: int, last: str) -> None:
        super().__init__(
            f"tor did not finish bootstrapping within {seconds} s (last: {last}): check "
            "the machine's network connection and clock, or raise "
            "STILLROOM_TOR_BOOTSTRAP_TIMEOUT."
        )


class PublishTimeoutError(TorError):
    """The onion service descriptor was not uploaded in time."""

    def __init__(self, seconds: int) -> None:
        super().__init__(
            f"the onion service descriptor was not uploaded within {seconds} s: check that "
            "tor can reach the network, or raise STILLROOM_TOR_PUBLISH_TIMEOUT."
        )


class PortInUseError(TorError):
    """One of the apps' ports on 127.0.0.1 is taken by another program."""

    def __init__(self, port: int, setting: str) -> None:
        super().__init__(
            f"port {port} on 127.0.0.1 is already in use: stop the program that holds it "
            f"(see 'ss -ltnp'), or set {setting} to a free port."
        )


class TorRefusedError(TorError):
    """Tor answered a command with an error the operator has to look at."""

    def __init__(self, command: str, answer: str) -> None:
        super().__init__(
            f"tor refused {command}: {answer}; check the STILLROOM_POW_* and "
            "STILLROOM_ONION_MAX_STREAMS settings and the files in onion-clients/."
        )


class TorConfigError(TorError):
    """The extra torrc lines cannot be used: unreadable, invalid, or weakening the service."""

    def __init__(self, problem: str, attached: bool = False) -> None:
        remedy = (
            "fix the torrc of the tor that STILLROOM_TOR_CONTROL names"
            if attached
            else "fix or remove the lines in STILLROOM_TOR_EXTRA_CONFIG (Stillroom sets "
            "SocksPort, SafeLogging and the control options itself)"
        )
        super().__init__(f"the tor configuration cannot be used ({problem}): {remedy}.")


class TorLostError(TorError):
    """Tor stopped or closed the control connection while Stillroom was using it."""

    def __init__(self) -> None:
        super().__init__(
            "tor stopped unexpectedly, so the onion service is down: check the lines "
            "marked 'tor:' above and the system journal."
        )


class OnionKeyError(TorError):
    """The stored onion key is empty or damaged, or gone while the service runs."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"the onion key in {path} is missing, empty or damaged: restore it from your "
            "encrypted backup to keep the address, or delete it and start Stillroom again "
            "to start over with a new address."
        )


class TorStartError(TorError):
    """Tor exited while starting up."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"tor could not start ({reason}): check the lines in STILLROOM_TOR_EXTRA_CONFIG, "
            "that the data directory is writable, and that no other tor uses it."
        )
