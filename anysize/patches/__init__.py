"""Network patches: reversible changes to a model's network while a context is open.

    import anysize
    with anysize.patch(pipe, "hidiffusion"):     # a stock diffusers pipeline, or an anysize adapter
        image = pipe("a castle", height=2048, width=2048).images[0]

A patch changes the network of an adapter through attention processors, hooks and instance
attributes only, and leaving the context restores bit-identical behaviour. Patches know no
timestep loop: one that changes the network by step is handed the loop's step position
(:mod:`anysize.patches.steps`). :func:`anysize.patch` adapts a stock pipeline once and wires it.
"""

from __future__ import annotations

from .hidiffusion import HiDiffusionPatch, HiDiffusionSettings
from .npa import NPAPatch, NPASettings
from .steps import PipelineStepTracker, StepPosition, StepSource


def _hidiffusion(adapter, position, **options) -> HiDiffusionPatch:
    return HiDiffusionPatch(adapter, position=position, **options)


def _raunet(adapter, position, **options) -> HiDiffusionPatch:
    return HiDiffusionPatch(adapter, position=position, **{"msw_msa": False, **options})


def _msw_msa(adapter, position, **options) -> HiDiffusionPatch:
    return HiDiffusionPatch(adapter, position=position, **{"raunet": False, **options})


def _npa(adapter, position, **options) -> NPAPatch:
    return NPAPatch(adapter, **options)  # attention by neighbourhood: the same at every step


#: patch name -> factory(adapter, step position source, **options)
PATCHES = {"hidiffusion": _hidiffusion, "raunet": _raunet, "msw_msa": _msw_msa, "npa": _npa}

__all__ = [
    "PATCHES", "HiDiffusionPatch", "HiDiffusionSettings", "NPAPatch", "NPASettings", "PipelineStepTracker",
    "StepPosition", "StepSource",
]
