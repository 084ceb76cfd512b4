"""anysize: any pretrained text-to-image diffusion model, at any size and aspect ratio.

The public names are imported on first use (PEP 562): ``import anysize`` stays fast, and the
command line can answer ``--help`` without importing torch and diffusers, which takes seconds.
"""

from importlib import import_module as _import_module
from importlib.util import find_spec as _find_spec

__version__ = "0.1.0"

from .errors import AnysizeError  # noqa: E402  (torch-free)

#: public name -> the submodule that defines it
_LAZY = {
    "Control": "api",
    "GenerationResult": "api",
    "batch": "batching",
    "generate": "api",
    "load": "api",
    "Lora": "lora",
    "upscale": "api",
    "METHODS": "methods",
    "patch": "api",
    "Region": "regions",
}

__all__ = ["AnysizeError", "Control", "GenerationResult", "Lora", "METHODS", "Region", "batch", "generate", "load", "patch", "upscale",
           "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if not name.startswith("__") and _find_spec(f"{__name__}.{name}") is not None:
        # `import anysize; anysize.methods.create(...)` worked while this package imported api, and
        # with it most submodules, eagerly: keep it working
        return _import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
