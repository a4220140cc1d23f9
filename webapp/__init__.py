"""The Flask apps of Stillroom, their store, languages and security.

The factories live in :mod:`stillroom.webapp.app`. This file stays empty on purpose:
the ``stillroom`` command (:mod:`stillroom.webapp.command`) must patch the standard
library for gevent before Flask, threading or sockets are imported, and importing any
``stillroom.webapp`` module runs this file first.
"""
