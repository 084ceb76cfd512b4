"""One evaluation run (``anysize eval metrics``): generate or collect images, score them, write the results.

Output folder layout::

    OUT/images/<id>.png      the generated images (not when --from-dir is given), with <id>.json and
                             summary.jsonl beside them: written by the batch runner, so an
                             interrupted run resumes (rerun the same command)
    OUT/base/<id>.png        the same prompts and seeds at the model's native size, for FID_b/KID_b
    OUT/metrics.json         config, protocol, metrics, speed, machine
    OUT/per_image.csv        id, prompt, seed, file, size, seconds, network calls, peak memory, CLIP score
    OUT/metrics.md           a Markdown header and the run's row
    OUT/samples.png          a grid of the first images, labelled with their ids

Images are generated one at a time after one untimed warm-up (same size, first prompt), each
timed with the device synchronised and its peak memory measured (:mod:`anysize.eval.timing`).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InvalidArgumentError, RunFailedError
from . import metrics as M
from .timing import PeakMemory, machine, synchronize

__all__ = ["MARKDOWN_COLUMNS", "markdown_row", "plan_metrics", "run_eval"]

#: (header, key in the flat results, format)
MARKDOWN_COLUMNS = (
    ("FID_r", "fid_r", "{:.2f}"), ("KID_r", "kid_r", "{:.4f}"), ("FID_c", "fid_c", "{:.2f}"),
    ("KID_c", "kid_c", "{:.4f}"), ("IS_r", "is_r", "{:.2f}"), ("CLIP", "clip_score", "{:.2f}"),
    ("FID_b", "fid_b", "{:.2f}"), ("KID_b", "kid_b", "{:.4f}"), ("s/img", "seconds_per_image", "{:.2f}"),
    ("peak MiB", "peak_memory_mib", "{:.0f}"),
)


def plan_metrics(requested: Sequence[str] | None, *, reference: bool, base: bool) -> list[str]:
    """The metrics to compute: ``requested`` (checked against what the inputs allow) or every possible one."""
    if requested is None:
        out = ["is", "clip"]
        if reference:
            out = ["fid_r", "kid_r", "fid_c", "kid_c"] + out
        if base:
            out += ["fid_b", "kid_b"]
        return out
    from ..errors import check_choice

    out = []
    for m in requested:
        check_choice("metric", m, M.METRICS)
        if m in ("fid_r", "kid_r", "fid_c", "kid_c") and not reference:
            raise InvalidArgumentError(f"{m} compares with real images: give --reference DIR")
        if m in ("fid_b", "kid_b") and not base:
            raise InvalidArgumentError(
                f"{m} compares with the model's native-size images: give a model to generate them, or --base-dir DIR"
            )
        if m not in out:
            out.append(m)
    if not out:
        raise InvalidArgumentError(f"no metric given; choose from {', '.join(M.METRICS)}")
    return out


def _generate_set(adapter, rows, folder: Path, *, method: str, width: int, height: int, steps, guidance,
                  method_options, warmup: int, progress: bool, force: bool) -> list[dict]:
    """Generate every row into ``folder/<id>.png`` through the batch runner (:mod:`anysize.batching`),
    one image per call; per-image seconds, calls and peak memory.

    The runner makes an interrupted evaluation resumable: images whose files are complete are kept
    (their seconds come from the folder's batch log, their peak memory is not known), the others
    are generated; ``force`` regenerates them all. The warm-up runs only when something is generated.
    """
    from tqdm.auto import tqdm

    from .. import api
    from ..batching import InvalidJobsError, check_jobs
    from ..batching.plan import Chunk
    from ..batching.runner import run_chunk
    from ..batching.store import check_out_dir, is_complete, png_path, remove_job_temps
    from ..batching.summary import RankLog, read_logs, rebuild

    folder = check_out_dir(folder)
    specs = [{"id": row.id, "prompt": row.prompt, "seed": row.seed, "width": width, "height": height, "method": method,
              "options": dict(method_options or {}), "steps": steps, "guidance": guidance} for row in rows]
    jobs, errors = check_jobs(adapter, specs, folder)
    if errors:
        raise InvalidJobsError(errors, "the manifest", len(rows))
    remove_job_temps(folder, jobs)
    todo = {j.id for j in jobs if force or not is_complete(folder, j)}
    for _ in range(warmup if todo else 0):
        api.generate(adapter, rows[0].prompt, width=width, height=height, method=method, steps=steps,
                     guidance=guidance, seed=rows[0].seed, progress=False, method_options=method_options)
    earlier = {r["id"]: r for r in read_logs(folder) if r.get("status") == "done"}
    log = RankLog(folder, 0)
    records = []
    try:
        for i, job in enumerate(tqdm(jobs, desc=f"{method} {width}x{height}", disable=not progress, unit="img")):
            if job.id not in todo:
                r = earlier.get(job.id, {})
                records.append({"file": str(png_path(folder, job.id)), "seconds": r.get("seconds"),
                                "network_calls": r.get("network_calls"), "peak_memory_mib": None, "memory": None})
                continue
            synchronize(adapter.device)
            with PeakMemory(adapter.device) as mem:
                (rec,) = run_chunk(adapter, Chunk(i, (job,)), folder, who={"rank": 0, "world_size": 1, "engine": "eval"},
                                   todo=[job])
                synchronize(adapter.device)
            if rec["status"] != "done":  # the images before it are complete files: a rerun resumes after them
                raise RunFailedError(f"generating {job.id} failed: {rec['error']}; the {len(records)} images before it "
                                     "are kept, rerun the same command to go on")
            log.append(rec)
            records.append({"file": str(png_path(folder, job.id)), "seconds": rec["seconds"],
                            "network_calls": rec["network_calls"], "peak_memory_mib": mem.peak_mib, "memory": mem.kind})
    finally:
        log.close()
        rebuild(folder, jobs, [])
    return records


def markdown_row(summary: dict[str, Any]) -> str:
    c = summary["config"]
    flat = {**summary["metrics"], **summary.get("speed", {})}
    cells = [str(c.get("method") or "-"), str(c.get("model") or "-"), f"{c['width']}x{c['height']}" if c.get("width") else "-",
             str(c["n"])]
    cells += [fmt.format(flat[k]) if flat.get(k) is not None else "-" for _, k, fmt in MARKDOWN_COLUMNS]
    return "| " + " | ".join(cells) + " |"


def markdown_header() -> str:
    head = ["method", "model", "size", "n"] + [h for h, _, _ in MARKDOWN_COLUMNS]
    return "| " + " | ".join(head) + " |\n|" + "---|" * len(head)


def run_eval(
    out: str | Path,
    *,
    adapter=None,
    manifest: str | Path | None = None,
    limit: int | None = None,
    method: str = "direct",
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    method_options: dict[str, Any] | None = None,
    from_dir: str | Path | None = None,
    reference: str | Path | None = None,
    base_dir: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    crops: int = 10,
    crop_size: int | None = None,
    crop_seed: int = 0,
    kid_subset_size: int | None = None,
    kid_subsets: int = 100,
    is_splits: int = 10,
    clip_model: str | Callable = M.CLIP_MODEL,
    extractor=None,
    inception_weights: str | Path | None = None,
    warmup: int = 1,
    force: bool = False,
    progress: bool = True,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one evaluation into folder ``out``; returns the ``metrics.json`` payload.

    Either ``adapter`` (generate with ``method`` at ``width`` x ``height``) or ``from_dir`` (score
    ``<id>.png`` images made elsewhere) is needed. ``extractor`` defaults to
    :func:`~anysize.eval.metrics.default_extractor` (Inception v3), ``clip_model`` to ViT-L/14.
    """
    from ..output import check_writable, save_json, save_png, save_text
    from .plots import sample_grid

    note = note or (lambda msg: None)
    out = Path(out)
    rows = M.load_manifest(manifest, limit)
    if adapter is None and from_dir is None:
        raise InvalidArgumentError("nothing to score: give a model to generate with, or --from-dir DIR")
    if crops < 1:
        raise InvalidArgumentError(f"--crops must be a positive integer, got {crops}")
    plan = plan_metrics(metrics, reference=reference is not None,
                        base=base_dir is not None or (adapter is not None))
    use_crops = any(m in plan for m in ("fid_c", "kid_c"))
    if use_crops and crop_size is None:
        if adapter is None:
            raise InvalidArgumentError("crop metrics need --crop-size PX (the base model's native side) with --from-dir")
        crop_size = min(adapter.native_size)
    ref_files = M.list_images(reference, "reference folder") if reference is not None else None
    base_files = M.find_images(base_dir, rows, "--base-dir") if base_dir is not None else None
    gen_files = M.find_images(from_dir, rows) if from_dir is not None else None
    n = len(rows)
    for m in plan:  # sizes known now: fail before any generation
        if m in ("fid_r", "kid_r", "fid_c", "kid_c", "fid_b", "kid_b") and n < 2:
            raise InvalidArgumentError(f"{m} needs at least 2 images, the manifest gives {n} (raise --limit)")
    if "kid_r" in plan:
        M.kid_subset_size(len(ref_files), n, kid_subset_size)
    if "kid_c" in plan:
        M.kid_subset_size(len(ref_files) * crops, n * crops, kid_subset_size)
    if "kid_b" in plan:
        M.kid_subset_size(n, n, kid_subset_size)
    if use_crops:
        for p in ref_files:
            w, h = M.image_size(p)
            if min(w, h) < crop_size:
                raise InvalidArgumentError(
                    f"reference image {p} is {w}x{h}, smaller than the {crop_size} px crop: crop metrics need "
                    f"reference images at least {crop_size} px on each side (or a smaller --crop-size)"
                )
        for p in gen_files or ():
            w, h = M.image_size(p)
            if min(w, h) < crop_size:
                raise InvalidArgumentError(
                    f"generated image {p} is {w}x{h}, smaller than the {crop_size} px crop; use --crop-size "
                    f"{min(w, h)} or less"
                )
        if width is not None and height is not None and min(width, height) < crop_size:
            raise InvalidArgumentError(f"{width}x{height} images are smaller than the {crop_size} px crop; use --crop-size {min(width, height)} or less")
    files = {name: out / name for name in ("metrics.json", "per_image.csv", "metrics.md", "samples.png")}
    for f in files.values():
        check_writable(f, force)
    for folder, used in ((out / "images", gen_files is None), (out / "base", base_files is None and any(m in plan for m in ("fid_b", "kid_b")))):
        resumable = (folder / "summary.jsonl").exists() or (folder / "summary.rank0.jsonl").exists()
        if used and folder.exists() and any(folder.iterdir()) and not force and not resumable:
            raise InvalidArgumentError(f"{folder} already has images; pass --force to overwrite them (or choose another --out)")

    # the scoring networks load before any generation: a missing download fails in seconds, not after hours
    needs_features = any(m != "clip" for m in plan)
    score_device = adapter.device if adapter is not None else "cpu"
    if needs_features:
        extractor = extractor if extractor is not None else M.default_extractor(score_device, inception_weights)
        note(f"features: {extractor.name}")
    scorer = M.ClipScorer(clip_model, score_device) if "clip" in plan else None

    config: dict[str, Any] = {"method": None if gen_files is not None else method, "n": n,
                              "manifest": str(manifest or M.DEFAULT_MANIFEST), "from_dir": str(from_dir) if from_dir else None,
                              "reference": str(reference) if reference else None,
                              "base_dir": str(base_dir) if base_dir else None}
    speed: dict[str, Any] = {}
    records: list[dict] = [{} for _ in rows]
    if adapter is not None:
        nh, nw = adapter.native_size
        width, height = width or nw, height or nh
        config.update({"model": getattr(adapter, "source", None) or adapter.family, "family": adapter.family,
                       "native_size": [nw, nh], "width": width, "height": height,
                       "steps": steps or adapter.default_steps,
                       "guidance": adapter.default_guidance if guidance is None else guidance,
                       "method_options": method_options or {}})
    if gen_files is None:
        note(f"generating {n} images with {method} at {width}x{height}")
        records = _generate_set(adapter, rows, out / "images", method=method, width=width, height=height,
                                steps=steps, guidance=guidance, method_options=method_options, warmup=warmup,
                                progress=progress, force=force)
        gen_files = [Path(r["file"]) for r in records]
        timed = [r for r in records if r["seconds"] is not None]
        measured = [r for r in records if r["peak_memory_mib"] is not None]
        speed = {
            "seconds_per_image": sum(r["seconds"] for r in timed) / len(timed) if timed else None,
            "peak_memory_mib": max(r["peak_memory_mib"] for r in measured) if measured else None,
            "memory": measured[0]["memory"] if measured else None,
            "network_calls_per_image": sum(r["network_calls"] for r in timed) / len(timed) if timed else None,
            "resumed_images": n - len(measured),
            "warmup_runs": warmup,
        }
    else:
        for r, f in zip(records, gen_files):
            r["file"] = str(f)
        config["width"], config["height"] = M.image_size(gen_files[0])
    if base_files is None and any(m in plan for m in ("fid_b", "kid_b")):
        nh, nw = adapter.native_size
        note(f"generating the {n} native-size ({nw}x{nh}) base images for FID_b/KID_b")
        base = _generate_set(adapter, rows, out / "base", method="direct", width=nw, height=nh, steps=steps,
                             guidance=guidance, method_options=None, warmup=0, progress=progress, force=force)
        base_files = [Path(r["file"]) for r in base]

    # ---- features and statistics
    values: dict[str, Any] = {}
    if needs_features:
        seeds = [r.seed for r in rows]
        gen_whole, gen_crops = M.image_features(gen_files, extractor, crops=crops if use_crops else 0,
                                                crop_size=crop_size, crop_seeds=seeds, what="generated image")
        if "is" in plan:
            values["is_r"], values["is_r_std"] = M.inception_score(gen_whole.logits, splits=is_splits)
            if gen_crops is not None:
                values["is_c"], values["is_c_std"] = M.inception_score(gen_crops.logits, splits=is_splits)
        if ref_files is not None:
            ref_whole, ref_crops = M.image_features(
                ref_files, extractor, crops=crops if use_crops else 0, crop_size=crop_size,
                crop_seeds=[crop_seed + i for i in range(len(ref_files))], what="reference image",
                whole=any(m in plan for m in ("fid_r", "kid_r")))
            if "fid_r" in plan:
                values["fid_r"] = M.fid(ref_whole.features, gen_whole.features)
            if "kid_r" in plan:
                values["kid_r"], values["kid_r_std"] = M.kid(ref_whole.features, gen_whole.features,
                                                             subset_size=kid_subset_size, subsets=kid_subsets)
            if "fid_c" in plan:
                values["fid_c"] = M.fid(ref_crops.features, gen_crops.features)
            if "kid_c" in plan:
                values["kid_c"], values["kid_c_std"] = M.kid(ref_crops.features, gen_crops.features,
                                                             subset_size=kid_subset_size, subsets=kid_subsets)
        if any(m in plan for m in ("fid_b", "kid_b")):
            base_whole, _ = M.image_features(base_files, extractor, what="base image")
            if "fid_b" in plan:
                values["fid_b"] = M.fid(base_whole.features, gen_whole.features)
            if "kid_b" in plan:
                values["kid_b"], values["kid_b_std"] = M.kid(base_whole.features, gen_whole.features,
                                                             subset_size=kid_subset_size, subsets=kid_subsets)
    clip_name = None
    if scorer is not None:
        clip_name = scorer.name
        note(f"CLIP score: {clip_name}")
        for r, row, f in zip(records, rows, gen_files):
            r["clip_score"] = scorer.add(M.open_rgb(f), row.prompt)
        values["clip_score"] = scorer.mean()

    # ---- outputs
    summary = {
        "config": config,
        "protocol": {
            "version": M.PROTOCOL_VERSION,
            "metrics": plan,
            "features": extractor.name if needs_features else None,
            "resize": M.RESIZE,
            "crops": {"per_image": crops, "size": crop_size, "seeds": "row seed (generated), crop_seed + index (reference)",
                      "crop_seed": crop_seed} if use_crops else None,
            "kid": {"subset_size": _kid_size_used(plan, ref_files, n, crops, kid_subset_size), "subsets": kid_subsets,
                    "kernel": "cubic polynomial, unbiased MMD^2"} if any(m.startswith("kid") for m in plan) else None,
            "is_splits": is_splits if "is" in plan else None,
            "clip": {"model": clip_name, "scale": M.CLIP_SCALE} if clip_name else None,
        },
        "metrics": {k: float(v) for k, v in values.items()},
        "speed": speed,
        "machine": machine(adapter.device if adapter is not None else "cpu"),
    }
    per_image = io.StringIO()
    w = csv.writer(per_image, lineterminator="\n")
    w.writerow(["id", "prompt", "seed", "file", "width", "height", "seconds", "network_calls", "peak_memory_mib",
                "clip_score"])
    for r, row, f in zip(records, rows, gen_files):
        size = M.image_size(f)
        w.writerow([row.id, row.prompt, row.seed, f, size[0], size[1], _fmt(r.get("seconds"), 4),
                    r.get("network_calls", ""), _fmt(r.get("peak_memory_mib"), 1), _fmt(r.get("clip_score"), 4)])
    save_json(summary, files["metrics.json"], force=force)
    save_text(per_image.getvalue(), files["per_image.csv"], force=force)
    save_text(markdown_header() + "\n" + markdown_row(summary) + "\n", files["metrics.md"], force=force)
    grid = sample_grid(gen_files[:16], [row.id for row in rows[:16]])
    save_png(grid, files["samples.png"], {"kind": "anysize eval samples", **config}, force=force)
    summary["files"] = {k: str(v) for k, v in files.items()}
    return summary


def _kid_size_used(plan, ref_files, n, crops, requested):
    sizes = []
    if "kid_r" in plan:
        sizes.append(M.kid_subset_size(len(ref_files), n, requested))
    if "kid_c" in plan:
        sizes.append(M.kid_subset_size(len(ref_files) * crops, n * crops, requested))
    if "kid_b" in plan:
        sizes.append(M.kid_subset_size(n, n, requested))
    return sizes[0] if len(set(sizes)) == 1 else dict(zip([m for m in plan if m.startswith("kid")], sizes))


def _fmt(v, digits):
    return "" if v is None else round(float(v), digits)
