"""Heavy modules imported when first used, so listing methods and their options never pays for torch.

    from ..lazy import lazy_module
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")

The first attribute read imports the module for real; every attribute read is then cached on the
stand-in, so later reads are plain lookups. Names a module needs only in annotations come from the
real module under ``typing.TYPE_CHECKING``. ``anysize --help`` and ``anysize methods`` import the
method registry and the option declarations through these stand-ins and answer without importing
torch (a second on a small machine).
"""

from __future__ import annotations

import importlib
import types


class LazyModule(types.ModuleType):
    """A stand-in for module ``name`` that imports it on the first attribute read."""

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__") and attr != "__version__":
            raise AttributeError(attr)  # copy/pickle/inspect probing a stand-in: nothing to import for it
        value = getattr(importlib.import_module(self.__name__), attr)
        setattr(self, attr, value)  # later reads skip this method
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self.__name__!r}>"


def lazy_module(name: str) -> types.ModuleType:
    """The module itself when it is already imported, else a :class:`LazyModule` stand-in."""
    import sys

    loaded = sys.modules.get(name)
    return loaded if loaded is not None else LazyModule(name)
