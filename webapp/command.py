"""The ``stillroom`` command's entry point: prepare gevent, then run the CLI.

gevent's monkey-patching must happen before anything imports threading, sockets or
the modules built on them (Flask, stem, our chat hub's locks), or those would keep
blocking the whole process. That is why this module imports only ``signal`` before
it, and why ``stillroom/webapp/__init__.py`` is empty.
"""

import signal


def stop_by_ctrl_c(_number: int, _frame: object) -> None:
    """End the command with one calm line and exit status 1, wherever Ctrl-C lands.

    Python's own answer is a ``KeyboardInterrupt`` traceback from whatever was being
    imported or started (and gevent adds a bare timestamp line). ``serve`` hands
    Ctrl-C to its clean stop once both apps are serving.
    """
    raise SystemExit("Stopped by Ctrl-C.")


signal.signal(signal.SIGINT, stop_by_ctrl_c)  # first: importing what follows takes a while

from gevent import monkey  # noqa: E402 - only after the handler above

monkey.patch_all()


def main() -> None:
    """Run the ``stillroom`` command line (see :mod:`stillroom.webapp.cli`)."""
    from stillroom.webapp.cli import main as cli  # after patching, on purpose

    cli()
