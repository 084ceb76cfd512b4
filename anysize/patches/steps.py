"""Where the denoising loop is, for patches that change the network by step (RAU-Net's phases).

A patch never guesses where the loop is: it is handed one callable, ``position()``, that returns
the current :class:`StepPosition` (or None outside a loop). anysize's own sampling loop provides
:func:`anysize.sampling.current_step`. A stock diffusers pipeline, which knows nothing of
anysize, gets a :class:`PipelineStepTracker`: every diffusers pipeline sets ``_num_timesteps`` and
opens its ``progress_bar`` once per denoising loop, then calls its denoiser once per entry of its
timesteps, so the position is the number of network calls since the progress bar opened. That is
the official HiDiffusion package's count (2n-1 calls for Heun, n+1 for PNDM), restarted by every
run (so an interrupted run leaves no stale count), and it reads no tensor: on a GPU the host never
waits for the device.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from ._undo import Undo


class StepPosition(NamedTuple):
    """Step ``index`` of ``total`` of loop number ``loop`` (a new number: a new run)."""

    index: int
    total: int
    loop: int


#: what a patch is handed: the current position, or None outside a denoising loop
StepSource = Callable[[], "StepPosition | None"]


class PipelineStepTracker:
    """The step position of a stock diffusers pipeline's denoising loop (see the module docstring).

    Installed by the patch it serves (:meth:`install`, with the patch's :class:`Undo`), before the
    patch's own hooks, so each network call is counted before the patch asks where it is.
    """

    def __init__(self, pipe, network):
        self.pipe, self.network = pipe, network
        self._loop = 0
        self._calls = 0
        self._current: StepPosition | None = None

    def __call__(self) -> StepPosition | None:
        return self._current

    def install(self, undo: Undo) -> None:
        pipe = self.pipe
        original = pipe.progress_bar  # the bound method every pipeline opens once per denoising loop

        def progress_bar(*args, **kwargs):
            self._loop += 1
            self._calls = 0
            return original(*args, **kwargs)

        pipe.progress_bar = progress_bar
        undo.add(lambda: pipe.__dict__.pop("progress_bar", None))
        undo.hook(self.network.register_forward_pre_hook(self._count))
        self._loop, self._calls, self._current = 0, 0, None

    def _count(self, module, args) -> None:
        total = getattr(self.pipe, "_num_timesteps", None)
        if not total:  # a pipeline that does not record it: its scheduler's schedule (a length, not a read)
            timesteps = getattr(getattr(self.pipe, "scheduler", None), "timesteps", None)
            total = 0 if timesteps is None else len(timesteps)
        if not total:
            self._current = None
            return
        if self._calls >= total:  # more calls than timesteps: wrap, as the official package's counter
            self._calls = 0
        self._current = StepPosition(self._calls, int(total), self._loop)
        self._calls += 1
