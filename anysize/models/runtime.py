"""How an adapter runs its denoiser: eagerly or through ``torch.compile``, and with which SDPA kernel.

Both are opt-in settings of one adapter (:meth:`~anysize.models.base.ModelAdapter.set_runtime`);
the default (eager, torch's own SDPA choice) runs exactly the code it ran before they existed.

* ``compile``: the network call of ``adapter.predict`` goes through ``torch.compile`` with
  ``dynamic=False``, so each distinct input shape (window size, batch) is traced and compiled once
  and then reused for every step and every tile of that shape. Dynamo's guards see what the
  network looks like at each call: an open patch (HiDiffusion, NPA: their processors, hooks and
  replaced forwards), a LoRA (peft's injected layers) or a different step phase of a patch each
  make a new graph instead of a wrong one. A run with a few window shapes and patch phases needs
  more graphs than dynamo keeps by default (8 per code object, after which it silently runs
  eagerly), so turning compile on raises that limit to :data:`RECOMPILE_LIMIT`.
* ``sdpa``: ``torch.nn.attention.sdpa_kernel`` restricts scaled-dot-product attention to one
  kernel around every network call (the ControlNets' included); ``auto`` leaves torch's choice.
  Whether a kernel runs on the adapter's device and dtype is checked once, on a probe call, when
  the setting is made.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InvalidArgumentError, UnknownChoiceError
from ..lazy import lazy_module

torch = lazy_module("torch")

#: --sdpa word -> the ``torch.nn.attention.SDPBackend`` member (auto: no restriction)
SDPA_BACKENDS: dict[str, str | None] = {
    "auto": None,
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}

#: the torch.compile backend used unless a caller names another (tests count graphs with their own)
DEFAULT_COMPILE_BACKEND = "inductor"

#: dynamo's per-code-object graph limit while compile is on (its default, 8, is below what a
#: multi-stage run with edge tiles and a patch's phases needs; past the limit dynamo runs eagerly)
RECOMPILE_LIMIT = 256


@dataclass(frozen=True)
class Runtime:
    """The runtime settings of one adapter; ``Runtime()`` is the default (eager, auto)."""

    compile: bool = False
    sdpa: str = "auto"
    #: the torch.compile backend: a registered name or a callable ``(graph_module, example_inputs)``
    compile_backend: Any = DEFAULT_COMPILE_BACKEND

    @property
    def is_default(self) -> bool:
        return not self.compile and self.sdpa == "auto"

    def describe(self) -> dict[str, Any]:
        """What a result's config records: the settings, the backend only when compiled."""
        out: dict[str, Any] = {"compile": self.compile, "sdpa": self.sdpa}
        if self.compile:
            b = self.compile_backend
            out["compile_backend"] = b if isinstance(b, str) else getattr(b, "__name__", type(b).__name__)
        return out


def check_sdpa(name: str) -> str:
    if not isinstance(name, str) or name not in SDPA_BACKENDS:
        raise UnknownChoiceError("sdpa backend", name, SDPA_BACKENDS, ordered=True)
    return name


def check_compile(value) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"compile must be True or False, got {value!r}")
    return value


def attention(sdpa: str):
    """The context that restricts SDPA to the kernel ``sdpa`` names (a no-op for ``auto``)."""
    member = SDPA_BACKENDS[sdpa]
    if member is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, member)])


def check_sdpa_runs(sdpa: str, device, dtype) -> None:
    """Refuse a kernel that cannot run on ``device`` in ``dtype`` (flash on a GPU without it,
    efficient or cudnn on a CPU), with torch's reason, before any run starts. The probe has the
    layout of a diffusers attention call (batch, heads, tokens, head dim 64)."""
    if SDPA_BACKENDS[sdpa] is None:
        return
    q = torch.zeros(1, 2, 16, 64, device=device, dtype=dtype)
    try:
        with attention(sdpa), torch.no_grad():
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
    except RuntimeError as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        usable = [n for n in SDPA_BACKENDS if n != sdpa and _runs(n, q)]
        raise InvalidArgumentError(
            f"sdpa backend {sdpa!r} cannot run on {torch.device(device)} in {str(dtype).replace('torch.', '')} "
            f"({why}); usable here: {', '.join(usable)}"
        ) from None


def _runs(sdpa: str, q) -> bool:
    try:
        with attention(sdpa), torch.no_grad():
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
        return True
    except RuntimeError:
        return False


def _call_network(network, sdpa: str, args: tuple, kwargs: dict):
    # the kernel choice is entered inside the compiled function, so it is part of the traced graph
    # (and of its guards), not a setting that a graph traced under another choice would ignore
    with attention(sdpa):
        return network(*args, **kwargs)


def compiled_caller(runtime: Runtime) -> Callable:
    """``call(network, sdpa, args, kwargs)`` through ``torch.compile`` with ``runtime``'s backend."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
    return torch.compile(_call_network, backend=runtime.compile_backend, dynamic=False)


