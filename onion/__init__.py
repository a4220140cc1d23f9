"""Tor through stem: launch or attach, publish the onion service, report status.

The onion service arrives with its own issue; until then ``stillroom serve --no-tor``
serves the participant app on 127.0.0.1 for development.
"""
