"""Methods, one file each, all registered by name in :mod:`anysize.methods.registry`."""

from .base import Method, MethodOptions
from .registry import METHODS, create, get, names, register
from . import direct  # noqa: F401  (registers)
from . import multidiffusion  # noqa: F401  (registers)
from . import fstd  # noqa: F401  (registers)
from . import hidiffusion  # noqa: F401  (registers)
from . import elastic  # noqa: F401  (registers)
from . import scalediff  # noqa: F401  (registers)
from . import asd  # noqa: F401  (registers)
from . import demofusion  # noqa: F401  (registers)
from . import imax  # noqa: F401  (registers)
from . import rectifiedhr  # noqa: F401  (registers)

__all__ = ["METHODS", "Method", "MethodOptions", "create", "get", "names", "register"]
