"""One progress bar per user-level job.

A job (an ``anysize.generate`` or ``upscale`` call, a multi-prompt ``anysize generate``, an ``eval
composition`` table) opens :func:`run_progress`; the work inside it (every sampling loop, every
tiled VAE pass, every cell) reports its parts into that one bar instead of opening bars of its own.
Work outside any job opens its own bar, as before. The job lives in a context variable, never on a
method object: each thread (the web UI runs generations in threads) sees only its own.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_current: ContextVar[RunProgress | None] = ContextVar("anysize_run_progress", default=None)


class RunProgress:
    """The bar of one job. Each part (a sampling loop of n steps, a tiled VAE pass of n tiles) adds
    its units to the total, unless the job gave its total up front, and names the bar after itself;
    the bar opens with the first part, so its first line already shows that part. Disabled: nothing."""

    def __init__(self, label: str, enabled: bool, *, total: int | None = None, initial: int = 0,
                 unit: str = "it", leave: bool = False):
        self.label, self.enabled = label, enabled
        self.fixed_total = total is not None
        self._args = dict(total=total, initial=initial, unit=unit, leave=leave)
        self.bar = None

    def part(self, n: int, stage: str = "") -> None:
        """A part of ``n`` units starts; ``stage`` names it (the bar reads ``label · stage``)."""
        if not self.enabled:
            return
        desc = " · ".join(s for s in (self.label, stage) if s)
        if self.bar is None:
            from tqdm.auto import tqdm

            args = dict(self._args)
            if not self.fixed_total:
                args["total"] = args["initial"] + n
            self.bar = tqdm(desc=desc, **args)
            return
        self.grow(n)
        self.bar.set_description(desc, refresh=False)
        self.bar.refresh()

    def grow(self, n: int) -> None:
        """The running part turned out ``n`` units longer (a job's total given up front stays)."""
        if self.bar is not None and not self.fixed_total:
            self.bar.total += n

    def set_postfix(self, text: str) -> None:
        """Text after the bar (e.g. which prompt of several is running); shown from the next update."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
        elif self.enabled:
            self._args["postfix"] = text

    def print(self, text) -> None:
        """Print a line to stdout (a file written, say) without breaking the bar on the terminal."""
        if self.bar is None:
            print(text, flush=True)
        else:
            self.bar.write(str(text), file=sys.stdout)
            sys.stdout.flush()

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            advance(self.bar, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def current_run() -> RunProgress | None:
    """The job this thread is running (None outside one)."""
    return _current.get()


@contextmanager
def run_progress(label: str = "", enabled: bool = True, **bar) -> Iterator[RunProgress]:
    """Run the block as one job with one bar (``bar``: :class:`RunProgress`'s total, initial, unit,
    leave). Inside another job an enabled one joins it: its parts count in that job's bar (or in
    its silence); a disabled one is silent, and so is all the work inside it."""
    outer = _current.get()
    if enabled and outer is not None:
        yield outer
        return
    run = RunProgress(label, enabled, **bar)
    token = _current.set(run)
    try:
        yield run
    finally:
        _current.reset(token)
        run.close()


def advance(bar, n: int = 1) -> None:
    """``bar.update(n)``, except that the update reaching the total of a bar that stays (leave) draws
    nothing: closing it draws that final line, which a log would otherwise show twice."""
    if bar.leave and bar.total is not None and bar.n + n >= bar.total:
        bar.n += n
    else:
        bar.update(n)
