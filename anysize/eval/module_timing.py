"""Time spent inside given modules (the denoiser, the VAE) during a region of code, from hooks.

:class:`ModuleTimer` registers a forward pre-hook and a forward hook on every module of a named
group (``"network"``: the U-Net or transformer and any ControlNet; ``"vae"``: the VAE's encoder and
decoder) and can wrap instance methods into a group as well (``"vae_call"``: the adapter's whole
``decode`` / ``encode``, tiling included). Only the outermost call of a group is timed, so a module
that calls another of its group (or itself) is not counted twice.

* On CUDA every outermost call records a ``torch.cuda.Event`` pair on the current stream; the
  events are only read (``elapsed_time``) after the one synchronisation of :meth:`ModuleTimer.seconds`,
  so timing adds no host/device wait to the region. What an interval covers is the device's
  timeline between the two events: kernel time, plus any gap in which the device waited for the
  host to launch the next kernel of the same call.
* Elsewhere the hooks read ``time.perf_counter`` (the CPU executes eagerly: the interval is the call).

The forward hooks are registered with ``always_call=True``, so a call that raises (the tiled VAE's
statistics pass cuts decoder forwards short with an exception) still closes its interval; a
method wrapper closes it in ``finally``. Every hook and wrapper is removed when the ``with`` block
ends, also on error (:meth:`ModuleTimer.remove`).

``on_inside(entering)``, when given, is called with True when the code enters the first module of
any *module* group (not of method groups) and with False when it leaves the last, e.g. to pause a
profiler so that it sees only the time outside the networks.

Besides the sums, the timer keeps the first start and the last end over the module groups, so the
time outside them splits into before the first call (prompt encoding, setup), between calls
(scheduler steps, fusion of windows, host waits, tiling of the VAE) and after the last (image
conversion): :meth:`ModuleTimer.outside_split`.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

__all__ = ["ModuleTimer"]


class _Group:
    def __init__(self, name: str, modules: bool):
        self.name = name
        self.modules = modules  # a module group (counts as "inside"); False: wrapped methods
        self.depth = 0
        self.calls = 0  # outermost calls
        self.intervals: list[tuple[object, object]] = []  # (start, end): events or perf_counter floats
        self._start: object = None


class ModuleTimer:
    """``with ModuleTimer(device) as t: ...`` after :meth:`add_modules` / :meth:`add_method`; then
    :meth:`seconds`, :attr:`calls`, :meth:`outside_split`.

    A timer measures one region: create a new one for the next.
    """

    def __init__(self, device: torch.device | str | None = None, *, on_inside: Callable[[bool], None] | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        self.on_inside = on_inside
        self._groups: dict[str, _Group] = {}
        self._handles: list = []
        self._wrapped: list[tuple[object, str, bool, object]] = []  # (owner, name, had own attribute, old)
        self._inside_depth = 0  # over the module groups together
        self._first: object = None
        self._last: object = None
        self._region: tuple[object, object] | None = None
        self._active = False

    # ------------------------------------------------------------------ what is timed
    def _group(self, name: str, modules: bool) -> _Group:
        g = self._groups.get(name)
        if g is None:
            g = self._groups[name] = _Group(name, modules)
        elif g.modules != modules:
            raise ValueError(f"group {name!r} already holds {'modules' if g.modules else 'methods'}")
        return g

    def _now(self) -> object:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def _enter(self, g: _Group) -> None:
        if g.modules:
            if self._inside_depth == 0 and self.on_inside is not None:
                self.on_inside(True)
            self._inside_depth += 1
        g.depth += 1
        if g.depth == 1:
            g._start = self._now()
            if g.modules and self._first is None:
                self._first = g._start

    def _exit(self, g: _Group) -> None:
        g.depth -= 1
        if g.depth == 0:
            end = self._now()
            g.intervals.append((g._start, end))
            g.calls += 1
            if g.modules:
                self._last = end
        if g.modules:
            self._inside_depth -= 1
            if self._inside_depth == 0 and self.on_inside is not None:
                self.on_inside(False)

    def add_modules(self, group: str, modules: Iterable[nn.Module | None]) -> "ModuleTimer":
        """Time the calls of ``modules`` (None entries are skipped) as ``group``."""
        g = self._group(group, True)
        for m in modules:
            if m is None:
                continue
            self._handles.append(m.register_forward_pre_hook(lambda *_: self._enter(g)))
            self._handles.append(m.register_forward_hook(lambda *_: self._exit(g), always_call=True))
        return self

    def add_method(self, group: str, owner: object, name: str) -> "ModuleTimer":
        """Time the calls of ``owner.name`` (a bound method, replaced on the instance until removal)."""
        g = self._group(group, False)
        old = getattr(owner, name)
        own = name in vars(owner)

        def timed(*args, **kwargs):
            self._enter(g)
            try:
                return old(*args, **kwargs)
            finally:
                self._exit(g)

        setattr(owner, name, timed)
        self._wrapped.append((owner, name, own, old))
        return self

    # ------------------------------------------------------------------ the region
    def __enter__(self) -> "ModuleTimer":
        if self._active or self._region is not None:
            raise RuntimeError("a ModuleTimer measures one region; make a new one")
        self._active = True
        self._region = (self._now(), None)
        return self

    def __exit__(self, *exc) -> None:
        self._region = (self._region[0], self._now())
        self._active = False
        self.remove()

    def remove(self) -> None:
        """Remove every hook and restore every wrapped method (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for owner, name, own, old in reversed(self._wrapped):
            if own:
                setattr(owner, name, old)
            else:
                delattr(owner, name)
        self._wrapped.clear()

    # ------------------------------------------------------------------ results
    def _elapsed(self, a: object, b: object) -> float:
        if self.cuda:
            return a.elapsed_time(b) / 1000.0  # milliseconds
        return b - a

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    @property
    def calls(self) -> dict[str, int]:
        """Outermost calls per group."""
        return {n: g.calls for n, g in self._groups.items()}

    def seconds(self) -> dict[str, float]:
        """Seconds inside each group (device time on CUDA); waits for the device once."""
        if self._active:
            raise RuntimeError("read the timer after its region")
        self._sync()
        return {n: sum(self._elapsed(a, b) for a, b in g.intervals) for n, g in self._groups.items()}

    def region_seconds(self) -> float:
        """The whole region, on the same clock as the groups (the device's on CUDA)."""
        if self._region is None or self._region[1] is None:
            raise RuntimeError("read the timer after its region")
        self._sync()
        return self._elapsed(*self._region)

    def outside_split(self, inside: Sequence[str] | None = None) -> dict[str, float]:
        """The region's time outside the module groups (or the groups ``inside``), split into
        ``before`` the first module call, ``between`` calls and ``after`` the last; seconds on the
        groups' clock. With no module call at all, everything is ``before``."""
        total = self.region_seconds()
        secs = self.seconds()
        names = [n for n, g in self._groups.items() if g.modules] if inside is None else list(inside)
        outside = total - sum(secs[n] for n in names)
        if self._first is None:
            return {"before": outside, "between": 0.0, "after": 0.0}
        start, end = self._region
        before = self._elapsed(start, self._first)
        after = self._elapsed(self._last, end)
        return {"before": before, "between": outside - before - after, "after": after}
