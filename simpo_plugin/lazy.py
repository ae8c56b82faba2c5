"""Names a package offers without importing them until first use (PEP 562's module ``__getattr__``).

Neutral on purpose (only ``importlib``): each layer's ``__init__`` keeps a table ``_LAZY`` of name -> submodule
and sets ``__getattr__ = lazy_attributes(__name__, _LAZY)``, so importing the package stays cheap (torch and the
host load with the first heavy name used) and tests/test_layers.py reads the offered names from the table.
"""

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_attributes(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``table[name]`` is the relative submodule that defines ``name``.

    Raises:
        AttributeError: for a name not in ``table``, as a module without it would.
    """

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(import_module(table[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
