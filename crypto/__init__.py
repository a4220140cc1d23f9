"""Stillroom's cryptography: passphrases, key derivation and key wrapping.

Everything here is built from PyNaCl and argon2-cffi; nothing is hand-made.
The package has no web framework imports so that it can be read, typed and
tested on its own.
"""
