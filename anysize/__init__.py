"""anysize: any pretrained text-to-image diffusion model, at any size and aspect ratio."""

__version__ = "0.1.0"

from .api import GenerationResult, generate, load, patch, upscale  # noqa: E402
from .errors import AnysizeError  # noqa: E402
from .methods import METHODS  # noqa: E402

__all__ = ["AnysizeError", "GenerationResult", "METHODS", "generate", "load", "patch", "upscale", "__version__"]
