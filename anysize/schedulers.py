"""Scheduler choice by short name, built from the model's own scheduler config.

Every name maps to a diffusers scheduler class plus config overrides; the model's shipped config
(beta schedule, prediction type, shift, ...) is kept, so a scheduler swap never changes what the
model was trained with.
"""

from __future__ import annotations

import inspect

from .errors import InvalidArgumentError, check_choice

# name -> (class name, config overrides, state kind the model needs: "diffusion" or "flow")
SCHEDULERS: dict[str, tuple[str, dict, str]] = {
    "ddim": ("DDIMScheduler", {}, "diffusion"),
    "ddpm": ("DDPMScheduler", {}, "diffusion"),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, "diffusion"),
    "euler": ("EulerDiscreteScheduler", {}, "diffusion"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "diffusion"),
    "heun": ("HeunDiscreteScheduler", {}, "diffusion"),
    "lms": ("LMSDiscreteScheduler", {}, "diffusion"),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "diffusion"),
    "dpm++2m_karras": (
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}, "diffusion"
    ),
    "unipc": ("UniPCMultistepScheduler", {}, "diffusion"),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}, "flow"),
    "flow_heun": ("FlowMatchHeunDiscreteScheduler", {}, "flow"),
}


def scheduler_names(kind: str | None = None) -> list[str]:
    return [n for n, (_, _, k) in SCHEDULERS.items() if kind is None or k == kind]


def make_scheduler(adapter, name: str | None = None):
    """A fresh scheduler for one generation: the model's own (name None) or the named one.

    Always a new object, so a generation never shares step state with the pipeline or another run.
    """
    base = adapter.scheduler
    if name is None or name == "default":
        return type(base).from_config(base.config)
    check_choice("scheduler", name, SCHEDULERS)
    cls_name, overrides, kind = SCHEDULERS[name]
    if kind != adapter.scheduler_kind:
        raise InvalidArgumentError(
            f"scheduler {name!r} does not fit a {adapter.family} model ({adapter.scheduler_kind}); "
            f"choose one of: {', '.join(scheduler_names(adapter.scheduler_kind))}"
        )
    import diffusers  # here, not at the top: the names serve --help, which must not wait for diffusers

    cls = getattr(diffusers, cls_name)
    if base.config.get("use_dynamic_shifting", False) and "mu" not in inspect.signature(cls.set_timesteps).parameters:
        # FLUX-style models shift the schedule by the image size (mu); a scheduler that takes no mu
        # would run another schedule than the model's, at every size but one
        able = [n for n in scheduler_names(kind) if "mu" in inspect.signature(
            getattr(diffusers, SCHEDULERS[n][0]).set_timesteps).parameters]
        raise InvalidArgumentError(
            f"scheduler {name!r} cannot follow this {adapter.family} model's size-dependent schedule shift "
            f"(use_dynamic_shifting); choose one of: {', '.join(able)}"
        )
    try:
        return cls.from_config(base.config, **overrides)
    except ImportError as e:  # diffusers' placeholder classes for missing optional backends (scipy for lms)
        raise InvalidArgumentError(f"scheduler {name!r} needs a missing package: {str(e).strip()}") from e


def scheduler_name(scheduler) -> str:
    """The short name of a scheduler instance when one matches, else its class name (for metadata)."""
    cls = type(scheduler).__name__
    for name, (c, overrides, _) in SCHEDULERS.items():
        if c == cls and all(scheduler.config.get(k) == v for k, v in overrides.items()):
            if name == "dpm++2m" and scheduler.config.get("use_karras_sigmas"):
                continue
            return name
    return cls
