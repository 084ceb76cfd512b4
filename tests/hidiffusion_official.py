"""Import the official ``hidiffusion`` package (test-only oracle) on any diffusers version.

hidiffusion 0.1.10 imports ``diffusers.pipelines.controlnet.multicontrolnet``, removed in diffusers
0.41; a stand-in module providing ``MultiControlNetModel`` lets it import (spec §11). The package
is found on ``sys.path`` (``pip install --no-deps hidiffusion==0.1.10``) or in the folder named by
``ANYSIZE_HIDIFFUSION_PATH`` (e.g. a ``pip install --no-deps --target DIR hidiffusion==0.1.10``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

OFFICIAL_NAMES = {
    "sd1": "runwayml/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1-base",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}


def load_official():
    """The ``hidiffusion`` module, or None when it is not installed."""
    extra = os.environ.get("ANYSIZE_HIDIFFUSION_PATH")
    if extra and os.path.isdir(extra) and extra not in sys.path:
        sys.path.append(extra)
    if importlib.util.find_spec("hidiffusion") is None:
        return None
    name = "diffusers.pipelines.controlnet.multicontrolnet"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        stand_in = types.ModuleType(name)
        stand_in.MultiControlNetModel = MultiControlNetModel
        sys.modules[name] = stand_in
    return importlib.import_module("hidiffusion")
