"""The ``stillroom`` command's entry point: prepare gevent, then run the CLI.

gevent's monkey-patching must happen before anything imports threading, sockets or
the modules built on them (Flask, stem, our chat hub's locks), or those would keep
blocking the whole process. That is why this module imports nothing else at the top,
and why ``stillroom/webapp/__init__.py`` is empty.
"""

from gevent import monkey

monkey.patch_all()


def main() -> None:
    """Run the ``stillroom`` command line (see :mod:`stillroom.webapp.cli`)."""
    from stillroom.webapp.cli import main as cli  # after patching, on purpose

    cli()
