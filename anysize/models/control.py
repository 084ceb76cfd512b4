"""ControlNet inside every method: the user's controls, checked, and the run state that applies them.

A :class:`Control` names a ControlNet (a loaded diffusers ControlNet, or a folder / hub id that
``from_pretrained`` reads), a control image, and its ``scale`` and guidance window ``[start, end)``
as the diffusers ControlNet pipelines define them: at step i of n the ControlNet is applied with
``scale`` when ``i/n >= start`` and ``(i+1)/n <= end``, else not at all (diffusers' ``controlnet_keep``;
they multiply the residuals by 0, anysize skips the call, which gives the same sum). Several
controls add their residuals, as diffusers' ``MultiControlNetModel``.

:func:`prepare` turns them into :class:`Controls`, the *run's* state: it rides in the run's
conditioning (``PromptEmbeds.extra[CONTROLS]``, the same object for every image and both CFG
halves), never on the adapter or the method, so one adapter can serve two runs at once. The
adapter's ``predict`` asks it for the control of exactly the region each network call sees
(:meth:`Controls.inputs`): the control image is resized to the call's latent canvas (once per canvas
size and run: each stage of a multi-stage method gets the *original* image resized to its own
canvas), then cropped at the call's window, or gathered through the call's
:class:`~anysize.models.control_pixels.ControlView`. The step comes from the sampling loop
(:func:`anysize.sampling.current_step`), so the guidance window needs no host synchronisation; it
applies to the steps of each sampling loop (each stage of a multi-stage method, an img2img pass's
partial schedule), as diffusers' img2img ControlNet pipelines apply it to the steps they run.

Deliberate differences from the diffusers ControlNet pipelines (each output is otherwise the same
to float rounding at the native size, ``tests/test_controlnet.py::*equal_diffusers``):

* steps outside a control's window skip its call instead of multiplying its residuals by 0;
* guess mode with CFG runs the ControlNet on both halves and zeroes the negative half's residuals
  (diffusers runs it on the positive half only): the same sums, and no boolean row selection that
  would make the host wait for the device;
* FLUX / SD3 control images are encoded to the posterior's mean (diffusers: a sample; SD3's from
  the global RNG), so a control adds no randomness and touches no global RNG state;
* any ControlNet with ``global_pool_conditions`` turns guess mode on (diffusers reads the first one).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from . import control_pixels

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from .base import Conditioning, ModelAdapter, PromptEmbeds, Window

torch = lazy_module("torch")

#: the key of the run's :class:`Controls` in ``PromptEmbeds.extra`` (unbatched: one for all images)
CONTROLS = "controls"
#: 1 for rows of the positive prompt, 0 for the negative one: guess mode controls the positive half only
CONTROL_POSITIVE = "control_positive"
#: the per-call control inputs the adapter's ``predict`` hands its ``_forward``
CONTROL_INPUTS = "control_inputs"

#: ControlNet classes by family (diffusers names)
CLASSES = {
    "sd1": ("ControlNetModel",),
    "sd2": ("ControlNetModel",),
    "sdxl": ("ControlNetModel", "ControlNetUnionModel"),
    "sd3": ("SD3ControlNetModel",),
    "flux": ("FluxControlNetModel",),
}

#: the control modes of the SDXL Union ControlNets (xinsir/controlnet-union-sdxl-1.0 promax), by name
UNION_MODES = {"openpose": 0, "depth": 1, "hed": 2, "pidi": 2, "scribble": 2, "ted": 2, "canny": 3, "lineart": 3,
               "anime_lineart": 3, "mlsd": 3, "normal": 4, "segment": 5, "tile": 6, "repaint": 7}


@dataclass(frozen=True)
class Control:
    """One ControlNet with its control image, as the user gives it.

    ``model``: a loaded diffusers ControlNet (``ControlNetModel``, ``ControlNetUnionModel``,
    ``SD3ControlNetModel``, ``FluxControlNetModel``) or a folder / hub id to load it from.
    ``image``: a PIL image or an image file (:func:`anysize.images.load_image`), or None for
    :func:`anysize.upscale`'s tile control (the source image). ``scale`` >= 0; the ControlNet acts
    on steps i with ``start <= i/n`` and ``(i+1)/n <= end`` (0 <= start < end <= 1). ``mode``: the
    control mode of a Union ControlNet (an index or a name of :data:`UNION_MODES`), else None.
    """

    model: Any
    image: Any = None
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: int | str | None = None


@dataclass(eq=False)
class ActiveControl:
    """A checked control of one run: the loaded network, the RGB image and their settings."""

    net: Any
    image: Any  # PIL RGB image
    scale: float
    start: float
    end: float
    mode: int | None
    record: dict  # what the metadata says about it

    def keep(self, index: int, total: int) -> bool:
        """diffusers' ``controlnet_keep`` at step ``index`` of ``total``."""
        return not (index / total < self.start or (index + 1) / total > self.end)


@dataclass(eq=False)
class Controls:
    """The controls of one run, with their control images prepared per latent canvas size."""

    items: tuple[ActiveControl, ...]
    #: diffusers' ``guess_mode``: with CFG only the positive half gets the residuals (and the
    #: ControlNet scales them by depth); forced on by a ControlNet with ``global_pool_conditions``
    guess_mode: bool
    #: (item, latent canvas) -> the item's control at that canvas, (1, C, H·k, W·k)
    prepare_canvas: Callable[[ActiveControl, tuple[int, int]], Tensor]
    factor: int  # k: control pixels per latent pixel
    position: Callable[[], Any]  # the sampling loop's step position (None outside a loop)
    cache: dict = field(default_factory=dict)

    def canvas(self, item: ActiveControl, canvas: tuple[int, int]) -> Tensor:
        key = (id(item), tuple(canvas))
        image = self.cache.get(key)
        if image is None:
            image = self.cache[key] = self.prepare_canvas(item, tuple(canvas))
        return image

    def active(self) -> list[ActiveControl]:
        """The controls acting at the loop's current step (all of them outside a loop)."""
        pos = self.position()
        if pos is None:
            return list(self.items)
        return [c for c in self.items if c.keep(pos.index, pos.total)]

    def inputs(self, windows: Sequence[Window], n: int, view=None) -> list[tuple[ActiveControl, Tensor]]:
        """(control, (n, C, h·k, w·k) control of every sample) for each control acting now.

        ``windows``: one window for all n samples, or one per sample; ``view`` (a
        :class:`~anysize.models.control_pixels.ControlView`) instead maps every input pixel to the canvas.
        """
        out = []
        for item in self.active():
            if view is not None:
                image = control_pixels.gather(self.canvas(item, view.canvas), view, self.factor)
            elif len(windows) == 1:
                w = windows[0]
                image = control_pixels.crop(self.canvas(item, w.canvas), w, self.factor)
                image = image.expand(n, *image.shape[1:])
            else:
                image = torch.cat([control_pixels.crop(self.canvas(item, w.canvas), w, self.factor) for w in windows])
            out.append((item, image))
        return out

    def describe(self) -> list[dict]:
        return [dict(c.record) for c in self.items]


def of(embeds: PromptEmbeds) -> Controls | None:
    """The run's controls carried by these embeddings, or None."""
    return embeds.extra.get(CONTROLS)


def in_run(cond: Conditioning | None) -> bool:
    """Whether the run of this conditioning has controls (methods build control views only then)."""
    return cond is not None and of(cond.positive) is not None


def view_kwargs(view) -> dict:
    """``{"view": view}``, or nothing without one: callers that wrap ``predict`` need not know it."""
    return {} if view is None else {"view": view}


def attach(cond: Conditioning, controls: Controls | None) -> Conditioning:
    """``cond`` carrying ``controls`` (the same object in both CFG halves; a 1/0 row flag for guess mode)."""
    from .base import Conditioning, PromptEmbeds

    if controls is None:
        return cond

    def add(e: PromptEmbeds | None, positive: float) -> PromptEmbeds | None:
        if e is None:
            return None
        flag = torch.full((e.batch,), positive, device=e.embeds.device, dtype=e.embeds.dtype)
        return PromptEmbeds(e.embeds, e.pooled, {**e.extra, CONTROLS: controls, CONTROL_POSITIVE: flag},
                            e.unbatched | {CONTROLS})

    return Conditioning(add(cond.positive, 1.0), add(cond.negative, 0.0), cond.guidance_scale, cond.network_guidance)


# ------------------------------------------------------------------------------------------ checking


def check(adapter: ModelAdapter, controls, *, source_image=None) -> list[ActiveControl]:
    """The user's ``controls`` (a :class:`Control` or a list of them) checked and loaded for ``adapter``.

    ``source_image`` (an RGB PIL image) stands in for a control without an image (the upscale tile
    control); without one such a control is an error. A ControlNet named by a path or hub id is
    loaded with :func:`load_controlnet`.
    """
    if controls is None:
        return []
    if isinstance(controls, Control):
        controls = [controls]
    if isinstance(controls, (str, bytes)) or not isinstance(controls, Sequence):
        raise InvalidArgumentError(
            f"control must be an anysize.Control or a list of them, got {type(controls).__name__}"
        )
    classes = CLASSES.get(adapter.family)
    if controls and classes is None:
        raise InvalidArgumentError(
            f"ControlNet works with the {', '.join(CLASSES)} families, not with the {adapter.family} model"
        )
    out = []
    for i, c in enumerate(controls):
        what = f"control {i + 1}"
        if not isinstance(c, Control):
            raise InvalidArgumentError(f"{what} must be an anysize.Control(model, image, ...), got {type(c).__name__}")
        scale = _number(f"{what} scale", c.scale, 0.0, None)
        start = _number(f"{what} start", c.start, 0.0, 1.0)
        end = _number(f"{what} end", c.end, 0.0, 1.0)
        if start >= end:
            raise InvalidArgumentError(f"{what}: start {start} must be below end {end} (both in [0, 1])")
        image, image_record = _image(c.image, source_image, what)  # before a (long) load
        name = c.model if isinstance(c.model, (str, os.PathLike)) else None
        net = load_controlnet(c.model, classes, adapter) if name is not None else c.model
        check_fits(adapter, net, what)
        mode = _mode(net, c.mode, what)
        label = os.fspath(name) if name is not None else (net.config.get("_name_or_path", "") or type(net).__name__)
        record = {"model": label, **image_record, "scale": scale, "start": start, "end": end}
        if mode is not None:
            record["mode"] = mode
        out.append(ActiveControl(net, image, scale, start, end, mode, record))
    return out


def _number(what: str, v, low: float, high: float | None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise InvalidArgumentError(f"{what} must be a number, got {v!r}")
    if v < low or (high is not None and v > high):
        rng = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise InvalidArgumentError(f"{what} must be {rng}, got {v}")
    return float(v)


def _mode(net, mode, what: str) -> int | None:
    union = type(net).__name__ == "ControlNetUnionModel"
    if not union:
        if mode is not None:
            raise InvalidArgumentError(f"{what}: a control mode goes with a Union ControlNet, not with {type(net).__name__}")
        return None
    if mode is None:
        raise InvalidArgumentError(
            f"{what}: a Union ControlNet needs a control mode: an index below {net.config.num_control_type} "
            f"or one of {', '.join(UNION_MODES)}"
        )
    if isinstance(mode, str):
        if mode not in UNION_MODES:
            raise InvalidArgumentError(f"{what}: unknown control mode {mode!r}; valid: {', '.join(UNION_MODES)}")
        mode = UNION_MODES[mode]
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode < net.config.num_control_type:
        raise InvalidArgumentError(f"{what}: control mode must be an index in [0, {net.config.num_control_type}), got {mode!r}")
    return mode


def _image(image, source_image, what: str):
    """(RGB PIL image, metadata) of a control image: a file (named with its SHA-256) or a PIL image."""
    from ..images import load_image

    if image is None:
        if source_image is None:
            raise InvalidArgumentError(f"{what} has no control image (give image=..., or --control-image)")
        return source_image, {"image": "(the source image)", "image_size": list(source_image.size)}
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
        except OSError as e:
            raise InvalidArgumentError(f"{what}: cannot read the control image {path}: {e.strerror or e}") from None
        rgb = load_image(path)
        return rgb, {"image": os.path.basename(path), "image_sha256": digest, "image_size": list(rgb.size)}
    if hasattr(image, "mode") and hasattr(image, "size") and hasattr(image, "convert"):
        rgb = load_image(image)
        digest = hashlib.sha256(rgb.tobytes()).hexdigest()  # of the RGB pixels: a PIL image has no file
        name = os.path.basename(getattr(image, "filename", "") or "")
        return rgb, {"image": name, "image_pixels_sha256": digest, "image_size": list(rgb.size)}
    raise InvalidArgumentError(f"{what}: the control image must be a PIL image or an image file, got {type(image).__name__}")


def controlnet_family(net) -> str | None:
    """The family a ControlNet belongs to, from its class and config (None: not a ControlNet)."""
    name = type(net).__name__
    cfg = getattr(net, "config", {})
    if name == "SD3ControlNetModel":
        return "sd3"
    if name == "FluxControlNetModel":
        return "flux"
    if name == "ControlNetUnionModel":
        return "sdxl"
    if name == "ControlNetModel":
        if cfg.get("addition_embed_type") == "text_time":
            return "sdxl"
        return "sd1/sd2"
    return None


def check_fits(adapter: ModelAdapter, net, what: str = "the ControlNet") -> None:
    """Refuse a ControlNet of another family, or one whose widths do not match this model's network."""
    family = controlnet_family(net)
    if family is None:
        raise InvalidArgumentError(
            f"{what} must be a diffusers ControlNet ({', '.join(sorted({c for v in CLASSES.values() for c in v}))}), "
            f"got {type(net).__name__}"
        )
    fam = adapter.family
    if fam not in family.split("/"):
        raise InvalidArgumentError(f"{what} is a {family} ControlNet ({type(net).__name__}) and cannot control the {fam} model")
    if fam == "flux" and (getattr(net, "input_hint_block", None) is not None or net.config.get("num_mode")):
        raise InvalidArgumentError(
            f"{what}: XLabs-style (input_hint_block) and Union FLUX ControlNets are not supported yet; "
            "use an InstantX-style FluxControlNetModel"
        )
    cfg, ncfg = net.config, adapter.network.config
    keys = ("cross_attention_dim", "in_channels") if fam in ("sd1", "sd2", "sdxl") else ("joint_attention_dim", "in_channels")
    for key in keys:
        if key in cfg and key in ncfg and cfg[key] != ncfg[key]:
            raise InvalidArgumentError(
                f"{what} has {key} {cfg[key]} but the {fam} model's network has {ncfg[key]}: it was trained for another model"
            )


def load_controlnet(path, classes: Sequence[str], adapter: ModelAdapter):
    """A ControlNet from a folder or hub id, in the class its config names (one of ``classes``),
    on the adapter's device and in its dtype."""
    import json

    import diffusers

    name = os.fspath(path)
    cls_name = classes[0]
    config = os.path.join(name, "config.json")
    if os.path.isdir(name):
        try:
            with open(config) as fh:
                cls_name = json.load(fh).get("_class_name", cls_name)
        except (OSError, ValueError) as e:
            raise InvalidArgumentError(f"cannot read the ControlNet config {config}: {e}") from None
    elif os.path.exists(name):
        raise InvalidArgumentError(f"the ControlNet {name} is a file; give its folder (with config.json) or a hub id")
    if cls_name not in classes:
        raise InvalidArgumentError(
            f"the ControlNet {name} is a {cls_name}, which cannot control the {adapter.family} model "
            f"(use a {' or '.join(classes)})"
        )
    try:
        net = getattr(diffusers, cls_name).from_pretrained(name, torch_dtype=adapter.dtype)
    except (OSError, ValueError, EnvironmentError) as e:
        raise InvalidArgumentError(f"cannot load the ControlNet {name}: {str(e).splitlines()[0]}") from None
    return net.to(adapter.device).eval()


def prepare(adapter: ModelAdapter, items: list[ActiveControl], *, guess_mode: bool = False,
            position: Callable[[], Any] | None = None) -> Controls | None:
    """The run state of checked controls on ``adapter`` (None without controls)."""
    if not items:
        return None
    if position is None:
        from ..sampling import current_step as position
    pooled = any(c.net.config.get("global_pool_conditions", False) for c in items)
    return Controls(tuple(items), bool(guess_mode) or pooled, adapter.control_canvas, adapter.control_factor, position)
