"""LoRAs attached to a pipeline for a block, through diffusers, and removed after it.

:func:`attached` loads each checked LoRA (:func:`anysize.lora.check_loras`) with diffusers'
``load_lora_weights`` under a name of its own, activates them with ``set_adapters`` at their
scales, *in addition to* any adapters the pipeline already had active, and on the way out (also on
error or cancel) deletes them again. When the pipeline had no LoRA before, ``unload_lora_weights``
then takes out peft's wrapper layers too, so every module, parameter and buffer is the one it was
(bit-identical, same state-dict keys); otherwise the adapters that were active are re-activated at
the exact scale each layer had (peft's ``scaling``, restored layer by layer: diffusers'
``set_adapters`` would reset them to 1).

Loading changes the shared network, so a run with LoRAs must have the network to itself:
:func:`network_lock` gives each network one :class:`SharedExclusiveLock`; plain runs hold it
shared (any number at once, as the web UI and threaded API users run them) and runs with LoRAs
hold it exclusively, waiting for the plain ones to finish and keeping new ones out until they are
done. ``attached`` takes it exclusively itself, so it is safe however it is called.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Iterator, Sequence

from ..errors import InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from ..lora import LoraFile
    from .base import ModelAdapter


class SharedExclusiveLock:
    """A readers-writer lock: ``shared()`` blocks any number of holders at once, ``exclusive()`` one.

    Re-entrant per thread: a thread holding it exclusively may take it again either way (asd's
    stage-I LoRA inside a run with LoRAs); a thread holding it shared that asks for it exclusively
    gives its shared holds up while it waits and gets them back after (no two upgraders can
    deadlock; the network is in its plain state whenever nobody holds it exclusively, so nothing a
    shared holder relies on changes under it between its network calls). Waiting writers keep new
    shared holders out, so a LoRA run is not starved by a stream of plain ones.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._shared: dict[int, int] = {}  # thread id -> shared holds
        self._owner: int | None = None  # thread holding it exclusively
        self._depth = 0  # that thread's exclusive holds
        self._writers_waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner != me and me not in self._shared:
                while self._owner is not None or self._writers_waiting:
                    self._cond.wait()
            self._shared[me] = self._shared.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._shared[me] -= 1
                if not self._shared[me]:
                    del self._shared[me]
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            given_up = 0
            if self._owner == me:
                self._depth += 1
            else:
                given_up = self._shared.pop(me, 0)
                self._writers_waiting += 1
                try:
                    while self._owner is not None or self._shared:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._owner, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._owner = None
                    if given_up:
                        self._shared[me] = given_up
                self._cond.notify_all()

    def holders(self) -> tuple[int, bool]:
        """(threads holding it, whether exclusively), for tests and diagnostics."""
        with self._cond:
            return (1, True) if self._owner is not None else (len(self._shared), False)


_locks_guard = threading.Lock()
_locks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def network_lock(network) -> SharedExclusiveLock:
    """The one lock of a denoising network (keyed by the module itself, so every adapter and
    pipeline around the same network shares it)."""
    with _locks_guard:
        lock = _locks.get(network)
        if lock is None:
            lock = _locks[network] = SharedExclusiveLock()
        return lock


#: the names our adapters get in the pipeline: unique in the process, so nested blocks never collide
_names = itertools.count()

#: the loggers of diffusers' LoRA loading, quietened while we load (we report what matters ourselves)
_LOADER_LOGGERS = ("diffusers.loaders.lora_base", "diffusers.loaders.lora_pipeline", "diffusers.loaders.peft",
                   "diffusers.utils.peft_utils")


class _LoadLog(logging.Handler):
    """Keeps what diffusers logs while one LoRA loads: its unexpected keys say the LoRA does not fit."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.unexpected: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        marker = "led to unexpected keys found in the model:"
        if marker in msg:
            self.unexpected += [k.strip() for k in msg.split(marker, 1)[1].split("Loading adapter")[0]
                                .strip(" .").split(",") if k.strip()]


@contextlib.contextmanager
def _quiet_loading() -> Iterator[_LoadLog]:
    from transformers.utils import logging as hf_logging

    log = _LoadLog()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a text-encoder LoRA's "Loading weights" bar, once per load
    saved = []
    for name in _LOADER_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.propagate, lg.level))
        lg.addHandler(log)
        lg.propagate = False  # diffusers' own notes ("No LoRA keys associated to CLIPTextModel ...") are noise here
        lg.setLevel(logging.DEBUG)
    try:
        yield log
    finally:
        for lg, propagate, level in saved:
            lg.removeHandler(log)
            lg.propagate, lg.level = propagate, level
        if bars:
            hf_logging.enable_progress_bar()


def _loadable_parts(pipe) -> list:
    """The pipeline's modules a LoRA can go into (its network, its text encoders)."""
    parts = [getattr(pipe, name, None) for name in getattr(pipe, "_lora_loadable_modules", ())]
    return [p for p in parts if p is not None and hasattr(p, "modules")]


def _tuner_layers(pipe) -> list:
    return [m for part in _loadable_parts(pipe) for m in _tuner_layers_of(part)]


def _tuner_layers_of(part) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in part.modules() if isinstance(m, BaseTunerLayer)]


def _unwrap(part) -> None:
    """Take peft's wrapper layers out of one pipeline part (diffusers' ``unload_lora_weights``, for that part alone)."""
    from diffusers.models.modeling_utils import ModelMixin

    if isinstance(part, ModelMixin):
        part.unload_lora()
    else:  # a transformers text encoder
        from diffusers.utils.peft_utils import recurse_remove_peft_layers

        recurse_remove_peft_layers(part)
        if getattr(part, "peft_config", None) is not None:
            del part.peft_config
            part._hf_peft_config_loaded = None


def loaded_adapters(pipe) -> list[str]:
    """Names of every LoRA adapter loaded into the pipeline's LoRA-loadable parts."""
    try:
        return sorted({n for names in pipe.get_list_adapters().values() for n in names})
    except (AttributeError, ValueError):
        return []


def _check_loader(adapter: ModelAdapter) -> None:
    pipe = adapter.pipe
    if not callable(getattr(pipe, "load_lora_weights", None)):
        raise InvalidArgumentError(
            f"{type(pipe).__name__} (the {adapter.family} model) has no LoRA loader in diffusers; LoRAs load into "
            "the SD 1.x/2.x, SDXL, SD3 and FLUX pipelines")
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:  # pragma: no cover - peft is a dependency
        raise InvalidArgumentError("loading a LoRA needs peft: pip install peft")


def _load_error(lora: LoraFile, adapter: ModelAdapter, e: Exception) -> InvalidArgumentError:
    text = str(e)
    if "size mismatch" in text:
        return InvalidArgumentError(
            f"the LoRA {lora.lora.path} does not fit the {adapter.family} model: its weights have other shapes than "
            "the network's layers (a LoRA for another model family?)")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return InvalidArgumentError(f"cannot load the LoRA {lora.lora.path}: {first}")


#: per network, the LoRA sets of the ``attached`` blocks open now: (thread, :func:`lora_set_key`), innermost last
_open_sets: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def lora_set_key(loras: Sequence[LoraFile]) -> tuple:
    """What makes two LoRA sets load the same weights at the same scales, in the same order."""
    return tuple((str(one.weights.resolve()), one.sha256, float(one.scale)) for one in loras)


@contextlib.contextmanager
def attached(adapter: ModelAdapter, loras: Sequence[LoraFile]) -> Iterator[None]:
    """The checked ``loras`` active in ``adapter``'s pipeline for the block (see the module doc).

    Inside a block of the same thread that attached exactly these LoRAs (the innermost one open),
    nothing is loaded again: they are active as they are. ``anysize batch`` holds one block over a
    run of chunks with the same LoRAs, so each chunk's run does not attach and remove them anew."""
    if not loras:
        yield
        return
    _check_loader(adapter)
    pipe = adapter.pipe
    lock = network_lock(adapter.network)
    mine = (threading.get_ident(), lora_set_key(loras))
    with lock.exclusive():
        with _locks_guard:
            stack = _open_sets.setdefault(adapter.network, [])
        if stack and stack[-1] == mine:
            yield
            return
        stack.append(mine)
        try:
            with _loaded(adapter, pipe, loras):
                yield
        finally:
            stack.pop()


@contextlib.contextmanager
def _loaded(adapter: ModelAdapter, pipe, loras: Sequence[LoraFile]) -> Iterator[None]:
    """Load and activate ``loras`` for the block, then remove them (the caller holds the lock)."""
    # peft freezes the layers it wraps; a network being trained keeps its requires_grad flags
    grads = [(p, p.requires_grad) for part in _loadable_parts(pipe) for p in part.parameters()]
    had = loaded_adapters(pipe)
    # what each layer had: its active adapters and their scales (restored exactly afterwards)
    before = [(layer, list(layer.active_adapters), dict(layer.scaling)) for layer in _tuner_layers(pipe)] if had else []
    # the parts without peft layers yet (a user's U-Net LoRA leaves the text encoder plain): unwrapped after
    plain_parts = [part for part in _loadable_parts(pipe) if not _tuner_layers_of(part)] if had else []
    active_before = list(pipe.get_active_adapters()) if had else []
    names: list[str] = []
    try:
        for lora in loras:
            name = f"anysize_lora_{next(_names)}"
            names.append(name)
            with _quiet_loading() as log, warnings.catch_warnings():
                # peft's "Already found a peft_config ... multiple adapters" is what we mean to do, and
                # diffusers takes a LoRA that failed to load out again ("... was active which is now deleted")
                warnings.filterwarnings("ignore", message=".*Already found a `peft_config`")
                warnings.filterwarnings("ignore", message=".*was active which is now deleted")
                try:
                    pipe.load_lora_weights(str(lora.weights), adapter_name=name)
                except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
                    raise _load_error(lora, adapter, e) from None
            if name not in loaded_adapters(pipe):
                raise InvalidArgumentError(
                    f"the LoRA {lora.lora.path} has no weights for any layer of the {adapter.family} model "
                    "(a LoRA for another model family?)")
            if log.unexpected:
                raise InvalidArgumentError(
                    f"the LoRA {lora.lora.path} does not fit the {adapter.family} model: {len(log.unexpected)} of "
                    f"its weights have no layer to go to (e.g. {log.unexpected[0]}; a LoRA for another model family?)")
        pipe.set_adapters(active_before + names, adapter_weights=[1.0] * len(active_before) + [one.scale for one in loras])
        for layer, _, scaling in before:  # set_adapters put the adapters that were active at scale 1
            layer.scaling.update({k: v for k, v in scaling.items() if k in layer.scaling})
        yield
    finally:
        _remove(pipe, names, had, before, active_before, plain_parts)
        for p, flag in grads:
            p.requires_grad_(flag)


def _remove(pipe, names: list[str], had: list[str], before: list, active_before: list[str], plain_parts: list) -> None:
    present = [n for n in names if n in loaded_adapters(pipe)]
    if present:
        with warnings.catch_warnings():  # "Adapter ... was active which is now deleted": as meant
            warnings.filterwarnings("ignore", message=".*was active which is now deleted")
            pipe.delete_adapters(present)
    if not had:
        if _tuner_layers(pipe):
            pipe.unload_lora_weights()  # peft's wrappers out: the modules are the original ones again
        return
    for part in plain_parts:  # only our LoRA wrapped it: its wrappers out, as unload_lora_weights does per part
        if _tuner_layers_of(part):
            _unwrap(part)
    for layer, active, scaling in before:
        if active:
            layer.set_adapter(active)
        layer.scaling.clear()
        layer.scaling.update(scaling)
