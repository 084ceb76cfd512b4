"""Network patches: reversible changes to a model's network while a context is open.

    import anysize
    with anysize.patch(pipe, "hidiffusion"):     # a stock diffusers pipeline, or an anysize adapter
        image = pipe("a castle", height=2048, width=2048).images[0]

A patch changes the network through attention processors, hooks and instance attributes only,
and leaving the context restores bit-identical behaviour. Patches know no timestep loop: they
read the step position from their ``clock`` (set by a driving method) or find it themselves.
"""

from __future__ import annotations

from typing import Any

from ..errors import UnknownChoiceError
from .hidiffusion import HiDiffusionPatch, HiDiffusionSettings
from .npa import NPAPatch, NPASettings


def _hidiffusion(target, **options) -> HiDiffusionPatch:
    return HiDiffusionPatch(target, **options)


def _raunet(target, **options) -> HiDiffusionPatch:
    return HiDiffusionPatch(target, **{"msw_msa": False, **options})


def _msw_msa(target, **options) -> HiDiffusionPatch:
    return HiDiffusionPatch(target, **{"raunet": False, **options})


def _npa(target, **options) -> NPAPatch:
    return NPAPatch(target, **options)


#: patch name -> factory(target, **options)
PATCHES = {"hidiffusion": _hidiffusion, "raunet": _raunet, "msw_msa": _msw_msa, "npa": _npa}


def patch(target, name: str, **options: Any) -> HiDiffusionPatch | NPAPatch:
    """A context manager that patches the network of ``target`` (a diffusers pipeline or an
    anysize adapter) with patch ``name`` (one of :data:`PATCHES`) while it is open.

    ``"hidiffusion"`` is RAU-Net + MSW-MSA; ``"raunet"`` and ``"msw_msa"`` are either half. Options
    are the fields of :class:`~anysize.patches.hidiffusion.HiDiffusionSettings` plus ``seed``.
    ``"npa"`` is ScaleDiff's Neighborhood Patch Attention (U-Nets, SD3, FLUX), options the fields
    of :class:`~anysize.patches.npa.NPASettings` plus ``seed``.
    Bad names, options or models raise :class:`~anysize.errors.InvalidArgumentError` (an
    unknown name :class:`~anysize.errors.UnknownChoiceError`) before anything is changed.
    """
    if name not in PATCHES:
        raise UnknownChoiceError("patch", name, PATCHES)
    return PATCHES[name](target, **options)


__all__ = ["PATCHES", "HiDiffusionPatch", "HiDiffusionSettings", "NPAPatch", "NPASettings", "patch"]
