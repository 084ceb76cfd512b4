"""What a method is asked to do: one validated generation request.

The front ends (:mod:`anysize.api`, and through it the CLI, the web UI and the batch runner)
validate the user's input and build a :class:`Request`; every method consumes one. It carries the
run's own state — per-image generators, the callback, the cancel event — so one method object can
serve several requests at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .models.base import Conditioning, ModelAdapter
    from .sampling import StepCallback


@dataclass
class Request:
    """One validated generation request, as methods see it."""

    adapter: ModelAdapter
    prompts: list[str]
    negative: list[str] | None
    height: int
    width: int
    steps: int
    guidance: float
    seeds: list[int]
    scheduler: str | None
    cond: Conditioning
    generators: list[torch.Generator]
    callback: StepCallback | None = None
    cancel: threading.Event | None = None
    progress: bool = True

    @property
    def latent_hw(self) -> tuple[int, int]:
        f = self.adapter.vae_factor
        return self.height // f, self.width // f

    def make_scheduler(self):
        from .schedulers import make_scheduler

        return make_scheduler(self.adapter, self.scheduler)
