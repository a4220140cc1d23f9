"""Tor through stem: launch or attach, publish the onion service, report status.

No web framework here: ``stillroom serve`` calls :func:`start` and
:func:`stillroom.onion.service.publish`, and every Tor failure surfaces as one of
the exceptions in :mod:`stillroom.onion.errors`.
"""
