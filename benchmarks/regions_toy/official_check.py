"""anysize's regional `multidiffusion` vs the official MultiDiffusion region code, same tiny model and seed.

    python benchmarks/regions_toy/official_check.py /path/to/MultiDiffusion/region_based.py [--json OUT]

The official ``region_based.py`` (omerbt/MultiDiffusion) is imported from the given path (this
repository holds none of its code); its class gets the components of anysize's tiny random-weight
SD 1.x pipeline (native 16 latent px) instead of loading SD from the hub, a DDIM scheduler with
``clip_sample=False``, views of 16 latent px every 8 (its 64 / 8 scaled to the tiny model), and
bootstrapping 0 (its backgrounds come from the global RNG and a posterior sample, which anysize
deliberately does not replay). Shims, all here: a stand-in ``torchvision.transforms`` (not installed
here, used only for its final ``ToPILImage``), and ``decode_latents`` returns the latents so the
final latents are compared. Both start from the same noise (the official ``torch.randn`` after
``torch.manual_seed(seed)``, anysize's generator seeded with the same seed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types

import torch


def load_official(path: str):
    import diffusers  # noqa: F401  (imported before the stand-in below, which they would probe)
    import transformers  # noqa: F401

    if importlib.util.find_spec("torchvision") is None:  # only its ToPILImage is used, on the final image
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.ToPILImage = lambda: (lambda x: x)
        sys.modules.setdefault("torchvision", tv)
        sys.modules.setdefault("torchvision.transforms", tv.transforms)
    spec = importlib.util.spec_from_file_location("official_region_based", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("official", help="path of region_based.py from github.com/omerbt/MultiDiffusion")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from diffusers import DDIMScheduler

    import anysize
    from anysize.builders import tiny_pipeline
    from anysize.models import adapt
    from anysize.regions import Region

    official = load_official(args.official)
    pipe = tiny_pipeline("sd1")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    adapter = adapt(pipe, native_size=16)

    views = official.get_views
    official.get_views = lambda h, w, window_size=64, stride=8: views(h, w, window_size=16, stride=8)
    md = official.MultiDiffusion.__new__(official.MultiDiffusion)
    torch.nn.Module.__init__(md)
    md.device, md.sd_version = torch.device("cpu"), "tiny"
    md.vae, md.tokenizer, md.text_encoder, md.unet = pipe.vae, pipe.tokenizer, pipe.text_encoder, pipe.unet
    md.scheduler = pipe.scheduler
    md.get_random_background = lambda n: None  # bootstrapping 0: never used
    md.decode_latents = lambda latents: latents

    results = []
    cases = [
        ("two boxes", 128, 256, [("a red circle", (0, 0, 128, 128)), ("a blue square", (128, 0, 128, 128))]),
        ("a box on the background", 128, 256, [("a red circle", (64, 0, 96, 128))]),
        ("overlapping boxes", 192, 256, [("a red circle", (0, 0, 160, 192)), ("a blue square", (96, 64, 160, 128))]),
    ]
    for name, h, w, regions in cases:
        background, steps, seed = "a white background", 4, 3
        masks = torch.zeros(len(regions), 1, h // 8, w // 8)
        for k, (_, (x, y, bw, bh)) in enumerate(regions):
            masks[k, :, y // 8 : (y + bh) // 8, x // 8 : (x + bw) // 8] = 1
        bg = (1 - masks.sum(0, keepdim=True)).clamp(min=0)
        prompts = [background] + [p for p, _ in regions]
        torch.manual_seed(seed)
        with torch.no_grad():
            ref = md.generate(torch.cat([bg, masks]), prompts, [""] * len(prompts), height=h, width=w,
                              num_inference_steps=steps, guidance_scale=7.5, bootstrapping=0)
        ours = anysize.generate(adapter, background, height=h, width=w, method="multidiffusion",
                                method_options={"stride": 8}, steps=steps, seed=seed, guidance=7.5,
                                negative_prompt="", output_type="latent", progress=False,
                                regions=[Region(p, box=b, bootstrap=0.0) for p, b in regions]).latents
        diff = (ours - ref).abs().max().item()
        results.append({"case": name, "size": f"{w}x{h}", "steps": steps, "max_abs_diff": diff,
                        "max_abs_latent": ref.abs().max().item()})
        print(f"{name:28s} {w}x{h}  max |ours - official| = {diff:.2e}  (|x| up to {ref.abs().max().item():.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"official": "omerbt/MultiDiffusion region_based.py", "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
