"""Any-Size-Diffusion (Zheng et al., AAAI 2024): ARAD stage I, then FSTD enlargement (stage II).

Stage I generates the prompt at the ARAD ratio–size bucket nearest the requested aspect ratio
(the paper's Table 5, scaled to the model's native area: :mod:`anysize.buckets`, shared with the
ARAD trainer), optionally with an ARAD LoRA (option ``arad_lora``) loaded through diffusers'
``load_lora_weights`` for that stage only. The run's own LoRAs (``lora=`` / ``--lora``, for every
method) are active in both stages. Stage II enlarges the
stage-I image to the exact requested size and refines it with :mod:`fstd <anysize.methods.fstd>`
at ``strength`` (an SDEdit pass over the tail of the schedule, see :meth:`Method.refine`).

Resize/crop rule (stage I -> stage II), in pixel space as the official upscaler works: the decoded
stage-I image is resized bicubically (antialiased when shrinking) so that it *covers* the target
(factor ``max(H/h, W/w)``), centre-cropped to exactly H×W, encoded with the VAE (a posterior
sample, as the official code; tiled above 2048² px) and refined. When the requested size *is* the
bucket size no stage II runs, so at the native size (square bucket) asd is plain generation.

Deliberate differences from the paper and the official code (spec ``asd_tiling.md`` §1, §2):

* Stage II is the same text-to-image model in an SDEdit pass (the spec's option C), not StableSR:
  the official ``ASD-upscale`` starts from the LR latent noised to t = 999 with a super-resolution
  U-Net; StableSR is not in diffusers. The prompt and guidance of the request are used in both stages.
* Buckets: Table 5's sizes (512² base) are scaled by ``sqrt(native area / 512²)`` and rounded to
  the model's pixel factor, so SD 1.5/2.1-base get the paper's sizes, SDXL twice them. The
  matching uses each bucket's exact ratio H/W (Table 5 prints 1.3330 for 768/576).
* Nearest bucket: the paper's rule (Eq. 1 / Algorithm 1: nearest on the linear r = H/W scale, a
  tie going to the later Table 5 entry, as its ``<=`` loop does) or, with ``bucket_rule="log"``,
  nearest in log-ratio (symmetric between portrait and landscape; same tie rule).
* Requested ratios outside 1:2 … 2:1 use the end bucket, and the cover-and-crop rule then crops
  the stage-I image (the paper does not say how it handles them).
* The ARAD LoRA is optional (none was released); ``arad_lora`` is any diffusers-loadable LoRA file
  or folder, applied in stage I only, on top of the run's LoRAs, and removed after it, even on
  error (:meth:`ModelAdapter.loras`); the metadata keeps its path as a method option. Named ``arad_lora`` (it was ``lora``) so that it is not mistaken for the run's ``lora``.
* No AdaIN/wavelet colour fix: stage II starts from the stage-I image's own latent, not from an
  LR image with a different decoder.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from ..buckets import RULES as BUCKET_RULES
from ..buckets import nearest_bucket, scaled_buckets
from ..lazy import lazy_module
from ..lora import Lora, check_loras
from ..options import option
from ..sampling import check_runs_a_step
from .base import Method, MethodOptions
from .registry import create, register

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

def cover_crop(images: Tensor, height: int, width: int) -> Tensor:
    """Resize (B, C, h, w) images bicubically so they cover height×width, then centre-crop to it."""
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    s = max(height / h, width / w)
    # the covering size, never short of the target by float rounding
    ch, cw = max(height, math.ceil(h * s - 1e-6)), max(width, math.ceil(w * s - 1e-6))
    out = F.interpolate(images.float(), size=(ch, cw), mode="bicubic", align_corners=False, antialias=s < 1)
    top, left = (ch - height) // 2, (cw - width) // 2
    return out[..., top : top + height, left : left + width].clamp(-1.0, 1.0).to(images.dtype)


def _check_fstd_options(options) -> None:
    create("fstd", **options)  # unknown or out-of-range fstd options fail here


@dataclasses.dataclass
class ASDOptions(MethodOptions):
    strength: float = option(0.5, "stage II img2img strength: the fraction of the schedule FSTD re-runs on the "
                                  "enlarged image", low=0.0, high=1.0, low_open=True)
    bucket_rule: str = option("paper", "nearest bucket by H/W (paper) or by log H/W (log)", choices=BUCKET_RULES)
    arad_lora: str | None = option(None, "an ARAD LoRA (file or folder diffusers' load_lora_weights reads) applied "
                                   "in stage I only, on top of the run's --lora", kind="path", must_exist=True,
                                   unset="no ARAD LoRA")
    arad_lora_scale: float = option(1.0, "the ARAD LoRA's weight in stage I")
    fstd: dict = option({}, "options of the stage-II fstd method, e.g. {\"tile\": 64}", kind="mapping",
                        check=_check_fstd_options)


@register
class ASD(Method):
    name = "asd"
    summary = "Any-Size-Diffusion: generate at the nearest ARAD ratio bucket, enlarge with FSTD (2 stages)"
    Options = ASDOptions
    refines = False  # it makes its own stage-I canvas

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.stage2 = create("fstd", **self.options.fstd)

    def stage_one_loras(self):
        """The checked ARAD LoRA of stage I (:func:`anysize.lora.check_loras`), or none."""
        if self.options.arad_lora is None:
            return ()
        return check_loras(Lora(self.options.arad_lora, self.options.arad_lora_scale), "arad_lora")

    def bucket(self, adapter, height: int, width: int) -> tuple[int, int]:
        """(height, width) in pixels of stage I for a requested height×width."""
        table = scaled_buckets(adapter.native_size, adapter.size_multiple)
        b = table[nearest_bucket(height, width, table, self.options.bucket_rule)]
        return b.height, b.width

    def check(self, adapter, height: int, width: int, steps: int | None = None) -> None:
        super().check(adapter, height, width, steps)
        bh, bw = self.bucket(adapter, height, width)
        if (bh, bw) != (height, width):
            self.stage2.check(adapter, height, width, steps)  # e.g. an fstd tile larger than the canvas
            if steps is not None:
                check_runs_a_step(adapter, steps, self.options.strength)  # stage II's pass

    def run(self, request) -> Tensor:
        adapter = request.adapter
        bh, bw = self.bucket(adapter, request.height, request.width)
        stage1 = dataclasses.replace(request, height=bh, width=bw)
        with adapter.loras(self.stage_one_loras()):
            latents = create("direct").run(stage1)
        if (bh, bw) == (request.height, request.width):
            return latents
        with torch.no_grad():
            pixels = adapter.decode(latents, tiled="auto")
            pixels = cover_crop(pixels, request.height, request.width)
            gens = request.generators if len(request.generators) > 1 else request.generators[0]
            clean = adapter.encode(pixels, generator=gens, tiled="auto")
        del pixels
        return self.stage2.refine(request, clean, self.options.strength, stage="stage II (fstd)")
