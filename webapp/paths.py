"""Where the data folders of the installed package live.

``stillroom.locale`` and ``stillroom.static_nojs`` hold data and no ``__init__.py``
(a ``locale`` package would shadow the standard library's). ``find_spec`` finds them
both in a wheel and in an editable install, where ``importlib.resources`` does not.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path


def package_dir(name: str) -> Path:
    """Return the folder of the ``stillroom.<name>`` package.

    :raises LookupError: when the package is not installed.
    """
    spec = find_spec(f"stillroom.{name}")
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"stillroom.{name} is not installed; run the Quick start command")
    return Path(next(iter(spec.submodule_search_locations)))
