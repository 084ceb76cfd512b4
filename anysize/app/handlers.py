"""What the web UI does, as plain functions over :mod:`anysize.api` (no Gradio here).

:class:`Service` holds the one model the app serves (loaded once, shared by every request), the
device queue (:class:`DeviceQueue`: one run on the device at a time, a bounded waiting room, a
:class:`Busy` error past it) and the folder the PNGs go to. Its methods are what the page's
buttons and the named API endpoints (``/generate``, ``/compare``, ``/upscale``, ``/read_png``)
call; the tests call them directly on the toy model.

Input arrives as form values (numbers as floats, "default" for the model's scheduler, empty text
for "none") and is checked with the same functions the command line uses, so bad input gets the
CLI's one-line message. Every result is written with :func:`anysize.output.save_png`, exactly as
``anysize generate`` writes it (A1111 ``parameters`` chunk and ``anysize`` JSON chunk), under the
CLI's default file name, in a folder of its own per run.

LoRAs and ControlNets are resources the server declares, never paths a browser types (the page may
be served to others): ``--lora-dir DIR`` folders whose ``*.safetensors`` files the form lists by
name (:meth:`Service.loras`, rescanned on every request), and ``--controlnet [NAME=]PATH`` networks
loaded once at start-up (:func:`declare_controlnets`) and chosen by name. A run's LoRAs are
``name:scale`` lines (:func:`anysize.lora.parse_lora`), its regions ``X,Y,W,H:prompt`` lines
(:func:`anysize.regions.parse_region`) or JSON region objects (masks inline, never a file of the
server), its ControlNet units ``{"model": NAME, "image": FILE, "scale", "start", "end", "mode"}``;
each is checked by the API's own checks before the run waits for the device.
"""

from __future__ import annotations

import collections
import itertools
import math
import os
import secrets
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..cli.model_options import TILED_VAE_MODES
from ..errors import AnysizeError, Cancelled, InvalidArgumentError, InvalidSizeError, check_choice

#: ``(done, total, text)`` after every step; done/total None while waiting for the device
ProgressFn = Callable[[int | None, int | None, str], None]

#: what the page offers for the VAE ("auto" tiles above 2048x2048 px): the words of ``anysize generate --tiled-vae``
TILED_VAE_CHOICES = tuple(TILED_VAE_MODES)
#: the aspect presets, as (width share, height share), beside native and the 2x / 4x sides
ASPECTS = ((1, 4), (1, 3), (1, 2), (2, 3), (3, 2), (2, 1), (3, 1), (4, 1), (16, 9), (9, 16))
#: the waiting room of ``anysize app`` without ``--queue``
DEFAULT_QUEUE = 8
#: results kept in a session's history gallery
HISTORY_LIMIT = 48
#: the ControlNet units the page offers (A1111's units); the API takes any number
CONTROL_UNITS = 2
#: the fields of a ControlNet unit (the form's, the API's ``controls`` objects)
CONTROL_FIELDS = ("model", "image", "scale", "start", "end", "mode")
#: the model choice of a unit that is off
NO_CONTROLNET = "none"


class Busy(RuntimeError):
    """The device is running a job and the waiting room is full: try again."""


# ------------------------------------------------------------------------------------------ queue


class DeviceQueue:
    """One run on the device at a time, in arrival order, and at most ``waiting`` runs waiting.

    A run past that gets :class:`Busy` at once (not a long wait and a time-out). A run that is
    cancelled while it waits leaves the queue without touching the device.
    """

    def __init__(self, waiting: int = DEFAULT_QUEUE):
        if isinstance(waiting, bool) or not isinstance(waiting, int) or waiting < 0:
            raise InvalidArgumentError(f"the queue's waiting room must be an integer >= 0, got {waiting!r}")
        self.waiting = waiting
        self._cond = threading.Condition()
        self._line: collections.deque[int] = collections.deque()
        self._tickets = itertools.count()
        self._running = 0

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"running": self._running, "waiting": len(self._line), "room": self.waiting}

    def busy_message(self) -> str:
        room = "no waiting room" if self.waiting == 0 else f"{self.waiting} waiting, as many as its queue holds"
        return f"busy: the device is running one job and {room} (anysize app --queue {self.waiting}); try again in a moment"

    def slot(self, cancel: threading.Event | None = None, on_wait: Callable[[int], None] | None = None):
        """A context manager holding the device; ``on_wait(k)`` is told the number of jobs ahead."""
        return _Slot(self, cancel, on_wait)

    def _enter(self, cancel, on_wait) -> None:
        with self._cond:
            if (self._running or self._line) and len(self._line) >= self.waiting:
                raise Busy(self.busy_message())
            ticket = next(self._tickets)
            self._line.append(ticket)
            try:
                told = None
                while self._running or self._line[0] != ticket:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("cancelled while waiting for the device")
                    ahead = self._running + list(self._line).index(ticket)
                    if on_wait is not None and ahead != told:
                        told = ahead
                        self._cond.release()
                        try:
                            on_wait(ahead)
                        finally:
                            self._cond.acquire()
                        continue
                    self._cond.wait(timeout=0.2)
            except BaseException:
                self._line.remove(ticket)
                self._cond.notify_all()
                raise
            self._line.popleft()
            self._running += 1

    def _leave(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()


class _Slot:
    def __init__(self, queue: DeviceQueue, cancel, on_wait):
        self.queue, self.cancel, self.on_wait = queue, cancel, on_wait

    def __enter__(self):
        self.queue._enter(self.cancel, self.on_wait)
        return self

    def __exit__(self, *exc):
        self.queue._leave()
        return False


# ------------------------------------------------------------------------------------------ jobs


class Jobs:
    """Cancel events of the runs a browser session started, so its Cancel button can stop them
    (those waiting for the device too)."""

    def __init__(self):
        self._lock = threading.Condition()
        self._events: dict[str, threading.Event] = {}
        self._owner: dict[str, str] = {}

    def start(self, session: str) -> str:
        job = uuid.uuid4().hex
        with self._lock:
            self._events[job] = threading.Event()
            self._owner[job] = session
        return job

    def event(self, job: str | None) -> threading.Event:
        with self._lock:
            return self._events.get(job or "") or threading.Event()

    def finish(self, job: str | None) -> None:
        with self._lock:
            self._events.pop(job or "", None)
            self._owner.pop(job or "", None)
            self._lock.notify_all()

    def wait_finished(self, session: str, timeout: float) -> bool:
        """Wait up to ``timeout`` s until ``session`` has no run left; whether it has none. The Cancel
        button answers after the runs it stopped, so its "cancelling" never lands after their own
        "cancelled before step ..." (two events writing one status line)."""
        with self._lock:
            return self._lock.wait_for(lambda: session not in self._owner.values(), timeout)

    def cancel(self, session: str) -> int:
        """Set the cancel event of every run of ``session``; returns how many there were."""
        with self._lock:
            jobs = [j for j, s in self._owner.items() if s == session]
            for j in jobs:
                self._events[j].set()
        return len(jobs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


# ------------------------------------------------------------------------------------------ results


@dataclass
class RunOutput:
    """One image the app made: the PNG written (as the CLI writes it) and its figures."""

    path: Path
    config: dict[str, Any]
    seconds: float
    network_calls: int
    #: the toy world's composition figures (objects, colour, shape), on the toy model only
    metrics: dict[str, Any] | None = None

    @property
    def caption(self) -> str:
        c = self.config
        head = f"{c['method']} {c['width']}x{c['height']} seed {c['seed']}"
        return f"{head} · {self.seconds:.1f} s · {self.network_calls} calls" + (
            f" · {metrics_text(self.metrics)}" if self.metrics else "")

    def summary(self) -> dict[str, Any]:
        return {"file": self.path.name, "seconds": round(self.seconds, 3), "network_calls": self.network_calls,
                "metrics": self.metrics, "config": self.config}


@dataclass
class CompareRow:
    method: str
    output: RunOutput | None = None
    error: str | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "error": self.error}
        if self.output is not None:
            out.update(self.output.summary())
        return out


def metrics_text(m: Mapping[str, Any] | None) -> str:
    if not m:
        return ""
    if "error" in m:
        return m["error"]
    n = m["n_objects"]
    verdict = "ok" if m["fidelity"] else ("duplicated" if n > 1 else "missing" if n == 0 else "wrong shape")
    return f"{n} {m['prompt_colour']} object{'s' if n != 1 else ''} ({verdict})"


# ------------------------------------------------------------------------------------------ declared resources


def check_lora_dirs(dirs: Sequence[str | os.PathLike] | None) -> tuple[Path, ...]:
    """The ``--lora-dir`` folders: each an existing folder, none given twice."""
    out: list[Path] = []
    for d in dirs or ():
        p = Path(d).expanduser()
        if not p.exists():
            raise InvalidArgumentError(f"--lora-dir {d}: no such folder")
        if not p.is_dir():
            raise InvalidArgumentError(f"--lora-dir {d} is a file; give the folder that holds the .safetensors files")
        if any(q.resolve() == p.resolve() for q in out):
            raise InvalidArgumentError(f"--lora-dir {d} is given twice")
        out.append(p)
    return tuple(out)


def list_loras(dirs: Sequence[Path]) -> dict[str, Path]:
    """name -> file of every ``*.safetensors`` file under ``dirs`` (sub-folders too), named by its path
    relative to its folder (``/`` separated); a name found in several folders is prefixed with its
    folder's name there (``styles/x.safetensors``)."""
    found: list[tuple[str, Path, Path]] = []
    for d in dirs:
        try:
            files = sorted(p for p in d.rglob("*.safetensors") if p.is_file())
        except OSError:
            continue  # a folder that went away: nothing listed from it
        found += [(p.relative_to(d).as_posix(), p, d) for p in files]
    counts = collections.Counter(name for name, _, _ in found)
    table: dict[str, Path] = {}
    for name, path, d in found:
        key = name if counts[name] == 1 else f"{d.name}/{name}"
        table.setdefault(key, path)
    return dict(sorted(table.items()))


@dataclass(frozen=True)
class DeclaredControlNet:
    """A ControlNet the app serves: its name in the form, what ``--controlnet`` gave, the loaded network."""

    name: str
    source: str
    net: Any

    @property
    def union(self) -> bool:
        """Whether it is a Union ControlNet (its units take a control mode)."""
        return type(self.net).__name__ == "ControlNetUnionModel"


def parse_controlnet_spec(text: str) -> tuple[str, str]:
    """``[NAME=]PATH_OR_HUB_ID`` -> (name, source); the name defaults to the folder's (or hub id's) last part."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError(f"--controlnet needs [NAME=]PATH_OR_HUB_ID, got {text!r}")
    name, sep, source = text.partition("=")
    if not sep or "/" in name or "\\" in name:  # no NAME= (an '=' inside a path is the path's)
        name, sep, source = "", "", text
    name, source = name.strip(), source.strip()
    if not source:
        raise InvalidArgumentError(f"--controlnet {text}: no folder or hub id after '{name}='")
    if sep and not name:
        raise InvalidArgumentError(f"--controlnet {text}: no name before '='")
    if not name:
        name = Path(source.rstrip("/\\")).name or source
    if name == NO_CONTROLNET:
        raise InvalidArgumentError(f"--controlnet {text}: '{NO_CONTROLNET}' is the form's word for no ControlNet; "
                                   "choose another name (NAME=PATH)")
    return name, source


def check_controlnet_specs(specs: Sequence[str] | None) -> list[tuple[str, str]]:
    """Every ``--controlnet`` parsed, before any model loads: no name twice."""
    out: list[tuple[str, str]] = []
    for text in specs or ():
        name, source = parse_controlnet_spec(text)
        if any(n == name for n, _ in out):
            raise InvalidArgumentError(f"--controlnet: the name {name!r} is given twice; name them apart (NAME=PATH)")
        out.append((name, source))
    return out


def declare_controlnets(adapter, specs: Sequence[str | tuple[str, Any]] | None) -> dict[str, DeclaredControlNet]:
    """The app's ControlNets, each loaded once on the adapter's device and dtype and checked against
    its model: ``specs`` are ``--controlnet`` texts or (name, folder / hub id / loaded network) pairs."""
    from ..models import control as _control

    pairs: list[tuple[str, Any]] = []
    for s in specs or ():
        name, model = parse_controlnet_spec(s) if isinstance(s, str) else s
        if not isinstance(name, str) or not name or name == NO_CONTROLNET:
            raise InvalidArgumentError(f"--controlnet: {name!r} cannot name a ControlNet (give a name other than "
                                       f"'{NO_CONTROLNET}')")
        if any(n == name for n, _ in pairs):
            raise InvalidArgumentError(f"--controlnet: the name {name!r} is given twice; name them apart (NAME=PATH)")
        pairs.append((name, model))
    out: dict[str, DeclaredControlNet] = {}
    if pairs and _control.CLASSES.get(adapter.family) is None:
        raise InvalidArgumentError(
            f"ControlNet works with the {', '.join(_control.CLASSES)} families, not with the {adapter.family} model")
    for name, model in pairs:
        what = f"--controlnet {name}"
        if isinstance(model, (str, os.PathLike)):
            source = os.fspath(model)
            try:
                net = _control.load_controlnet(source, _control.CLASSES[adapter.family], adapter)
            except InvalidArgumentError as e:
                raise InvalidArgumentError(f"{what}: {e}") from None
        else:
            net = model
            source = net.config.get("_name_or_path", "") or type(net).__name__
        _control.check_fits(adapter, net, what)
        out[name] = DeclaredControlNet(name, source, net)
    return out


# ------------------------------------------------------------------------------------------ the service


@dataclass
class SizePreset:
    label: str
    width: int
    height: int


@dataclass
class Service:
    """The model the app serves and everything a request needs around it."""

    adapter: Any
    queue: DeviceQueue = field(default_factory=DeviceQueue)
    out_dir: Path | None = None
    #: the model's name in the page (its hub id or folder, "the embedded toy model" without --model)
    model_label: str = ""
    #: whether composition metrics apply (the embedded toy model)
    toy: bool = False
    #: the ``--lora-dir`` folders whose ``*.safetensors`` files the form lists
    lora_dirs: tuple[Path, ...] = ()
    #: the ``--controlnet`` networks, loaded once, by name
    controlnets: dict[str, DeclaredControlNet] = field(default_factory=dict)

    def __post_init__(self):
        if self.out_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="anysize-app-")
            self.out_dir = Path(self._tmp.name)
        self.out_dir = Path(self.out_dir)
        self.jobs = Jobs()
        self._runs = itertools.count(1)
        self._run_prefix = time.strftime("%Y%m%d-%H%M%S")

    @classmethod
    def load(cls, model: str | None = None, *, queue: int = DEFAULT_QUEUE, out_dir: str | os.PathLike | None = None,
             lora_dirs: Sequence[str | os.PathLike] = (), controlnets: Sequence[str | tuple[str, Any]] = (),
             **load_kwargs) -> Service:
        """Load ``model`` (None: the embedded toy model) once and serve it."""
        from .. import api

        lora_dirs = check_lora_dirs(lora_dirs)
        check_controlnet_specs([s for s in controlnets if isinstance(s, str)])  # before the model loads
        return cls.serving(api.load(model, **load_kwargs), model, queue=queue, out_dir=out_dir, lora_dirs=lora_dirs,
                           controlnets=controlnets)

    @classmethod
    def serving(cls, adapter, model: str | None, *, queue: int = DEFAULT_QUEUE,
                out_dir: str | os.PathLike | None = None, lora_dirs: Sequence[str | os.PathLike] = (),
                controlnets: Sequence[str | tuple[str, Any]] = ()) -> Service:
        """Serve ``adapter``, loaded from ``model`` (its name in the page; None: the embedded toy model,
        the one model the composition metrics apply to), with the LoRAs of ``lora_dirs`` and the
        ControlNets of ``controlnets`` (``[NAME=]PATH_OR_HUB_ID`` texts or (name, network) pairs,
        loaded here once)."""
        from ..defaults import SHIPPED_MODEL

        toy = model is None or Path(str(model)).expanduser().resolve() == Path(SHIPPED_MODEL).resolve()
        label = "the embedded toy model" if model is None else str(model)
        return cls(adapter, DeviceQueue(queue), None if out_dir is None else Path(out_dir), label, toy,
                   check_lora_dirs(lora_dirs), declare_controlnets(adapter, controlnets))

    def close(self) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            tmp.cleanup()

    # ---------------------------------------------------------------- what the form offers
    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def generates(self) -> bool:
        """False for image-conditioned upscalers (sd-x4-upscaler): they only upscale."""
        return not getattr(self.adapter, "needs_image", False)

    @property
    def factor(self) -> int:
        return self.adapter.size_multiple

    def description(self) -> str:
        nh, nw = self.adapter.native_size
        return (f"{self.model_label} · {self.family}, native {nw}×{nh} px, sizes in multiples of {self.factor} px · "
                f"{self.adapter.device}, {str(self.adapter.dtype).replace('torch.', '')}")

    def methods(self) -> list[str]:
        """The registered methods that support the model's family."""
        from .. import methods

        return [n for n in methods.names() if methods.get(n).families is None or self.family in methods.get(n).families]

    def refining_methods(self) -> list[str]:
        from .. import methods

        return [n for n in self.methods() if methods.get(n).refines]

    def schedulers(self) -> list[str]:
        from ..schedulers import scheduler_names

        return ["default", *scheduler_names(self.adapter.scheduler_kind)]

    def size_presets(self) -> list[SizePreset]:
        """native, 2x and 4x each side, then the aspects (the short side native, the long one stretched)."""
        nh, nw = self.adapter.native_size
        f = self.factor
        snap = lambda v: max(f, int(round(v / f)) * f)  # noqa: E731
        out = [SizePreset(f"native {nw}×{nh}", nw, nh),
               SizePreset(f"2× side {2 * nw}×{2 * nh}", 2 * nw, 2 * nh),
               SizePreset(f"4× side {4 * nw}×{4 * nh}", 4 * nw, 4 * nh)]
        for a, b in ASPECTS:
            w, h = (snap(nh * a / b), nh) if a >= b else (nw, snap(nw * b / a))
            out.append(SizePreset(f"{a}:{b} {w}×{h}", w, h))
        return out

    def preset_for(self, width, height) -> str:
        for p in self.size_presets():
            if (p.width, p.height) == (width, height):
                return p.label
        return "custom"

    # ---------------------------------------------------------------- checks (the CLI's messages)
    def check_size(self, width, height) -> tuple[int, int]:
        from ..cli.inputs import check_multiple

        w, h = _pixels("width", width), _pixels("height", height)
        check_multiple(w, h, self.factor, "this model's pixel factor")
        self.adapter.check_size(h, w)
        return w, h

    def method_options(self, method: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Checked options of ``method`` (unknown names, wrong kinds, out of range: the CLI's messages)."""
        from .. import api

        api._method(method, options)  # the API's own check: a dict of names, each known and in range
        return dict(options or {})

    # ---------------------------------------------------------------- LoRAs, ControlNets, regions
    def loras(self) -> list[str]:
        """The names of the LoRA files the ``--lora-dir`` folders hold now."""
        return list(list_loras(self.lora_dirs))

    def controlnet_names(self) -> list[str]:
        return list(self.controlnets)

    def union_controlnets(self) -> bool:
        """Whether a declared ControlNet takes a control mode (a Union one)."""
        return any(c.union for c in self.controlnets.values())

    def check_loras(self, loras) -> tuple:
        """The LoRAs of a run: ``name[:scale]`` texts (a list, or one text of lines; empty: none),
        each a name the ``--lora-dir`` folders list, resolved to its file and checked as ``--lora``
        checks it (:func:`anysize.lora.check_loras`)."""
        from ..lora import Lora, check_loras, parse_lora

        if loras is None or loras == "":
            return ()
        if isinstance(loras, str):
            loras = loras.splitlines()
        if not isinstance(loras, (list, tuple)) or not all(isinstance(t, str) for t in loras):
            raise InvalidArgumentError(f"loras must be a list of 'name:scale' texts, got {loras!r}")
        texts = [t.strip() for t in loras if t.strip()]
        if not texts:
            return ()
        table = list_loras(self.lora_dirs)
        if not table:
            where = ("the --lora-dir folders hold no .safetensors file" if self.lora_dirs
                     else "start the app with --lora-dir DIR")
            raise InvalidArgumentError(f"no LoRAs are offered here ({where}); got {texts[0]!r}")
        out = []
        for text in texts:
            lora = parse_lora(text, "LoRA")
            check_choice("LoRA", lora.path, list(table))
            out += check_loras(Lora(str(table[lora.path]), lora.scale), f"LoRA {lora.path}")
        return tuple(out)

    def check_regions(self, regions, method: str, width: int, height: int, *, regions_file=None):
        """The regions of a run (:meth:`parse_regions`) checked against the width×height canvas, or
        None; refused for a method without region support, naming those with it."""
        from .. import methods as registry
        from .. import regions as _regions

        found = self.parse_regions(regions, regions_file)
        if found is None:
            return None
        check_choice("method", method, registry.names())
        _regions.check_method(registry.get(method))
        return _regions.check_regions(found, width, height)

    def parse_regions(self, regions, regions_file=None):
        """The regions given, or None: ``X,Y,W,H:prompt`` lines (:func:`anysize.regions.parse_region`),
        JSON text or a list of region objects / lines, then those of an uploaded JSON regions file;
        masks come inline (``mask_png``), never as a file of this machine."""
        import json

        from .. import regions as _regions

        found: list = []
        if isinstance(regions, str):
            text = regions.strip()
            if text.startswith(("[", "{")):
                try:
                    regions = json.loads(text)
                except json.JSONDecodeError as e:
                    raise InvalidArgumentError(f"the regions are not JSON: {e}") from None
                found += _regions.regions_from_data(regions, "the regions' JSON", mask_files=False)
            else:
                found += [_regions.parse_region(line) for line in text.splitlines() if line.strip()]
        elif isinstance(regions, (list, tuple, dict)):
            if regions:
                items = regions["regions"] if isinstance(regions, dict) and "regions" in regions else regions
                items = [items] if isinstance(items, dict) else items
                if not isinstance(items, (list, tuple)):
                    raise InvalidArgumentError("regions must be a list of region objects or X,Y,W,H:prompt texts")
                for item in items:
                    if isinstance(item, str) and not item.strip():
                        continue  # an empty line
                    found += ([_regions.parse_region(item)] if isinstance(item, str)
                              else _regions.regions_from_data([item], "a region", mask_files=False))
        elif regions is not None:
            raise InvalidArgumentError(f"regions must be X,Y,W,H:prompt lines or JSON region objects, got {regions!r}")
        if regions_file not in (None, ""):
            path = Path(os.fspath(regions_file))
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InvalidArgumentError(f"the regions file {path.name} is not JSON: {e}") from None
            found += _regions.regions_from_data(data, f"the regions file {path.name}", mask_files=False)
        return found or None

    def check_controls(self, controls, guess_mode=False, *, source_image=None) -> tuple[list, bool]:
        """The ControlNet units of a run -> (the :class:`anysize.Control` list, guess mode).

        ``controls``: a list of units ``{"model": NAME, "image": FILE, "scale", "start", "end",
        "mode"}`` (numbers may arrive as form floats; a unit whose model is "none" or empty is off),
        NAME one of the ``--controlnet`` names; checked by the API's own check
        (:func:`anysize.models.control.check`) before the run waits for the device. A unit without an
        image takes ``source_image`` (upscale: the tile ControlNet), else it is refused."""
        from ..cli.controls import parse_mode
        from ..models import control as _control

        if guess_mode is None or guess_mode == "":
            guess_mode = False
        if not isinstance(guess_mode, bool):
            raise InvalidArgumentError(f"control_guess_mode must be true or false, got {guess_mode!r}")
        out = []
        for i, unit in enumerate(control_units(controls)):
            what = f"ControlNet unit {i + 1}"
            if not isinstance(unit, dict):
                raise InvalidArgumentError(f"{what} must be an object with {', '.join(CONTROL_FIELDS)}, got {unit!r}")
            unknown = sorted(set(unit) - set(CONTROL_FIELDS))
            if unknown:
                raise InvalidArgumentError(f"{what}: unknown field {unknown[0]!r}; a unit has {', '.join(CONTROL_FIELDS)}")
            name = unit.get("model")
            if name in (None, "", NO_CONTROLNET):
                continue
            if not self.controlnets:
                raise InvalidArgumentError(f"{what}: no ControlNets are offered here (start the app with "
                                           f"--controlnet [NAME=]PATH); got {name!r}")
            check_choice("ControlNet", name, list(self.controlnets))
            image = unit.get("image")
            if image in (None, ""):
                if source_image is None:
                    raise InvalidArgumentError(f"{what} ({name}) has no control image: upload one")
                image = None
            else:
                image = os.fspath(image)
            number = lambda key, default: default if unit.get(key) in (None, "") else _float(f"{what} {key}", unit[key])  # noqa: E731
            out.append(_control.Control(self.controlnets[name].net, image, number("scale", 1.0), number("start", 0.0),
                                        number("end", 1.0), parse_mode(unit.get("mode"))))
        if not out and guess_mode:
            raise InvalidArgumentError("guess mode goes with a ControlNet unit, and none is on")
        _control.check(self.adapter, out, source_image=source_image)  # ranges, the image, the mode: the API's messages
        return out, guess_mode

    def _extras(self, loras, controls, control_guess_mode, *, source_image=None) -> dict[str, Any]:
        """The LoRA and ControlNet keywords of an api call (nothing for none), checked."""
        checked = self.check_loras(loras)
        control, guess = self.check_controls(controls, control_guess_mode, source_image=source_image)
        out: dict[str, Any] = {}
        if checked:
            out["lora"] = checked
        if control:
            out["control"], out["control_guess_mode"] = control, guess
        return out

    def _sampling(self, seed, steps, guidance, scheduler, tiled_vae) -> dict[str, Any]:
        """The shared sampling settings, read from form values (numbers arrive as floats, empty for
        "the model's") and checked by the API's own checks, before the run waits for the device."""
        from ..api import check_seed
        from ..options import require
        from ..schedulers import make_scheduler

        seed = check_seed(_integer("seed", 0 if seed is None or seed == "" else seed))
        steps = None if steps is None or steps == "" else require("steps", _integer("steps", steps), kind="int", low=1)
        guidance = (None if guidance is None or guidance == ""
                    else require("guidance", _float("guidance", guidance), kind="float", low=0))
        scheduler = scheduler or "default"
        check_choice("scheduler", scheduler, ["default", *_all_schedulers()])
        make_scheduler(self.adapter, scheduler)  # a flow scheduler on a U-Net model and the like
        tiled = TILED_VAE_MODES[check_choice("tiled-vae mode", tiled_vae or "auto", TILED_VAE_MODES)]
        return {"seed": seed, "steps": steps, "guidance": guidance, "scheduler": scheduler, "tiled_vae": tiled}

    # ---------------------------------------------------------------- runs
    def _callback(self, progress: ProgressFn | None, label: str) -> Callable | None:
        if progress is None:
            return None

        def step(info) -> None:
            where = info.stage or label
            progress(info.index + 1, info.num_steps, f"{where} {info.index + 1}/{info.num_steps}")

        return step

    def _waiting(self, progress: ProgressFn | None) -> Callable[[int], None] | None:
        if progress is None:
            return None
        return lambda ahead: progress(None, None, f"waiting for the device: {ahead} job{'s' if ahead != 1 else ''} ahead")

    def _save(self, result) -> Path:
        from ..output import save_png

        cfg = result.config_for(0)
        folder = self.out_dir / f"{self._run_prefix}-{next(self._runs):05d}"
        name = f"anysize-{cfg['method']}-{cfg['width']}x{cfg['height']}-s{cfg['seed']}.png"
        return save_png(result.images[0], folder / name, cfg)

    def _metrics(self, image, prompt: str) -> dict[str, Any] | None:
        if not self.toy:
            return None
        from ..toy.composition import analyse

        try:
            a = analyse(image, prompt, native_size=self.adapter.native_size[0])
        except AnysizeError:
            return {"error": "no toy metrics: the prompt names no object colour"}
        keys = ("n_objects", "n_other_objects", "prompt_colour", "prompt_shape", "colour", "shape", "colour_match",
                "shape_match", "fidelity")
        return {k: getattr(a, k) for k in keys}

    def _generate_args(self, prompt, negative_prompt, width, height) -> tuple[str, str | None, int, int]:
        from ..prompts import check_prompt

        if not self.generates:
            raise InvalidArgumentError(
                f"the {self.family} model enlarges images and cannot generate from text alone; use the Upscale tab "
                "(or the /upscale endpoint)")
        prompt = check_prompt(prompt if prompt is not None else "")
        if not prompt.strip():
            raise InvalidArgumentError("no prompt given: type what the image should show")
        negative = check_prompt(negative_prompt, "negative prompt") if negative_prompt else None
        w, h = self.check_size(width, height)
        return prompt, negative, w, h

    def generate(self, prompt: str, negative_prompt: str | None = None, *, width=None, height=None,
                 method: str = "direct", options: Mapping[str, Any] | None = None, seed=0, steps=None,
                 guidance=None, scheduler: str = "default", tiled_vae: str = "auto",
                 progress: ProgressFn | None = None, cancel: threading.Event | None = None, loras=None,
                 regions=None, regions_file=None, controls=None, control_guess_mode=False) -> RunOutput:
        """One image, written as ``anysize generate`` writes it; with LoRAs, regions and ControlNet
        units as :meth:`check_loras`, :meth:`check_regions` and :meth:`check_controls` take them."""
        from .. import api

        nh, nw = self.adapter.native_size
        prompt, negative, w, h = self._generate_args(prompt, negative_prompt, nw if width is None else width,
                                                     nh if height is None else height)
        options = self.method_options(method, options)
        s = self._sampling(seed, steps, guidance, scheduler, tiled_vae)
        extras = self._extras(loras, controls, control_guess_mode)
        checked_regions = self.check_regions(regions, method, w, h, regions_file=regions_file)
        if checked_regions is not None:
            extras["regions"] = checked_regions
        with self.queue.slot(cancel, self._waiting(progress)):
            result = api.generate(self.adapter, prompt, negative_prompt=negative, width=w, height=h, method=method,
                                  method_options=options, callback=self._callback(progress, method), cancel=cancel,
                                  progress=False, **s, **extras)
            if progress is not None:
                progress(None, None, "writing the PNG")
            path = self._save(result)
        return RunOutput(path, result.config_for(0), result.seconds, result.network_calls,
                         self._metrics(result.image, prompt))

    def compare(self, prompt: str, negative_prompt: str | None = None, *, methods: Sequence[str], width=None,
                height=None, options: Mapping[str, Mapping[str, Any]] | None = None, seed=0, steps=None,
                guidance=None, scheduler: str = "default", tiled_vae: str = "auto",
                progress: ProgressFn | None = None, cancel: threading.Event | None = None, loras=None,
                regions=None, regions_file=None, controls=None, control_guess_mode=False) -> list[CompareRow]:
        """Several methods on the same prompt, seed and size, one after another on the device, each
        with the same LoRAs, regions and ControlNet units.

        A method that cannot run at these settings (its family, a canvas its windows cannot cover,
        regions it does not take) gets a row saying why; the others still run.
        """
        from .. import api
        from .. import methods as registry

        nh, nw = self.adapter.native_size
        prompt, negative, w, h = self._generate_args(prompt, negative_prompt, nw if width is None else width,
                                                     nh if height is None else height)
        if isinstance(methods, str):
            methods = [methods]
        if not isinstance(methods, (list, tuple)) or not methods:
            raise InvalidArgumentError(f"choose at least one method to compare, a list of: {', '.join(self.methods())}")
        methods = list(dict.fromkeys(methods))
        options = dict(options or {})
        for name in options:
            check_choice("method", name, registry.names())
        checked = {m: self.method_options(m, options.get(m)) for m in methods}
        s = self._sampling(seed, steps, guidance, scheduler, tiled_vae)
        extras = self._extras(loras, controls, control_guess_mode)
        found = self.parse_regions(regions, regions_file)
        if found is not None:  # bad regions fail the comparison; a method without region support gets its row
            from .. import regions as _regions

            found = _regions.check_regions(found, w, h)
        rows = []
        with self.queue.slot(cancel, self._waiting(progress)):
            for i, method in enumerate(methods):
                label = f"[{i + 1}/{len(methods)}] {method}"

                def step(info, label=label):
                    if progress is not None:
                        where = f"{label} · {info.stage}" if info.stage else label
                        progress(info.index + 1, info.num_steps, f"{where} {info.index + 1}/{info.num_steps}")

                more = dict(extras) if found is None else dict(extras, regions=found)
                try:
                    result = api.generate(self.adapter, prompt, negative_prompt=negative, width=w, height=h,
                                          method=method, method_options=checked[method], callback=step,
                                          cancel=cancel, progress=False, **s, **more)
                except AnysizeError as e:  # this method cannot run here (or ran out of memory): say why, run the others
                    rows.append(CompareRow(method, error=e.for_app() if callable(getattr(e, "for_app", None)) else str(e)))
                    continue
                path = self._save(result)
                rows.append(CompareRow(method, RunOutput(path, result.config_for(0), result.seconds,
                                                         result.network_calls, self._metrics(result.image, prompt))))
        return rows

    def upscale(self, image, *, scale=None, width=None, height=None, method: str = "fstd",
                options: Mapping[str, Any] | None = None, strength=None, noise_level=None, prompt: str = "",
                negative_prompt: str | None = None, seed=0, steps=None, guidance=None, scheduler: str = "default",
                tiled_vae: str = "auto", progress: ProgressFn | None = None,
                cancel: threading.Event | None = None, loras=None, regions=None, regions_file=None, controls=None,
                control_guess_mode=False) -> RunOutput:
        """Enlarge ``image`` (a path) as ``anysize upscale`` does: ``scale`` or an exact ``width`` × ``height``;
        with LoRAs, regions (boxes in pixels of the enlarged image) and ControlNet units (a unit without
        an image gets the source image: a tile ControlNet)."""
        from .. import api
        from .. import methods as registry
        from ..images import load_image
        from ..prompts import check_prompt
        from ..sampling import check_strength

        if image is None or image == "":
            raise InvalidArgumentError("no image given: upload the image to enlarge")
        check_choice("method", method, registry.names())
        if not registry.get(method).refines:
            raise InvalidArgumentError(
                f"method {method!r} makes its own canvas in several stages and cannot upscale an image; "
                f"use one of: {', '.join(self.refining_methods())}")
        options = self.method_options(method, options)
        size = None
        if scale is None or scale == "":
            if width in (None, "") or height in (None, ""):
                raise InvalidArgumentError("give the target as a scale or as width and height")
            size = self.check_size(width, height)
        else:
            scale = _float("scale", scale)
            if not (math.isfinite(scale) and scale > 0):
                raise InvalidArgumentError(f"scale must be a number > 0, got {scale:g}")
        if strength is not None and strength != "":
            strength = check_strength(_float("strength", strength))
        else:
            strength = None
        noise_level = None if noise_level is None or noise_level == "" else _integer("noise_level", noise_level)
        prompt = check_prompt(prompt or "")
        negative = check_prompt(negative_prompt, "negative prompt") if negative_prompt else None
        s = self._sampling(seed, steps, guidance, scheduler, tiled_vae)
        source = load_image(os.fspath(image))  # not an image: the CLI's message, before the queue
        extras = self._extras(loras, controls, control_guess_mode, source_image=source)
        found = self.parse_regions(regions, regions_file)
        if found is not None:  # checked here as api.upscale checks them, before the run waits for the device
            from .. import regions as _regions

            _regions.check_method(registry.get(method))
            if not self.generates:
                raise InvalidArgumentError("regional prompts are not supported with image-conditioned upscalers "
                                           "(sd-x4-upscaler)")
            th, tw, _ = api.upscale_size((source.height, source.width), self.adapter.size_multiple, scale=scale,
                                         size=size)
            extras["regions"] = _regions.check_regions(found, tw, th)
        with self.queue.slot(cancel, self._waiting(progress)):
            result = api.upscale(self.adapter, os.fspath(image), scale=scale, size=size, method=method, method_options=options,
                                 strength=strength, noise_level=noise_level, prompt=prompt, negative_prompt=negative,
                                 callback=self._callback(progress, method), cancel=cancel, progress=False, **s,
                                 **extras)
            path = self._save(result)
        return RunOutput(path, result.config_for(0), result.seconds, result.network_calls)

    # ---------------------------------------------------------------- PNG in
    def _form_extras(self, c: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
        """The LoRA lines, regions text and ControlNet units of an anysize config, as the form takes
        them; ``notes`` gets what cannot be restored here (a LoRA no --lora-dir lists, a ControlNet
        that is not declared, the control images, which the PNG does not hold)."""
        import json

        from ..lora import HASH_DIGITS, file_sha256
        from ..models.control import UNION_MODES
        from ..regions import format_region

        table = list_loras(self.lora_dirs)
        lines, missing = [], []
        for rec in c.get("loras") or []:
            name = _listed_lora(rec, table)
            label = Path(str(rec.get("path") or rec.get("file") or "?").replace("\\", "/")).name
            if name is None:
                missing.append(label)
                continue
            lines.append(f"{name}:{float(rec.get('scale', 1.0)):g}")
            sha = str(rec.get("sha256") or "")
            if sha and not file_sha256(table[name]).startswith(sha.lower()):
                notes.append(f"the LoRA {name} here is not the file that made it (SHA-256 "
                             f"{file_sha256(table[name])[:HASH_DIGITS]}, the PNG's {sha})")
        if missing:
            notes.append(f"LoRA {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} in no --lora-dir folder of "
                         "this app; left out")
        regions = list(c.get("regions") or [])
        texts = [format_region(r) for r in regions]
        if all(t is not None for t in texts):
            region_text = "\n".join(texts)
        else:  # masks, negatives, weights ...: only JSON holds them (masks inline)
            region_text = json.dumps(regions)
        units, lost_images, undeclared = [], [], []
        mode_names = {}
        for mode_name, index in UNION_MODES.items():
            mode_names.setdefault(index, mode_name)
        for rec in c.get("controls") or []:
            model = str(rec.get("model") or "")
            name = next((d.name for d in self.controlnets.values()
                         if model in (d.name, d.source, d.net.config.get("_name_or_path", ""))), None)
            if name is None:
                undeclared.append(model)
                continue
            mode = rec.get("mode")
            units.append({"model": name, "scale": rec.get("scale", 1.0), "start": rec.get("start", 0.0),
                          "end": rec.get("end", 1.0), "mode": mode_names.get(mode, mode) if mode is not None else None})
            if rec.get("image") != "(the source image)":
                lost_images.append(rec.get("image") or "an image")
        if undeclared:
            notes.append(f"ControlNet {', '.join(undeclared)} is not one of this app's (--controlnet); its unit is "
                         "left off")
        if lost_images:
            notes.append(f"the control image{'s' if len(lost_images) > 1 else ''} ({', '.join(lost_images)}) "
                         f"{'are' if len(lost_images) > 1 else 'is'} not in the PNG: upload {'them' if len(lost_images) > 1 else 'it'} again")
        return {"loras": lines, "regions": region_text, "controls": units,
                "control_guess_mode": bool(c.get("control_guess_mode", False))}

    def read_png(self, path) -> dict[str, Any]:
        """The form values stored in a PNG: anysize's JSON chunk, else an A1111 ``parameters`` chunk.

        Returns ``prompt``, ``negative_prompt``, ``width``, ``height``, ``seed``, ``steps``,
        ``guidance``, ``scheduler``, ``method`` and ``options`` where the PNG has them, and ``note``:
        where they came from and what was left as it was.
        """
        from .. import methods as registry
        from ..output import parse_infotext, read_metadata, read_parameters

        if path is None or path == "":
            raise InvalidArgumentError("no PNG given")
        path = os.fspath(path)
        name = os.path.basename(path)
        parameters = read_parameters(path)  # not an image: "cannot read ... as an image"
        try:
            c = read_metadata(path)
        except InvalidArgumentError:
            c = None
        if c is not None:
            out = {
                "prompt": c.get("prompt", (c.get("prompts") or [""])[0]),
                "negative_prompt": c.get("negative_prompt") or ((c.get("negative_prompts") or [""])[0] or ""),
                "width": c.get("width"), "height": c.get("height"),
                "seed": c.get("seed", (c.get("seeds") or [0])[0]), "steps": c.get("steps"),
                "guidance": c.get("guidance"),
                "scheduler": c.get("scheduler") if c.get("scheduler") in self.schedulers() else "default",
                "method": c.get("method"), "options": dict(c.get("method_options") or {}),
            }
            notes = [f"read anysize's parameters from {name}"]
            if c.get("upscale"):
                notes.append(f"it was upscaled from {c['upscale'].get('source') or 'an image'} "
                             f"(strength {c['upscale'].get('strength')})")
            out.update(self._form_extras(c, notes))
        elif parameters is not None:
            parsed = parse_infotext(parameters)
            p = parsed["params"]
            out = {"prompt": parsed["prompt"], "negative_prompt": parsed["negative_prompt"]}
            for key, field_, conv in (("Steps", "steps", int), ("CFG scale", "guidance", float), ("Seed", "seed", int)):
                if key in p:
                    try:
                        out[field_] = conv(float(p[key])) if conv is int else conv(p[key])
                    except ValueError:
                        pass
            if "Size" in p and "x" in p["Size"]:
                try:
                    out["width"], out["height"] = (int(v) for v in p["Size"].lower().split("x", 1))
                except ValueError:
                    pass
            if p.get("Sampler") in self.schedulers():
                out["scheduler"] = p["Sampler"]
            notes = [f"read the A1111 parameters of {name}"]
            if p.get("Sampler") and p.get("Sampler") not in self.schedulers():
                notes.append(f"its sampler {p['Sampler']!r} is not one of anysize's; the scheduler was left as it was")
            method = p.get("Method")
            if method in registry.names():
                from .controls import option_from_text

                specs = {s.name: s for s in registry.get(method).Options.specs()}
                out["method"] = method
                out["options"] = {k: option_from_text(specs[k], v) for k, v in p.items() if k in specs}
        else:
            raise InvalidArgumentError(f"{name} has no generation parameters (neither anysize's nor A1111's)")
        if out.get("method") is not None and out["method"] not in self.methods():
            notes.append(f"its method {out['method']!r} does not run on this {self.family} model; the method was left "
                         "as it was")
            out.pop("method")
            out.pop("options", None)
        out["note"] = "; ".join(notes)
        return out


# ------------------------------------------------------------------------------------------ helpers


def control_units(controls) -> list:
    """The ``controls`` of an API call as a list of units (one unit alone, or none: empty)."""
    if controls is None or controls == "":
        return []
    if isinstance(controls, dict):
        return [controls]
    if not isinstance(controls, (list, tuple)):
        raise InvalidArgumentError(f"controls must be a list of ControlNet units {{{', '.join(CONTROL_FIELDS)}}}, "
                                   f"got {controls!r}")
    return list(controls)


def units_with_images(controls, images) -> list:
    """The API's ControlNet units with their images: the i-th uploaded file of ``images`` belongs to
    the i-th unit of ``controls`` (as the i-th ``--control-image`` to the i-th ``--controlnet``); a
    unit never names a file itself (the server's files are not the client's to choose)."""
    controls = control_units(controls)
    images = [] if images in (None, "") else [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if len(images) > len(controls):
        raise InvalidArgumentError(f"{len(images)} control_images for {len(controls)} ControlNet unit"
                                   f"{'s' if len(controls) != 1 else ''}: give one image per unit (or none for upscale)")
    out = []
    for i, unit in enumerate(controls):
        if isinstance(unit, dict) and "image" in unit:
            raise InvalidArgumentError(f"ControlNet unit {i + 1}: its image goes in control_images (an uploaded file), "
                                       "not in the unit")
        if isinstance(unit, dict) and i < len(images):
            unit = {**unit, "image": os.fspath(images[i])}
        out.append(unit)
    return out


def _listed_lora(record: Mapping[str, Any], table: Mapping[str, Path]) -> str | None:
    """The listed LoRA name of a metadata record: the same file, else the same file name (a record of
    ``--lora FOLDER``: that folder's name and its weights file's)."""
    path = str(record.get("path") or "")
    if path:
        try:
            real = Path(path).expanduser().resolve()
            for name, p in table.items():
                if p.resolve() == real:
                    return name
        except OSError:
            pass
    base = Path(path.replace("\\", "/")).name
    for name, p in table.items():
        if p.name == base:
            return name
    weights = str(record.get("file") or "")
    for name, p in table.items():
        if weights and p.name == weights and p.parent.name == base:
            return name
    return None


def random_seed() -> int:
    return secrets.randbelow(2**32)


def _all_schedulers() -> list[str]:
    from ..schedulers import SCHEDULERS

    return list(SCHEDULERS)


def _integer(name: str, v) -> int:
    if isinstance(v, bool):
        raise InvalidArgumentError(f"{name} must be an integer, got {v!r}")
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise InvalidArgumentError(f"{name} must be an integer, got {v!r}") from None
    if isinstance(v, float):
        if not v.is_integer():
            raise InvalidArgumentError(f"{name} must be an integer, got {v:g}")
        v = int(v)
    if not isinstance(v, int):
        raise InvalidArgumentError(f"{name} must be an integer, got {v!r}")
    return v


def _float(name: str, v) -> float:
    if isinstance(v, bool):
        raise InvalidArgumentError(f"{name} must be a number, got {v!r}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number, got {v!r}") from None


def _pixels(name: str, v) -> int:
    if v is None or v == "":
        raise InvalidSizeError(f"{name} is empty: give it in pixels")
    try:
        v = _integer(name, v)
    except InvalidArgumentError:
        raise InvalidSizeError(f"{name} must be an integer number of pixels, got {v!r}") from None
    if v <= 0:
        raise InvalidSizeError(f"{name} must be a positive number of pixels, got {v}")
    return v


__all__ = ["ASPECTS", "Busy", "CONTROL_FIELDS", "CONTROL_UNITS", "CompareRow", "DEFAULT_QUEUE", "DeclaredControlNet",
           "DeviceQueue", "HISTORY_LIMIT", "Jobs", "NO_CONTROLNET", "RunOutput", "Service", "SizePreset",
           "TILED_VAE_CHOICES", "check_controlnet_specs", "check_lora_dirs", "declare_controlnets", "list_loras",
           "metrics_text", "parse_controlnet_spec", "random_seed", "units_with_images"]
