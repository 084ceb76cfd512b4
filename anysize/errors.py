"""Typed errors: every user mistake gets one clear message naming the valid choices.

All derive from :class:`AnysizeError` (itself a ``ValueError``) so callers can catch one type;
the CLI maps them to exit code 2, and :class:`RunFailedError` (valid work that did not complete:
out of memory) to 1.
"""

from __future__ import annotations

from typing import Iterable


class AnysizeError(ValueError):
    """Base class of every error anysize raises for bad input."""


class InvalidSizeError(AnysizeError):
    """A width/height that is zero, negative, not divisible by the model's factor, or too large."""


class ModelLoadError(AnysizeError):
    """A model id or folder that cannot be loaded as a diffusers pipeline of a supported family."""


class OutputError(AnysizeError):
    """An output path that cannot be written, or exists and may not be overwritten."""


class OutputExistsError(OutputError):
    """An output file that exists and may not be overwritten; the message names the Python spelling
    of the way out (``force=True``), :meth:`for_cli` the command line's (``--force``)."""

    def __init__(self, path):
        self.path = path
        super().__init__(f"{path} already exists; pass force=True to overwrite it (or choose another path)")

    def for_cli(self) -> str:
        return f"{self.path} already exists; pass --force to overwrite it (or choose another --out)"


class InvalidArgumentError(AnysizeError):
    """Any other out-of-range or inconsistent argument (empty prompt list, bad steps, ...)."""


class UnknownChoiceError(InvalidArgumentError):
    """A name (method, scheduler, dtype, family, an option's value, ...) that is not one of the valid choices.

    The choices are listed sorted, or in their own order with ``ordered`` (presets, choices whose
    order means something); ``extra`` is appended to the list (e.g. " (or unset)").
    """

    def __init__(self, kind: str, value: object, choices: Iterable[str], *, ordered: bool = False, extra: str = ""):
        self.kind, self.value = kind, value
        self.choices = list(choices) if ordered else sorted(choices)
        super().__init__(f"unknown {kind} {value!r}; valid choices: {', '.join(map(str, self.choices))}{extra}")


class RunFailedError(AnysizeError):
    """Valid work that did not complete (the command line's exit code 1, not 2): the device's memory
    could not hold it, or a job of a longer run failed and what came before it is kept."""


class OutOfMemoryError(RunFailedError):
    """A run the device's memory could not hold (the allocator's own error, turned into one line that
    says what was asked and what would fit better). The failed run's memory is released before it is
    raised, so the next run starts from the cache as it was. ``tips`` are the ways out, each spelt
    (Python, command line, web UI): the message names the Python ones, :meth:`for_cli` the command
    line's, :meth:`for_app` the page's."""

    def __init__(self, what: str, detail: str, tips: Iterable[tuple[str, str, str]] = ()):
        self.what, self.detail, self.tips = what, detail, list(tips)
        super().__init__(self._text(0))

    def _text(self, spelling: int) -> str:
        tips = ", ".join(t[spelling] for t in self.tips)
        return f"out of memory {self.what} ({self.detail})" + (f"; try {tips}" if tips else "")

    def for_cli(self) -> str:
        return self._text(1)

    def for_app(self) -> str:
        return self._text(2)


class Cancelled(RuntimeError):
    """Raised inside the sampling loop when the caller's callback asks to stop."""


def check_choice(kind: str, value: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise UnknownChoiceError(kind, value, choices)
    return value
