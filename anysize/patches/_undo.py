"""What makes a patch reversible: every change it makes to a network is recorded with its undo."""

from __future__ import annotations

from typing import Callable

#: the instance attribute that marks a network as patched (one anysize patch at a time)
MARK = "_anysize_patch"


class Undo:
    """Changes made to a network, undone newest first by :meth:`undo_all` (also after a failed install)."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def add(self, undo: Callable[[], None], tag: str = "") -> None:
        self._steps.append((tag, undo))

    def has(self, tag: str) -> bool:
        return any(t == tag for t, _ in self._steps)

    def mark(self, module, patch) -> None:
        """Mark ``module`` as patched by ``patch`` (an instance attribute, removed on undo)."""
        setattr(module, MARK, patch)
        self.add(lambda: module.__dict__.pop(MARK, None), "mark")

    def hook(self, handle) -> None:
        """A torch hook handle, removed on undo."""
        self.add(handle.remove, "hook")

    def processor(self, attn, processor) -> None:
        """Give an attention module ``processor``; its original comes back on undo."""
        original = attn.processor
        attn.set_processor(processor)
        self.add(lambda: attn.set_processor(original), "processor")

    def undo_all(self) -> None:
        while self._steps:
            self._steps.pop()[1]()
