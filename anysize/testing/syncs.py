"""Find, on a CPU, where a GPU run would make the host wait for the device.

On an accelerator two things stop the host until the device has finished all the work queued
before them:

* a **read** of a device value on the host: ``float(t)``, ``int(t)``, ``bool(mask.any())``,
  ``.item()``, ``.tolist()``, ``.cpu()`` / ``.to("cpu")``, ``nonzero``, ``unique``, ``equal``,
  boolean-mask indexing;
* a **blocking upload**: ``host_tensor.to(device)`` without ``non_blocking=True`` (PyTorch
  synchronises the stream after a copy from pageable host memory).

A sampling loop that does either at every step leaves the GPU idle while the host catches up.
:class:`HostSyncAudit` finds such places while everything runs on a CPU: it follows which tensors
*would* live on the device -- the roots it is given (latents, timesteps) and everything computed
from them, plus tensors created with an explicit ``device=`` that is a :class:`torch.device` (the
literal string ``"cpu"`` marks data meant for the host) -- and records every read of one and every
blocking upload of a host tensor to a ``torch.device``, with the code location. It also answers
:func:`anysize.noise.on_accelerator` for those tensors, so code that takes a different path on an
accelerator takes it here too.
"""

from __future__ import annotations

import collections
import contextlib
import traceback
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ..devices import TensorKeyed

#: functions whose result is a host value computed from their tensor argument
_READS = {
    Tensor.__bool__, Tensor.__float__, Tensor.__int__, Tensor.__index__, Tensor.item, Tensor.tolist,
    Tensor.cpu, Tensor.numpy, Tensor.nonzero, torch.nonzero, torch.equal, Tensor.equal, torch.unique,
    Tensor.unique, torch.masked_select, Tensor.masked_select, Tensor.__format__, Tensor.__repr__,
}
_FACTORIES_WITH_DEVICE = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.linspace, torch.tensor,
    torch.as_tensor, torch.randn, torch.rand, torch.randint, torch.randperm, torch.eye,
}


@dataclass(frozen=True)
class SyncEvent:
    kind: str  # "read" | "upload"
    op: str
    where: str  # innermost frames of the audited package, innermost first


class HostSyncAudit(TorchFunctionMode):
    """A torch function mode that records would-be host/device synchronisations (module doc).

    ``roots`` are the tensors that live on the device; ``ignore`` are path fragments of code whose
    own synchronisations are not recorded (e.g. diffusers' schedulers, which every pipeline runs);
    ``package`` is the path fragment whose frames are shown in :attr:`SyncEvent.where`.
    """

    def __init__(self, roots: Iterable[Tensor] = (), *, ignore: Iterable[str] = ("diffusers/schedulers/",),
                 package: str = "/anysize/"):
        super().__init__()
        self._device = TensorKeyed(versioned=False)  # written in place, still on the device
        self.ignore = tuple(ignore)
        self.package = package
        self.events: list[SyncEvent] = []
        for t in roots:
            self.mark(t)

    # ------------------------------------------------------------------ which tensors are "on the device"
    def mark(self, t: Tensor) -> None:
        self._device.put(t, True)

    def is_device(self, t) -> bool:
        return t in self._device

    # ------------------------------------------------------------------ the mode
    def __enter__(self):
        from .. import noise

        self._saved_on_accelerator = getattr(noise, "on_accelerator", None)
        noise.on_accelerator = self.is_device
        return super().__enter__()

    def __exit__(self, *exc):
        from .. import noise

        if self._saved_on_accelerator is None:
            del noise.on_accelerator
        else:
            noise.on_accelerator = self._saved_on_accelerator
        return super().__exit__(*exc)

    def _record(self, kind: str, func) -> None:
        stack = [f for f in traceback.extract_stack() if f.filename != __file__]
        # the code that asked for the value: the innermost frame outside torch itself
        caller = next((f for f in reversed(stack) if "/torch/" not in f.filename.replace("\\", "/")), None)
        if caller is not None and any(frag in caller.filename.replace("\\", "/") for frag in self.ignore):
            return
        ours = [f for f in stack if self.package in f.filename.replace("\\", "/")]
        where = " <- ".join(f"{f.filename.replace(chr(92), '/').rsplit(self.package, 1)[-1]}:{f.lineno} {f.name}"
                            for f in reversed(ours[-3:]))
        self.events.append(SyncEvent(kind, getattr(func, "__name__", str(func)), where))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, Tensor)]
        on_device = any(self.is_device(a) for a in tensors)
        out = func(*args, **kwargs)
        target = _target_device(func, args, kwargs)
        if func in _READS or (func is Tensor.__getitem__ and _has_mask_index(args)):
            if on_device:
                self._record("read", func)
            return out
        if target is not None:  # .to(...) / .cuda(): a copy between host and device, or neither
            src_device = bool(args) and self.is_device(args[0])
            if target == "host":
                if src_device:
                    self._record("read", func)
                return out
            if not src_device:
                if not kwargs.get("non_blocking", False) and not _positional_non_blocking(args):
                    self._record("upload", func)
                if out is args[0]:  # on a CPU .to() returns the host tensor itself; on a GPU a new one
                    out = out.clone()
            _mark_all(self, out)
            return out
        if func in _FACTORIES_WITH_DEVICE and isinstance(kwargs.get("device"), torch.device):
            if func in (torch.tensor, torch.as_tensor) and not on_device:
                self._record("upload", func)  # host data copied to the device, blocking
            _mark_all(self, out)
        elif on_device:
            _mark_all(self, out)
        return out

    # ------------------------------------------------------------------ results
    def summary(self) -> collections.Counter:
        """Counts per (kind, op, where)."""
        return collections.Counter((e.kind, e.op, e.where) for e in self.events)

    def report(self) -> str:
        lines = [f"{n:5d}  {kind:6s} {op:12s} {where}" for (kind, op, where), n in self.summary().most_common()]
        return "\n".join(lines) if lines else "(none)"


def _mark_all(audit: HostSyncAudit, out) -> None:
    for o in tree_leaves(out):
        if isinstance(o, Tensor):
            audit.mark(o)


def _has_mask_index(args) -> bool:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


def _positional_non_blocking(args) -> bool:
    # Tensor.to(device, dtype, non_blocking) / Tensor.to(dtype, non_blocking)
    return any(a is True for a in args[1:])


def _target_device(func, args, kwargs) -> str | None:
    """"host" for a copy to the CPU named as the string "cpu", "device" for a copy to a
    ``torch.device`` (or ``.cuda()``), None when ``func`` moves nothing."""
    if func is Tensor.cuda:
        return "device"
    if func is not Tensor.to:
        return None
    dev = kwargs.get("device")
    if dev is None:
        dev = next((a for a in args[1:] if isinstance(a, (str, torch.device))), None)
        if dev is None:
            other = next((a for a in args[1:] if isinstance(a, Tensor)), None)  # .to(other_tensor)
            dev = other.device if other is not None else None
    if dev is None:
        return None
    if isinstance(dev, str):
        return "host" if dev.startswith("cpu") else "device"
    return "device"


@contextlib.contextmanager
def audit_sampling(**options):
    """Audit every sampling loop run inside the block: yields a list that receives one
    :class:`HostSyncAudit` per loop, rooted at its latents and timesteps (``options`` go to it)."""
    from ..methods import base

    audits: list[HostSyncAudit] = []
    original = base.sample

    def sample(method, adapter, latents, cond, scheduler, timesteps, **kwargs):
        roots = [latents, timesteps] + ([scheduler.timesteps] if isinstance(getattr(scheduler, "timesteps", None), Tensor) else [])
        audit = HostSyncAudit(roots, **options)
        audits.append(audit)
        with audit:
            return original(method, adapter, latents, cond, scheduler, timesteps, **kwargs)

    base.sample = sample
    try:
        yield audits
    finally:
        base.sample = original
