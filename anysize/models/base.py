"""The small surface every model family shares.

An adapter wraps a loaded diffusers pipeline and knows exactly one family. It encodes prompts,
runs *one* network call on a latent window of the canvas in the model's own parametrisation
(epsilon, v or flow velocity), converts between that parametrisation and x0 through the
scheduler's own tables, and encodes/decodes with the VAE (tiled above a size). It knows no
method: methods see only this surface.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..cancel import check_cancelled
from ..devices import is_out_of_memory, release_memory, upload
from ..errors import InvalidArgumentError, InvalidSizeError
from ..lazy import lazy_module
from ..noise import NoiseSpace
from ..prompts import check_prompts
from . import control
from .runtime import Runtime, attention

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from .control_pixels import ControlView

torch = lazy_module("torch")


@dataclass(frozen=True)
class Window:
    """A rectangle of the latent canvas, in latent pixels.

    ``canvas`` is the (height, width) of the whole latent canvas the window is cut from; adapters
    use it for conditioning that depends on where the window sits (SDXL crop coordinates, FLUX
    position ids, SD3 position embeddings).
    """

    top: int
    left: int
    height: int
    width: int
    canvas: tuple[int, int]

    @classmethod
    def full(cls, height: int, width: int) -> "Window":
        return cls(0, 0, height, width, (height, width))

    @property
    def bottom(self) -> int:
        return self.top + self.height

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def crop(self, x: Tensor) -> Tensor:
        """The window's part of a (..., H, W) canvas tensor."""
        return x[..., self.top : self.bottom, self.left : self.right]


@dataclass
class PromptEmbeds:
    """Encoded prompts of one kind (positive or negative) for a batch of images.

    ``embeds`` is the sequence the network cross-attends to; ``pooled`` the pooled vector for the
    families that use one (SDXL, SD3, FLUX); ``extra`` holds any other per-prompt tensor an adapter
    needs (FLUX text position ids). All tensors have the batch as their first dimension except
    those listed in ``unbatched``.
    """

    embeds: Tensor
    pooled: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    unbatched: frozenset[str] = frozenset()

    @property
    def batch(self) -> int:
        return self.embeds.shape[0]

    def cat(self, other: "PromptEmbeds") -> "PromptEmbeds":
        def join(a, b):
            return None if a is None else torch.cat([a, b])

        extra = {
            k: (v if k in self.unbatched else torch.cat([v, other.extra[k]])) for k, v in self.extra.items()
        }
        return PromptEmbeds(torch.cat([self.embeds, other.embeds]), join(self.pooled, other.pooled), extra, self.unbatched)

    def repeat(self, n: int) -> "PromptEmbeds":
        """The same prompts repeated n times along the batch (e.g. for n windows in one call)."""
        if n == 1:
            return self

        def rep(v):
            return None if v is None else v.repeat_interleave(n, dim=0)

        extra = {k: (v if k in self.unbatched else rep(v)) for k, v in self.extra.items()}
        return PromptEmbeds(rep(self.embeds), rep(self.pooled), extra, self.unbatched)


@dataclass
class Conditioning:
    """Everything the network needs besides the latents, for a batch of ``batch`` images.

    With classifier-free guidance (``negative`` set), the guided prediction is
    ``uncond + scale * (cond - uncond)``, computed from one batched call on [negative; positive]
    exactly as the diffusers pipelines do (two calls where that one does not fit the device's
    memory). ``network_guidance`` is the distilled guidance value fed into the network itself
    (FLUX.1-dev), independent of CFG.
    """

    positive: PromptEmbeds
    negative: PromptEmbeds | None = None
    guidance_scale: float = 1.0
    network_guidance: float | None = None
    #: the run's regional prompts (an :class:`anysize.regions.RegionPlan`), read by the window methods; None: none
    regions: Any = None

    @property
    def batch(self) -> int:
        return self.positive.batch

    @property
    def do_cfg(self) -> bool:
        return self.negative is not None

    def for_cfg(self) -> PromptEmbeds:
        """The batched [negative; positive] embeddings for one CFG network call."""
        return self.negative.cat(self.positive) if self.do_cfg else self.positive


class ModelAdapter:
    """Base class: shared logic for all families. Subclasses fill in the family specifics."""

    family: str = ""
    #: the guidance value used when the user gives none, and the step count
    default_guidance: float = 7.5
    default_steps: int = 50
    #: names of the schedulers that make sense for this family (see anysize.schedulers)
    scheduler_kind: str = "diffusion"  # or "flow"
    #: whether a call's output depends on where its window sits in the canvas (SDXL crop coordinates,
    #: DiT positions); windows at different places can share one network call only when it does not
    window_conditioned: bool = True
    #: whether one call may take a different window for each batch element (``predict`` with a list
    #: of windows): true where the place enters only as per-sample conditioning (SDXL's time ids)
    per_sample_windows: bool = False
    #: how the network runs (eager, torch's SDPA choice unless :meth:`set_runtime` says otherwise);
    #: class defaults, so an adapter that does not call this __init__ (a test's stand-in) runs eagerly
    runtime: Runtime = Runtime()
    _compiled_call = None
    #: (latent shape, dtype) of the guided calls whose batched [negative; positive] call ran out of
    #: this device's memory: their two halves run one after the other from then on (see predict_guided)
    _split_guidance: set | None = None

    def __init__(self, pipe, *, native_size: int | tuple[int, int] | None = None):
        self.pipe = pipe
        if native_size is not None:
            self._native_latent = _pair(native_size)
        else:
            self._native_latent = self._default_native_latent()
        self.calls = 0  # network evaluations (one per sample in a batch), for benchmarks and tests
        self.runtime = Runtime()  # eager, torch's SDPA choice: see set_runtime
        self._compiled_call = None
        self._split_guidance = set()

    # ---------------------------------------------------------------- properties
    @property
    def network(self) -> torch.nn.Module:
        """The denoising network (UNet or transformer)."""
        raise NotImplementedError

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of this (VAE factor, times the DiT patch size)."""
        return self.vae_factor

    @property
    def native_latent_size(self) -> tuple[int, int]:
        """(height, width) of the latent the model was trained at."""
        return self._native_latent

    @property
    def native_size(self) -> tuple[int, int]:
        """(height, width) in pixels the model was trained at."""
        h, w = self._native_latent
        return h * self.vae_factor, w * self.vae_factor

    @property
    def device(self) -> torch.device:
        """Where the run's tensors go: diffusers' ``_execution_device`` when a component is offloaded
        (an accelerate or diffusers hook on it: the hooks' device), else the network's own device.
        ``_execution_device`` walks every module of every component (its group-offload checks:
        15–30 ms a call on a CPU host, several calls a run), so it is asked only when it can differ."""
        pipe = self.pipe
        for part in pipe.components.values():
            if isinstance(part, torch.nn.Module) and (hasattr(part, "_hf_hook") or hasattr(part, "_diffusers_hook")):
                return pipe._execution_device
        try:
            return next(self.network.parameters()).device
        except StopIteration:  # pragma: no cover - a network without parameters
            return pipe._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.network.dtype

    def _default_native_latent(self) -> tuple[int, int]:
        return _pair(self.network.config.sample_size)

    # ---------------------------------------------------------------- sizes
    def latent_shape(self, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int]:
        self.check_size(height, width)
        f = self.vae_factor
        return (batch, self.latent_channels, height // f, width // f)

    def check_size(self, height: int, width: int) -> None:
        m = self.size_multiple
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise InvalidSizeError(f"{name} must be an integer number of pixels, got {v!r}")
            if v <= 0:
                raise InvalidSizeError(f"{name} must be positive, got {v}")
            if v % m:
                lo, hi = (v // m) * m, (v // m + 1) * m
                valid = f"{lo} or {hi}" if lo > 0 else f"{hi}"
                raise InvalidSizeError(
                    f"{name} {v} is not a multiple of {m} (the {self.family} model's pixel factor); use {valid}"
                )

    def check_positions(self, height: int, width: int, remedy: str = "a tiling method") -> None:
        """Refuse a canvas that one whole-canvas network call cannot place (a position table too
        small); ``remedy`` says what would. Only SD3 has such a limit."""

    @property
    def network_lock(self):
        """The network's :class:`~anysize.models.lora.SharedExclusiveLock`: a run holds it shared,
        or exclusively while it has LoRAs loaded (shared by every adapter of the same network)."""
        from .lora import network_lock

        return network_lock(self.network)

    def loras(self, loras):
        """A context manager: the checked LoRAs (:func:`anysize.lora.check_loras`) active for a
        block, on top of any the pipeline already had, and removed after it, even on error (see
        :mod:`anysize.models.lora`); nothing when ``loras`` is empty."""
        from .lora import attached

        return attached(self, loras)

    # ---------------------------------------------------------------- prompts
    def encode_prompt(
        self,
        prompts: Sequence[str],
        negative: Sequence[str] | None,
        *,
        guidance_scale: float,
    ) -> Conditioning:
        """The conditioning of ``prompts`` (and ``negative``), one run of the pipeline's text encoders.

        One thread at a time per pipeline: a fast (Rust) tokenizer keeps its padding and truncation
        settings on the shared object and diffusers' ``encode_prompt`` switches them per call
        ("max_length", then "longest" to detect truncation), so two threads encoding at once can
        get each other's padding: embeddings of the wrong length (an error) or the wrong content (a
        wrong image)."""
        with _prompt_lock(self.pipe):
            return self._encode_prompt(prompts, negative, guidance_scale=guidance_scale)

    def _encode_prompt(self, prompts: Sequence[str], negative: Sequence[str] | None, *,
                       guidance_scale: float) -> Conditioning:
        raise NotImplementedError

    # ---------------------------------------------------------------- runtime
    def set_runtime(self, *, compile: bool | None = None, sdpa: str | None = None,
                    compile_backend: Any = None) -> Runtime:
        """Set how the network runs (:mod:`anysize.models.runtime`); None keeps a setting as it is.

        ``compile``: run the network call through ``torch.compile`` (``dynamic=False``: the first
        call of each input shape compiles, later ones of that shape reuse it). ``sdpa``: one of
        ``auto, flash, efficient, cudnn, math`` (:data:`~anysize.models.runtime.SDPA_BACKENDS`),
        refused here when it cannot run on this device and dtype. ``compile_backend``: the
        torch.compile backend (default ``inductor``; tests pass a counting one). Returns the new
        :class:`~anysize.models.runtime.Runtime`.
        """
        from dataclasses import replace

        from . import runtime as rt

        now = self.runtime
        new = replace(
            now,
            compile=now.compile if compile is None else rt.check_compile(compile),
            sdpa=now.sdpa if sdpa is None else rt.check_sdpa(sdpa),
            compile_backend=now.compile_backend if compile_backend is None else compile_backend,
        )
        if new.sdpa != now.sdpa:
            rt.check_sdpa_runs(new.sdpa, self.device, self.dtype)
        if new.compile and (self._compiled_call is None or new.compile_backend != now.compile_backend):
            self._compiled_call = rt.compiled_caller(new)
        elif not new.compile:
            self._compiled_call = None
        self.runtime = new
        return new

    def _run_network(self, *args, **kwargs):
        """The network's call for ``_forward``: eager, or through the compiled caller."""
        if self._compiled_call is None:
            return self.network(*args, **kwargs)
        return self._compiled_call(self.network, self.runtime.sdpa, args, kwargs)

    # ---------------------------------------------------------------- network
    def predict(self, x: Tensor, t: Tensor, embeds: PromptEmbeds,
                window: Window | Sequence[Window] | None = None, *, view: ControlView | None = None) -> Tensor:
        """One network call on latents ``x`` (N, C, h, w) already scaled for the model input.

        ``embeds`` must have batch N. ``window`` (default: the whole of x) says where x sits in the
        canvas; a list gives each of the N elements its own window (same size), for adapters whose
        network ignores the place (``not window_conditioned``) or takes it per sample
        (``per_sample_windows``). Returns the raw model output in the model's parametrisation.

        With ControlNets in the run (:mod:`anysize.models.control`), each sample's control is the
        crop of the control image at its window, or, for an input that is not a plain window of
        the canvas (a strided or subsampled, padded view), what ``view`` says its pixels are.
        """
        if window is None:
            window = Window.full(x.shape[-2], x.shape[-1])
        windows = [window] if isinstance(window, Window) else list(window)
        if not isinstance(window, Window):
            if len(windows) != x.shape[0]:
                raise InvalidArgumentError(f"{len(windows)} windows for a batch of {x.shape[0]} latents")
            if len(set(windows)) > 1 and self.window_conditioned and not self.per_sample_windows:
                raise InvalidArgumentError(f"the {self.family} network takes one window per call, not one per sample")
        for w in windows:
            if (w.height, w.width) != tuple(x.shape[-2:]):
                raise InvalidArgumentError(f"window {w} does not match latents of shape {tuple(x.shape)}")
        if embeds.batch != x.shape[0]:
            raise InvalidArgumentError(f"{embeds.batch} prompt embeddings for a batch of {x.shape[0]} latents")
        check_cancelled()  # a cancelled run stops here, not only at its next step (one may be many calls)
        self.calls += x.shape[0]
        if not isinstance(window, Window) and len(set(windows)) == 1:
            window = windows[0]
        controls = control.of(embeds)
        if controls is not None:
            if view is not None and tuple(view.index.shape) != (x.shape[0], *x.shape[-2:]):
                raise InvalidArgumentError(f"control view of shape {tuple(view.index.shape)} for latents {tuple(x.shape)}")
            inputs = controls.inputs(windows if len(set(windows)) > 1 else windows[:1], x.shape[0], view)
            embeds = PromptEmbeds(embeds.embeds, embeds.pooled, {**embeds.extra, control.CONTROL_INPUTS: inputs},
                                  embeds.unbatched | {control.CONTROL_INPUTS})
        if self.runtime.sdpa == "auto":
            return self._forward(x, t, embeds, window)
        with attention(self.runtime.sdpa):  # around the ControlNets' calls too
            return self._forward(x, t, embeds, window)

    def _forward(self, x: Tensor, t: Tensor, embeds: PromptEmbeds, window: Window) -> Tensor:
        raise NotImplementedError

    # ---------------------------------------------------------------- ControlNet
    @property
    def control_factor(self) -> int:
        """Control pixels per latent pixel: the ControlNets of pixel-space families see pixels."""
        return self.vae_factor

    def control_canvas(self, item: control.ActiveControl, canvas: tuple[int, int]) -> Tensor:
        """(1, 3, H·f, W·f) in [0, 1]: the control image resized to a latent canvas as the diffusers
        ControlNet pipelines resize it (``VaeImageProcessor`` without normalisation), in the
        ControlNet's dtype."""
        from diffusers.image_processor import VaeImageProcessor

        f = self.vae_factor
        processor = VaeImageProcessor(vae_scale_factor=f, do_convert_rgb=True, do_normalize=False)
        image = processor.preprocess(item.image, height=canvas[0] * f, width=canvas[1] * f).to(dtype=torch.float32)
        return upload(image, self.device, item.net.dtype)  # once per canvas size: no wait for the device

    def predict_guided(self, x: Tensor, t: Tensor, cond: Conditioning,
                       window: Window | Sequence[Window] | None = None, *, view: ControlView | None = None) -> Tensor:
        """The guided prediction for latents x of batch ``cond.batch``, one network call.

        With CFG the call runs on [x; x] with [negative; positive] embeddings, like the diffusers
        pipelines, so results agree with them to float rounding. Where that batched call runs out
        of the device's memory (a whole 8192² canvas on a 24 GB card), the failed call's memory is
        given back and the two halves run one after the other, for this latent shape from then on:
        the same prediction to float rounding (every sample is computed on its own) with half the
        activations, at the cost of one failed attempt per shape and process. (A patch that draws
        random numbers per network call draws once per half then: NPA's optional query shift,
        off by default where CFG is used, gives the two halves their own offsets.)
        """
        if not cond.do_cfg:
            return self.predict(x, t, cond.positive, window, **control.view_kwargs(view))
        key = (tuple(x.shape), x.dtype)
        if self._split_guidance is None or key not in self._split_guidance:
            calls = self.calls
            both = window if window is None or isinstance(window, Window) else list(window) * 2
            try:  # [negative; positive] halves see the same windows
                out = self.predict(torch.cat([x, x]), t, cond.for_cfg(), both,
                                   **control.view_kwargs(None if view is None else view.repeat(2)))
            except RuntimeError as e:  # torch.OutOfMemoryError is one
                if not is_out_of_memory(e):
                    raise
            else:
                uncond, text = out.chunk(2)
                return uncond + cond.guidance_scale * (text - uncond)
            # out of the handler, the failed call's frames and activations are gone
            self.calls = calls  # it evaluated nothing
            release_memory(self.device)
            if self._split_guidance is None:
                self._split_guidance = set()
            self._split_guidance.add(key)
        uncond = self.predict(x, t, cond.negative, window, **control.view_kwargs(view))
        text = self.predict(x, t, cond.positive, window, **control.view_kwargs(view))
        return uncond + cond.guidance_scale * (text - uncond)

    # ---------------------------------------------------------------- schedules
    @property
    def prediction_type(self) -> str:
        """'epsilon', 'v_prediction' or 'flow' (velocity = noise - x0)."""
        return self.scheduler.config.get("prediction_type", "epsilon")

    def set_timesteps(self, scheduler, steps: int, latent_hw: tuple[int, int]) -> Tensor:
        """Configure ``scheduler`` for ``steps`` steps exactly as the family's pipeline does."""
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler.timesteps

    def img2img_skipped_steps(self, steps: int, strength: float) -> int:
        """Steps of a ``steps``-step schedule an img2img pass at ``strength`` skips (SD/SDXL pipelines' rule)."""
        return steps - min(int(steps * strength), steps)

    def noise_space(self, scheduler) -> NoiseSpace:
        return NoiseSpace.of(scheduler)

    def to_x0(self, scheduler, x: Tensor, out: Tensor, t: Tensor) -> Tensor:
        """x0 predicted from the model output ``out`` at state ``x`` (scheduler state space)."""
        return self.noise_space(scheduler).to_x0(x, out, t, self.prediction_type)

    def from_x0(self, scheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The state at timestep t whose clean part is x0 and noise part ``noise``."""
        return self.noise_space(scheduler).from_x0(x0, noise, t)

    # ---------------------------------------------------------------- VAE
    def _vae_latent_to_decoder(self, z: Tensor) -> Tensor:
        cfg = self.vae.config
        shift = cfg.get("shift_factor", None) or 0.0
        return z / cfg.scaling_factor + shift

    def _vae_encoder_to_latent(self, z: Tensor) -> Tensor:
        cfg = self.vae.config
        shift = cfg.get("shift_factor", None) or 0.0
        return (z - shift) * cfg.scaling_factor

    def _vae_dtype(self) -> torch.dtype:
        # fp16 VAEs that ask for it (SD/SDXL `force_upcast`) decode in fp32, as the pipelines do
        if self.vae.dtype == torch.float16 and self.vae.config.get("force_upcast", False):
            return torch.float32
        return self.vae.dtype

    #: latent columns copied from the other side when decoding a horizontally wrapping canvas
    WRAP_CONTEXT = 8

    def decode(self, latents: Tensor, *, tiled: bool | str = "auto", progress: bool = False, wrap: bool = False,
               **tile_kw) -> Tensor:
        """Latents in model space -> images in [-1, 1], (B, 3, H, W); tiled above a size if 'auto'.

        ``wrap``: the canvas is a 360° panorama (its left and right borders meet). The decoder then
        sees ``WRAP_CONTEXT`` latent columns of the other side past each border, so the two edges of
        the image continue into each other instead of each meeting the decoder's zero padding.
        """
        if wrap:
            k = min(self.WRAP_CONTEXT, latents.shape[-1])
            padded = torch.cat([latents[..., -k:], latents, latents[..., :k]], dim=-1)
            images = self.decode(padded, tiled=tiled, progress=progress, **tile_kw)
            f = images.shape[-1] // padded.shape[-1]
            return images[..., k * f : images.shape[-1] - k * f]
        from . import tiled_vae as tiling

        vae = self.vae
        dtype = self._vae_dtype()
        upcast = dtype != vae.dtype
        if upcast:
            vae.to(dtype=dtype)
        try:
            z = self._vae_latent_to_decoder(latents).to(device=vae.device, dtype=dtype)
            if tiled == "auto":
                tiled = tiling.should_tile(vae, tuple(z.shape[-2:]))
            with torch.no_grad():
                if tiled:
                    return tiling.tiled_decode(vae, z, progress=progress, **tile_kw)
                return vae.decode(z, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(dtype=torch.float16)

    def encode(
        self, images: Tensor, *, generator: torch.Generator | None = None, sample: bool = True,
        tiled: bool | str = "auto", progress: bool = False, **tile_kw,
    ) -> Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> latents in model space (posterior sample or mode)."""
        from . import tiled_vae as tiling

        vae = self.vae
        dtype = self._vae_dtype()
        upcast = dtype != vae.dtype  # fp16 SD/SDXL VAEs encode in fp32 too, as decode does
        if upcast:
            vae.to(dtype=dtype)
        try:
            x = images.to(device=vae.device, dtype=dtype)
            if tiled == "auto":
                f = self.vae_factor
                tiled = tiling.should_tile(vae, (x.shape[-2] // f, x.shape[-1] // f))
            with torch.no_grad():
                if tiled:
                    dist = tiling.tiled_encode(vae, x, progress=progress, **tile_kw)
                else:
                    dist = vae.encode(x).latent_dist
            z = dist.sample(generator) if sample else dist.mode()
        finally:
            if upcast:
                vae.to(dtype=torch.float16)
        return self._vae_encoder_to_latent(z)

    def postprocess(self, images: Tensor, output_type: str = "pil"):
        """[-1, 1] image tensors -> PIL images / numpy arrays, via the pipeline's image processor.

        PIL images above :data:`LEAN_POSTPROCESS_PIXELS` are converted in row strips with the same
        arithmetic (same bytes), so an 8192² image needs its uint8 copy only, not the processor's
        three float copies of the whole image.
        """
        processor = self.pipe.image_processor
        if (output_type == "pil" and images.shape[-2] * images.shape[-1] > LEAN_POSTPROCESS_PIXELS
                and processor.config.get("do_normalize", True)):
            return [_to_pil_by_rows(img) for img in images]
        return processor.postprocess(images, output_type=output_type)

    # ---------------------------------------------------------------- noise
    def initial_noise(self, shape, generator: torch.Generator | Sequence[torch.Generator] | None) -> Tensor:
        """Gaussian noise drawn exactly as the diffusers pipelines draw it (same seed, same noise)."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "native_size": list(self.native_size),
            "vae_factor": self.vae_factor,
            "latent_channels": self.latent_channels,
            "prediction_type": self.prediction_type,
        }


#: images larger than this (pixels) are converted to PIL in row strips (see ModelAdapter.postprocess)
LEAN_POSTPROCESS_PIXELS = 2048 * 2048


def _to_pil_by_rows(image: Tensor, rows: int = 256):
    """One (3, H, W) [-1, 1] image -> PIL, strip by strip, with diffusers' postprocess arithmetic
    (``(x * 0.5 + 0.5).clamp(0, 1)``, then ``(· * 255).round()`` in numpy float32)."""
    import numpy as np
    from PIL import Image

    h, w = image.shape[-2:]
    out = np.empty((h, w, 3), dtype=np.uint8)
    for top in range(0, h, rows):
        strip = (image[:, top : top + rows] * 0.5 + 0.5).clamp(0, 1)
        strip = strip.cpu().permute(1, 2, 0).float().numpy()
        out[top : top + rows] = (strip * 255).round().astype("uint8")
    return Image.fromarray(out)


_prompt_locks_guard = threading.Lock()
_prompt_locks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _prompt_lock(pipe) -> threading.Lock:
    """The lock around a pipeline's prompt encoding (keyed by the pipeline: every adapter of it shares it)."""
    with _prompt_locks_guard:
        lock = _prompt_locks.get(pipe)
        if lock is None:
            lock = _prompt_locks[pipe] = threading.Lock()
        return lock


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def as_list(prompts: str | Sequence[str] | None, what: str = "prompt") -> list[str] | None:
    """One prompt or a list of them as a list, every one checked (:func:`anysize.prompts.check_prompts`)."""
    return check_prompts(prompts, what)


ProgressFn = Callable[[int, int], None]
