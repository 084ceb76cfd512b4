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


class ReversiblePatch:
    """A context manager that changes ``self.network`` while open and restores it exactly on exit.

    Subclasses set ``name`` (for messages) and ``self.network``, and implement :meth:`_install`,
    recording every change in the given :class:`Undo`; :meth:`_opening` / :meth:`_closed` reset
    per-run state. One anysize patch at a time per network; a failed install is rolled back.

    While open, the patch holds the network's lock (:func:`anysize.models.lora.network_lock`)
    exclusively, as a run with LoRAs does: a patched network is not the one a plain run on another
    thread expects, so plain runs wait for the patch to close (and it for them), and a second
    thread's patch waits its turn instead of finding the network taken. A patch opened again on the
    same thread (the lock is re-entrant) still meets the mark and is refused.
    """

    name = "patch"
    network = None
    _active = False

    def _install(self, undo: Undo) -> None:
        raise NotImplementedError

    def _opening(self) -> None:
        """Reset per-run state before installing."""

    def _closed(self) -> None:
        """Clear per-run state after restoring."""

    def __enter__(self):
        from ..errors import InvalidArgumentError
        from ..models.lora import network_lock

        if self._active:
            raise InvalidArgumentError(f"this {self.name} patch is already open")
        hold = network_lock(self.network).exclusive()
        hold.__enter__()
        try:
            if getattr(self.network, MARK, None) is not None:
                raise InvalidArgumentError("this network is already patched by anysize; close that patch first")
            self._undo = Undo()
            self._opening()
            try:
                self._undo.mark(self.network, self)
                self._install(self._undo)
            except BaseException:
                self._undo.undo_all()
                raise
        except BaseException:
            hold.__exit__(None, None, None)
            raise
        self._hold, self._active = hold, True
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._undo.undo_all()
            self._active = False
            self._closed()
        finally:
            self._hold.__exit__(None, None, None)
