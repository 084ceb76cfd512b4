"""Where a scheduler keeps its state, read from the scheduler's own tables.

diffusers schedulers keep the latent in one of three spaces:

* ``vp``   x = a·x0 + b·n with a² + b² = 1        (DDIM, DDPM, PNDM, DPM-Solver, UniPC, DEIS, ...)
* ``ve``   x = x0 + σ·n, model input x/√(σ²+1)    (Euler, Euler-a, Heun, LMS, KDPM2, ...)
* ``flow`` x = (1-s)·x0 + s·n                     (FlowMatchEuler/Heun: SD3, FLUX)

Methods need x0 estimates and re-noising at arbitrary timesteps for any scheduler the model
ships; deriving both from the scheduler's tables (never a hard-coded schedule) is what makes them
scheduler-agnostic.

On an accelerator the scheduler's tables and the step's timestep live on the device, and reading
one value makes the host wait for everything queued before it. Values are therefore read from a
host copy of each table, made once per table; a timestep that is an element of the schedule is
located from its tensor metadata (storage and offset), so a step reads nothing from the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .devices import TensorKeyed
from .errors import InvalidArgumentError
from .lazy import lazy_module

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")

#: table -> its float64 CPU copy
_HOST_TABLES = TensorKeyed()


def on_accelerator(t) -> bool:
    """A tensor whose values the host can only read by waiting for the device."""
    return isinstance(t, torch.Tensor) and t.device.type not in ("cpu", "meta")


def host_table(table: Tensor) -> Tensor:
    """A float64 CPU copy of a scheduler table (timesteps, sigmas, alphas_cumprod), made once
    per table and again only after the table changes in place."""
    if not isinstance(table, torch.Tensor):  # a list or array
        return torch.as_tensor(table, dtype=torch.float64)
    host = _HOST_TABLES.get(table)
    if host is None:
        host = table.detach().to(device="cpu", dtype=torch.float64)
        _HOST_TABLES.put(table, host)
    return host


def schedule_position(t, table) -> int | None:
    """``i`` such that ``t`` is the view ``table[i]`` (or ``table[i:i+1]``), found from tensor
    metadata only; None when ``t`` is not an element view of the 1-D ``table``."""
    if not (isinstance(t, torch.Tensor) and isinstance(table, torch.Tensor)) or t.numel() != 1 or table.ndim != 1:
        return None
    if t.device != table.device or t.dtype != table.dtype:
        return None
    try:
        if t.untyped_storage().data_ptr() != table.untyped_storage().data_ptr():
            return None
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. functional wrappers)
        return None
    stride, offset = table.stride(0), t.storage_offset() - table.storage_offset()
    if stride <= 0 or offset < 0 or offset % stride:
        return None
    i = offset // stride
    return i if i < table.shape[0] else None


def timestep_value(t, table=None) -> float:
    """``t`` as a Python float. An accelerator-side element of ``table`` (a scheduler's
    ``timesteps``) is read from the table's host copy, without waiting for the device."""
    if isinstance(t, torch.Tensor):
        if on_accelerator(t):
            i = schedule_position(t, table)
            if i is not None:
                return float(host_table(table)[i])
        return float(t.detach().flatten()[0])
    return float(t)


@dataclass(frozen=True)
class NoiseSpace:
    scheduler: object
    kind: str  # "vp" | "ve" | "flow"

    @classmethod
    def of(cls, scheduler) -> "NoiseSpace":
        name = type(scheduler).__name__
        if name.startswith("FlowMatch") or scheduler.config.get("use_flow_sigmas", False):
            return cls(scheduler, "flow")
        if not hasattr(scheduler, "alphas_cumprod"):
            raise InvalidArgumentError(f"scheduler {name} has neither flow sigmas nor an alphas_cumprod table")
        init = float(getattr(scheduler, "init_noise_sigma", 1.0))
        # VE-state schedulers scale the first noise by sqrt(sigma_max^2 + 1) (> 1); VP ones by 1
        return cls(scheduler, "ve" if init > 1.0 + 1e-6 else "vp")

    # ---------------------------------------------------------------- noise level at t
    def _schedule_index(self, t: float) -> int | None:
        """The first position of timestep value ``t`` in the schedule, if it has a sigma there."""
        s = self.scheduler
        timesteps = getattr(s, "timesteps", None)
        sigmas = getattr(s, "sigmas", None)
        if not isinstance(timesteps, torch.Tensor) or sigmas is None or len(sigmas) < len(timesteps):
            return None
        hits = (host_table(timesteps) == t).nonzero()
        return int(hits[0]) if len(hits) else None

    def sigma(self, t: Tensor | float) -> float:
        """Noise level at timestep t: VE sigma (√((1-ᾱ)/ᾱ)) for vp/ve, s ∈ [0, 1] for flow."""
        s = self.scheduler
        tf = timestep_value(t, getattr(s, "timesteps", None))
        idx = self._schedule_index(tf)
        if idx is not None:
            return float(host_table(s.sigmas)[idx])
        if self.kind == "flow":
            return tf / s.config.num_train_timesteps
        ac = host_table(s.alphas_cumprod)
        # fractional timesteps (Euler with linear interpolation): interpolate the table
        lo = max(0, min(int(tf), len(ac) - 1))
        hi = min(lo + 1, len(ac) - 1)
        w = tf - lo
        a = float(ac[lo] * (1 - w) + ac[hi] * w)
        return ((1 - a) / a) ** 0.5

    def coefficients(self, t) -> tuple[float, float]:
        """(a, b) with state x = a·x0 + b·n at timestep t."""
        sig = self.sigma(t)
        if self.kind == "flow":
            return 1.0 - sig, sig
        if self.kind == "ve":
            return 1.0, sig
        a = (1.0 / (1.0 + sig * sig)) ** 0.5
        return a, sig * a

    def input_scale(self, t) -> float:
        """c_in: the factor scale_model_input applies to the state."""
        if self.kind == "ve":
            return (1.0 / (1.0 + self.sigma(t) ** 2)) ** 0.5
        return 1.0

    # ---------------------------------------------------------------- conversions
    def to_x0(self, x: Tensor, out: Tensor, t, prediction_type: str) -> Tensor:
        """x0 from the model output at state x (x in scheduler space, not the scaled model input)."""
        if self.kind == "flow" or prediction_type == "flow":
            _, s = self.coefficients(t)
            return x - s * out
        c = self.input_scale(t)
        a, b = self.coefficients(t)
        m, a, b = x * c, a * c, b * c  # model input in VP form: m = a·x0 + b·n with a² + b² = 1
        if prediction_type == "epsilon":
            return (m - b * out) / a
        if prediction_type == "v_prediction":
            return a * m - b * out
        if prediction_type == "sample":
            return out
        raise InvalidArgumentError(f"unknown prediction type {prediction_type!r}")

    def from_x0(self, x0: Tensor, noise: Tensor, t) -> Tensor:
        a, b = self.coefficients(t)
        return a * x0 + b * noise

    def noise_from_output(self, x: Tensor, out: Tensor, t, prediction_type: str) -> Tensor:
        """ε implied by the model output ``out`` at state ``x``."""
        a, b = self.coefficients(t)
        return (x - a * self.to_x0(x, out, t, prediction_type)) / b

    def output_from_noise(self, x: Tensor, eps: Tensor, t, prediction_type: str) -> Tensor:
        """The model output (ε, v, flow velocity or x0) that corresponds to noise ``eps`` at state ``x``."""
        a, b = self.coefficients(t)
        x0 = (x - b * eps) / a
        if self.kind == "flow" or prediction_type == "flow":
            return eps - x0
        if prediction_type == "epsilon":
            return eps
        if prediction_type == "v_prediction":
            c = self.input_scale(t)
            return (a * c) * eps - (b * c) * x0
        if prediction_type == "sample":
            return x0
        raise InvalidArgumentError(f"unknown prediction type {prediction_type!r}")

    def output_from_x0(self, x: Tensor, x0: Tensor, t, prediction_type: str) -> Tensor:
        """The model output whose clean estimate at state ``x`` is ``x0``."""
        a, b = self.coefficients(t)
        return self.output_from_noise(x, (x - a * x0) / b, t, prediction_type)

    def clip_x0(self, x0: Tensor) -> Tensor:
        """x0 as the scheduler's own step treats its estimate: dynamic thresholding when its config
        asks for it (``thresholding``), else clamped to ±``clip_sample_range`` (``clip_sample``, e.g.
        DDIM's and DDPM's default), else unchanged (Euler, LMS, PNDM, SD's shipped configs)."""
        cfg = self.scheduler.config
        if cfg.get("thresholding", False) and hasattr(self.scheduler, "_threshold_sample"):
            return self.scheduler._threshold_sample(x0)
        if cfg.get("clip_sample", False):
            r = float(cfg.get("clip_sample_range", 1.0))
            return x0.clamp(-r, r)
        return x0

    # ---------------------------------------------------------------- moving between noise levels
    def move(self, x: Tensor, x0: Tensor, t, t_to) -> Tensor:
        """Deterministic (DDIM, η = 0) move of state x at t to t_to, keeping x's implied noise.

        The noise part is (x - a·x0)/b at t; the result is a'·clip(x0) + b'·noise at t_to, with
        the scheduler's own clipping of its estimate (:meth:`clip_x0`; the noise part stays that of
        the unclipped x0, as DDIM's step keeps the model's ε). For DDIM this is exactly its step;
        for any other scheduler it is a proposal that does not touch the scheduler's own (possibly
        multistep) state.
        """
        a, b = self.coefficients(t)
        return self.from_x0(self.clip_x0(x0), (x - a * x0) / b, t_to)

    def renoise(self, x: Tensor, t_from, t_to, noise: Tensor) -> Tensor:
        """The forward process from the less noisy t_from to the noisier t_to in one exact jump:
        x_to = (a_to/a_from)·x + √(b_to² - (a_to·b_from/a_from)²)·noise (RePaint's re-noising,
        in whichever space the scheduler keeps its state)."""
        a0, b0 = self.coefficients(t_from)
        a1, b1 = self.coefficients(t_to)
        r = a1 / a0
        var = b1 * b1 - (r * b0) ** 2
        if var < -1e-9:
            raise InvalidArgumentError(f"cannot re-noise from timestep {float(t_from)} to the less noisy {float(t_to)}")
        return r * x + max(var, 0.0) ** 0.5 * noise
