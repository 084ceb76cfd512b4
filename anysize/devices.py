"""Moving per-step host data (noise from CPU generators, index plans, weights) to the device.

A plain ``host_tensor.to("cuda")`` copies from ordinary (pageable) host memory and then makes the
host wait until the device has finished every kernel queued before the copy; once per step or per
window call that leaves the GPU idle while the host catches up. With ``non_blocking=True`` the
driver stages the bytes at once and queues the copy behind the running kernels, so the source may
be freed or reused right after the call (the copy reads the staged bytes). On a CPU it is a no-op.
``anysize.testing.syncs`` finds the places that still wait.

Also here: what a device's out-of-memory error looks like, and giving its memory back after one.
"""

from __future__ import annotations

import gc
import weakref
from typing import TYPE_CHECKING

from .lazy import lazy_module

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")


def upload(x: Tensor, device, dtype: torch.dtype | None = None) -> Tensor:
    """``x`` on ``device`` (and in ``dtype``), copied without waiting for queued device work."""
    return x.to(device=device, dtype=dtype, non_blocking=True)


class TensorKeyed:
    """A cache keyed by tensor identity: an entry holds until its tensor dies or is changed in
    place (its version counter moves), so a value derived from a tensor's data is computed, and
    its data read, once per tensor instead of once per use. ``versioned=False`` keeps entries
    across in-place changes (for facts about a tensor that no write changes)."""

    def __init__(self, versioned: bool = True):
        self._entries: dict[int, tuple[weakref.ref, int, object]] = {}
        self.versioned = versioned

    def _version(self, t: Tensor) -> int:
        if not self.versioned:
            return 0
        try:
            return t._version
        except RuntimeError:  # an inference-mode tensor keeps no version counter
            return -1

    def get(self, t: Tensor, default=None):
        hit = self._entries.get(id(t))
        if hit is None or hit[0]() is not t or hit[1] != self._version(t):
            return default
        return hit[2]

    def __contains__(self, t) -> bool:
        return isinstance(t, torch.Tensor) and self.get(t, _MISSING) is not _MISSING

    def put(self, t: Tensor, value) -> None:
        key = id(t)

        def forget(ref, key=key):
            if self._entries.get(key, (None,))[0] is ref:
                del self._entries[key]

        self._entries[key] = (weakref.ref(t, forget), self._version(t), value)


_MISSING = object()


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocator's out-of-memory error (CUDA's, the CPU's plain RuntimeError, or
    :class:`~anysize.errors.OutOfMemoryError`, which anysize raises in their place)."""
    from .errors import OutOfMemoryError

    if isinstance(e, (torch.OutOfMemoryError, OutOfMemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_memory(device) -> None:
    """Collect Python's garbage, then give the CUDA allocator's cached blocks back. Call it after the
    failed run's exception is gone: its traceback holds the frames, and so the tensors, of that run."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
