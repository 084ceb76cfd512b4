"""Timing and peak memory, measured the same way by ``anysize bench``, ``anysize eval`` and the scripts
in ``benchmarks/``.

* :func:`synchronize` waits for the device's queued work, so a wall-clock interval covers it.
* :class:`PeakMemory` measures the peak of one region of code: the CUDA caching allocator's
  ``max_memory_allocated`` on a GPU; on a CPU, the process's peak resident set size. On Linux
  the RSS high-water mark (``VmHWM``) is reset at the start of the region (``/proc/self/clear_refs``),
  so the figure is the region's own peak; elsewhere it is ``ru_maxrss``, the whole process's peak,
  which the report marks (``reset=False``).
* :func:`alternate` runs several candidates in turn (A B C, then C B A, ...) after one untimed
  warm-up each, so slow drift of the machine (thermal state, other processes) affects every
  candidate alike; ratios of medians taken in one such run are comparable, absolute times less so.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..lazy import lazy_module

torch = lazy_module("torch")  # imported by `anysize bench`'s parser too: torch on first use

__all__ = ["PeakMemory", "Timings", "alternate", "machine", "synchronize"]


def synchronize(device: torch.device | str | None) -> None:
    """Wait until ``device`` has finished its queued work (no-op on the CPU)."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover
        torch.mps.synchronize()


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux); False where impossible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_bytes`` and ``m.kind``.

    ``kind`` is ``"cuda_allocated"`` (bytes the CUDA caching allocator handed out at its peak) or
    ``"rss"`` (peak resident memory of the process, which includes the weights already loaded);
    ``reset`` says whether the peak was reset at the start of the region.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.peak_bytes: int = 0
        self.kind = "cuda_allocated" if self.device.type == "cuda" else "rss"
        self.reset = False

    def __enter__(self) -> "PeakMemory":
        if self.kind == "cuda_allocated":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.reset = True
        else:
            self.reset = _reset_rss_peak()
        return self

    def __exit__(self, *exc) -> None:
        if self.kind == "cuda_allocated":
            synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.reset:
            self.peak_bytes = (_status_kb("VmHWM") or 0) * 1024
        else:
            self.peak_bytes = _maxrss_bytes()

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


@dataclass
class Timings:
    """Wall-clock seconds of every timed run of every candidate, and each run's peak memory."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    peak_bytes: dict[str, list[int]] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)  # each candidate's last return value
    failed: dict[str, str] = field(default_factory=dict)  # candidates dropped out of memory: the allocator's message
    memory_kind: str = "rss"

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, name: str, baseline: str) -> float:
        return self.median(name) / self.median(baseline)

    def peak_mib(self, name: str) -> float:
        return max(self.peak_bytes[name]) / 2**20


def alternate(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 3,
    warmup: int = 1,
    device: torch.device | str | None = None,
    warmups: Mapping[str, Callable[[], object]] | None = None,
    drop_out_of_memory: bool = False,
) -> Timings:
    """Time every candidate ``repeats`` times, interleaved, after ``warmup`` untimed runs each.

    Odd rounds run the candidates in reverse order, so none always runs first or right after a
    particular other one. The device is synchronised before and after each timed run.
    ``warmups`` (name -> callable) replaces a candidate in its warm-up runs, e.g. by a shorter run
    of the same work. ``drop_out_of_memory``: a candidate that runs out of memory (in a warm-up or
    a timed run) leaves the rounds, its memory given back, with the allocator's message in
    ``failed``; the others go on, so one method too big for the device does not cost the table.
    """
    from ..devices import is_out_of_memory, release_memory

    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    names = list(candidates)
    out = Timings({n: [] for n in names}, {n: [] for n in names})
    warm = {**candidates, **(warmups or {})}

    def attempt(n: str, fn: Callable[[], object]) -> tuple[bool, object]:
        try:
            return True, fn()
        except Exception as e:  # noqa: BLE001 -- only out of memory is kept; the rest re-raised
            if not (drop_out_of_memory and is_out_of_memory(e)):
                raise
            out.failed[n] = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        release_memory(device if device is not None else "cpu")  # the failed run's frames are gone by now
        return False, None

    for _ in range(warmup):
        for n in names:
            if n not in out.failed:
                attempt(n, warm[n])
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            if n in out.failed:
                continue
            synchronize(device)
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                ok, result = attempt(n, candidates[n])
                synchronize(device)
                elapsed = time.perf_counter() - t0
            if not ok:
                continue
            out.results[n] = result
            out.seconds[n].append(elapsed)
            out.peak_bytes[n].append(mem.peak_bytes)
            out.memory_kind = mem.kind
    for n in out.failed:  # a dropped candidate has no figures (not a partial median)
        out.seconds.pop(n)
        out.peak_bytes.pop(n)
        out.results.pop(n, None)
    return out


def machine(device: torch.device | str | None = None) -> dict[str, object]:
    """What the figures were measured on: CPU/GPU, threads, library versions."""
    import diffusers

    from .. import __version__

    device = torch.device(device) if device is not None else torch.device("cpu")
    info: dict[str, object] = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "anysize": __version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
