"""anysize eval metrics: FID/KID/IS/CLIP on torchmetrics with injected offline networks, crops, runs, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from anysize import cli
from anysize.errors import AnysizeError, InvalidArgumentError
from anysize.eval import metrics as M
from anysize.eval.run import run_eval
from anysize.models import adapt
from anysize.testing.eval import TinyFeatureNet, tiny_clip


def textures(n, seed=0, size=(48, 40), shift=0):
    """n random smooth colour textures (PIL), optionally brightened by ``shift`` grey levels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 200, size=(5, 6, 3)).astype(np.uint8)
        im = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        out.append(Image.fromarray(np.clip(np.asarray(im, dtype=int) + shift, 0, 255).astype(np.uint8)))
    return out


def save_all(images, folder, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        im.save(folder / f"{names[i] if names else f'{i:03d}'}.png")
    return folder


@pytest.fixture(scope="module")
def net():
    return TinyFeatureNet()


def feats(images, net):
    return M.extract((M.resize_clean(im, net.input_size) for im in images), net, batch=7)


# ------------------------------------------------------------------------------------------ FID / KID / IS


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(net):
    a = feats(textures(24), net)
    assert M.fid(a.features, a.features) == pytest.approx(0.0, abs=1e-6)
    other = feats(textures(24, seed=1), net)  # same distribution, other draws
    shifted = feats(textures(24, shift=40), net)
    more = feats(textures(24, shift=80), net)
    f_other, f_shift, f_more = (M.fid(a.features, b.features) for b in (other, shifted, more))
    assert 0 < f_other < f_shift < f_more


def test_fid_matches_the_closed_form_for_a_mean_shift():
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # same covariance, mean moved by d: FID = |d|^2 exactly
    d = torch.tensor([0.5, 0, 0, 0, 0, -1.0], dtype=torch.float64)
    assert M.fid(x, x + d) == pytest.approx(float(d @ d), rel=1e-6)


def test_kid_is_unbiased_negative_for_one_set_and_positive_for_a_shift(net):
    a = feats(textures(20), net).features
    k_same, _ = M.kid(a, a, subset_size=10, subsets=20)
    k_shift, _ = M.kid(a, feats(textures(20, shift=60), net).features, subset_size=10, subsets=20)
    # identical sets: the unbiased estimator drops k(x, x) from the within-set terms only -> below 0
    assert k_same < 0
    assert k_shift > 0 and k_shift > 10 * abs(k_same)


def test_kid_subset_handling_with_few_images(net):
    a, b = feats(textures(5), net).features, feats(textures(3, seed=2), net).features
    assert M.kid_subset_size(5, 3) == 3  # default: min(1000, both sizes)
    assert M.kid_subset_size(5000, 4000) == 1000
    mean, std = M.kid(a, b, subsets=10)  # default subset size fits the 3 images
    assert np.isfinite(mean) and std >= 0
    with pytest.raises(InvalidArgumentError, match="KID subset size 4 is larger than the 3 generated images"):
        M.kid(a, b, subset_size=4)
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        M.kid(a[:1], b)
    # seeded subsets: same numbers every call, global RNG untouched
    state = torch.random.get_rng_state()
    assert M.kid(a, b, subset_size=2, subsets=5) == M.kid(a, b, subset_size=2, subsets=5)
    assert torch.equal(state, torch.random.get_rng_state())


def test_inception_score_bounds():
    uniform = torch.zeros(20, 10)
    assert M.inception_score(uniform, splits=2)[0] == pytest.approx(1.0, abs=1e-6)
    confident = torch.full((40, 10), -30.0)
    confident[torch.arange(40), torch.arange(40) % 10] = 30.0  # every class equally often, each image sure
    assert M.inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-3)
    assert 1 < M.inception_score(confident, splits=4)[0] <= 10  # random splits: marginals less even


def test_inception_extractor_wraps_torch_fidelity(monkeypatch, tmp_path):
    """The real extractor asks torch-fidelity for pool3 + unbiased logits (a stand-in module here: no weights)."""
    import sys
    import types

    made = {}

    class FakeInception(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            made.update(name=name, features=features_list, weights=feature_extractor_weights_path)

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[1:] == (3, 299, 299)
            return torch.ones(x.shape[0], 2048), torch.zeros(x.shape[0], 1008)

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FakeInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    ext = M.default_extractor("cpu", weights)
    assert made == {"name": "inception-v3-compat", "features": ["2048", "logits_unbiased"], "weights": str(weights)}
    fs = M.extract((M.resize_clean(im, ext.input_size) for im in textures(3)), ext)
    assert fs.features.shape == (3, 2048) and fs.logits.shape == (3, 1008)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        M.default_extractor("cpu", tmp_path / "missing.pth")

    def offline(*a, **k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(FakeInception, "__init__", offline)
    with pytest.raises(InvalidArgumentError, match="cannot load the Inception weights .* --inception-weights FILE"):
        M.default_extractor("cpu")


def test_missing_torch_fidelity_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(InvalidArgumentError, match=r"pip install 'anysize\[eval\]'"):
        M.default_extractor()


# ------------------------------------------------------------------------------------------ crops


def test_crop_boxes_deterministic_in_bounds_and_seeded():
    boxes = M.crop_boxes(300, 200, 64, 50, seed=7)
    assert boxes == M.crop_boxes(300, 200, 64, 50, seed=7)
    assert boxes != M.crop_boxes(300, 200, 64, 50, seed=8)
    for left, top, right, bottom in boxes:
        assert 0 <= left and right <= 300 and 0 <= top and bottom <= 200
        assert (right - left, bottom - top) == (64, 64)
    assert len({b[:2] for b in boxes}) > 25  # spread, not one place
    assert M.crop_boxes(64, 64, 64, 3, seed=0) == [(0, 0, 64, 64)] * 3  # exact fit
    with pytest.raises(InvalidArgumentError, match="smaller than the 65 px crop"):
        M.crop_boxes(64, 200, 65, 1, seed=0)


# ------------------------------------------------------------------------------------------ CLIP


def test_clip_score_is_100_times_the_clamped_cosine_of_the_clip_embeddings():
    factory = tiny_clip()
    scorer = M.ClipScorer(factory)
    images, prompts = textures(3, size=(40, 56)), ["a red car", "a blue house", "a tree"]
    scores = [scorer.add(im, p) for im, p in zip(images, prompts)]
    model, processor = factory()  # same seed: the same weights
    with torch.no_grad():
        px = processor(images=images, return_tensors="pt")["pixel_values"]
        tx = processor(text=prompts, return_tensors="pt", padding=True)
        i = model.get_image_features(pixel_values=px)
        t = model.get_text_features(input_ids=tx["input_ids"], attention_mask=tx["attention_mask"])
    i, t = (v if isinstance(v, torch.Tensor) else v.pooler_output for v in (i, t))
    cos = torch.nn.functional.cosine_similarity(i, t)
    assert scores == pytest.approx((100 * cos).clamp(min=0).tolist(), abs=1e-3)
    assert scorer.mean() == pytest.approx(max(100 * cos.mean().item(), 0), abs=1e-3)
    assert "tiny random CLIP" in scorer.name


# ------------------------------------------------------------------------------------------ manifests


def test_default_manifest_and_bad_manifests(tmp_path):
    rows = M.load_manifest()
    assert len(rows) == 32 and len({r.id for r in rows}) == 32 and all(r.prompt for r in rows)
    assert M.load_manifest(limit=3) == rows[:3]
    for text, message in [
        ('{"id": "a", "prompt": "x"}\n', "not a JSON object with id, prompt and seed"),
        ('{"id": "a", "prompt": "x", "seed": -1}\n', "seed must be an integer"),
        ('{"id": "a/b", "prompt": "x", "seed": 1}\n', "cannot be a file name"),
        ('{"id": "a", "prompt": "x", "seed": 1}\n{"id": "a", "prompt": "y", "seed": 2}\n', "duplicate id"),
        ("\n", "has no rows"),
    ]:
        f = tmp_path / "m.jsonl"
        f.write_text(text)
        with pytest.raises(InvalidArgumentError, match=message):
            M.load_manifest(f)


def test_coco_manifest(tmp_path):
    anns = [{"id": 10 + i, "image_id": i // 2, "caption": f"  caption {i}\n"} for i in range(10)]
    f = tmp_path / "captions.json"
    f.write_text(json.dumps({"annotations": anns}))
    rows = M.coco_manifest(f, n=3, seed=0)
    assert rows == M.coco_manifest(f, n=3, seed=0) and [r.seed for r in rows] == [0, 1, 2]
    assert len({r.id for r in rows}) == 3
    assert all(r.prompt == f"caption {int(r.id) - 10}" and (int(r.id) - 10) % 2 == 0 for r in rows)  # first per image
    with pytest.raises(InvalidArgumentError, match="captions for 5 images, fewer than 6"):
        M.coco_manifest(f, n=6)


def _laion_rows():
    rows = [{"key": f"{i:09d}", "TEXT": f" photo  {i} ", "WIDTH": 512 * (1 + i % 3), "HEIGHT": 1024} for i in range(12)]
    rows[3]["TEXT"] = ""                 # empty: skipped
    rows[5]["TEXT"] = rows[4]["TEXT"]    # duplicate caption: skipped
    rows[7]["WIDTH"] = "n/a"             # unreadable size: dropped by --min-side
    return rows


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_table_manifest_reads_laion_style_tables(tmp_path, suffix):
    import csv

    rows = _laion_rows()
    f = tmp_path / f"meta{suffix}"
    if suffix == ".jsonl":
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with f.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t" if suffix == ".tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    every = M.table_manifest(f, n=10, seed=1)
    assert len(every) == 10 and [r.seed for r in every] == list(range(10))
    assert {r.id for r in every} == {f"{i:09d}" for i in range(12) if i not in (3, 5)}
    assert all(r.prompt == f"photo {int(r.id)}" for r in every)  # whitespace normalised
    assert every == M.table_manifest(f, n=10, seed=1) and every != M.table_manifest(f, n=10, seed=2)
    # min side 1024: only WIDTH 1024 or 1536 rows (i % 3 != 0), readable, non-empty, first of duplicates
    big = M.table_manifest(f, n=5, seed=0, min_side=1024)
    assert len(big) == 5 and {r.id for r in big} < {f"{i:09d}" for i in (1, 2, 4, 8, 10, 11)}
    with pytest.raises(InvalidArgumentError, match="6 usable captions with both sides >= 1024, fewer than 7"):
        M.table_manifest(f, n=7, min_side=1024)


def test_table_manifest_bad_tables(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps({"url": "x", "alt": "a cat"}) + "\n")
    with pytest.raises(InvalidArgumentError, match="no caption column .*its columns: url, alt"):
        M.table_manifest(f, n=1)
    assert M.table_manifest(f, n=1, column="alt")[0].prompt == "a cat"
    with pytest.raises(InvalidArgumentError, match="no column 'TEXT'"):
        M.table_manifest(f, n=1, column="TEXT")
    with pytest.raises(InvalidArgumentError, match="needs WIDTH/HEIGHT"):
        M.table_manifest(f, n=1, column="alt", min_side=512)
    bad = tmp_path / "m.xlsx"
    bad.write_text("x")
    with pytest.raises(InvalidArgumentError, match="parquet, .csv, .tsv or .jsonl"):
        M.table_manifest(bad, n=1)
    pq = tmp_path / "m.parquet"
    pq.write_bytes(b"PAR1")
    import importlib.util

    with pytest.raises(InvalidArgumentError, match="cannot read" if importlib.util.find_spec("pyarrow") else "needs pyarrow"):
        M.table_manifest(pq, n=1)


# ------------------------------------------------------------------------------------------ whole runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return save_all(textures(6, seed=5, size=(160, 144)), tmp_path_factory.mktemp("ref"))


def _manifest(tmp_path, n):
    f = tmp_path / "m.jsonl"
    f.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"a red triangle {i}", "seed": 10 + i}) + "\n"
                         for i in range(n)))
    return f


def test_run_generates_scores_and_writes_results(tiny, tmp_path, reference, net):
    adapter = adapt(tiny("sd1"))
    out = tmp_path / "run"
    summary = run_eval(out, adapter=adapter, manifest=_manifest(tmp_path, 4), steps=2, reference=reference,
                       crops=3, extractor=net, clip_model=tiny_clip(), progress=False)
    m = summary["metrics"]
    for key in ("fid_r", "kid_r", "fid_c", "kid_c", "is_r", "is_c", "clip_score", "fid_b", "kid_b"):
        assert np.isfinite(m[key]), key
    assert m["fid_r"] > 0 and m["fid_c"] > 0 and 0 <= m["clip_score"] <= 100
    assert summary["protocol"]["version"] == "anysize-eval/1"
    assert summary["protocol"]["crops"]["size"] == 128  # the model's native side
    assert summary["protocol"]["kid"]["subset_size"] == {"kid_r": 4, "kid_c": 12, "kid_b": 4}
    assert summary["protocol"]["clip"]["scale"].startswith("100 * max(cos")
    # PNDM with 2 steps: 3 evaluations, x2 for CFG
    assert summary["speed"]["network_calls_per_image"] == 6 and summary["speed"]["seconds_per_image"] > 0
    assert sorted(p.name for p in (out / "images").glob("*.png")) == ["p0.png", "p1.png", "p2.png", "p3.png"]
    assert sorted(p.name for p in (out / "base").glob("*.png")) == ["p0.png", "p1.png", "p2.png", "p3.png"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(m)
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["p0", "p1", "p2", "p3"] and [r["seed"] for r in rows] == ["10", "11", "12", "13"]
    assert all(r["network_calls"] == "6" and float(r["seconds"]) > 0 for r in rows)
    md = (out / "metrics.md").read_text().splitlines()
    assert md[0].startswith("| method | model | size | n | FID_r |") and md[2].startswith("| direct |")
    assert Image.open(out / "samples.png").size == (4 * 192, 192 + 14)

    # the same images scored from the folder give the same numbers (no generation, no time)
    again = run_eval(tmp_path / "again", manifest=_manifest(tmp_path, 4), from_dir=out / "images",
                     reference=reference, base_dir=out / "base", crop_size=128, crops=3, extractor=net,
                     clip_model=tiny_clip(), progress=False)
    assert again["metrics"] == pytest.approx(m, rel=1e-6)
    assert again["speed"] == {} and again["config"]["width"] == 128

    # results and images are kept unless --force
    with pytest.raises(AnysizeError, match="already exists|already has images"):
        run_eval(out, adapter=adapter, manifest=_manifest(tmp_path, 4), steps=2, metrics=["is"], extractor=net,
                 progress=False)
    forced = run_eval(out, adapter=adapter, manifest=_manifest(tmp_path, 4), steps=2, metrics=["is"], extractor=net,
                      progress=False, force=True)
    assert forced["metrics"]["is_r"] == pytest.approx(m["is_r"])  # same seeds, same images

    # a shifted reference set is farther away
    shifted = save_all([Image.fromarray(np.clip(np.asarray(Image.open(p), dtype=int) + 90, 0, 255).astype(np.uint8))
                        for p in sorted(reference.iterdir())], tmp_path / "ref_shifted")
    far = run_eval(tmp_path / "far", manifest=_manifest(tmp_path, 4), from_dir=out / "images", reference=shifted,
                   metrics=["fid_r"], extractor=net, progress=False)
    assert far["metrics"]["fid_r"] != pytest.approx(m["fid_r"])


BAD_RUNS = [
    (dict(reference="missing"), "reference folder .*missing does not exist"),
    (dict(metrics=["fid_r"]), "fid_r compares with real images: give --reference DIR"),
    (dict(metrics=["kid_b"], kid_subset_size=5), "KID subset size 5 is larger than the 4"),
    (dict(metrics=["fid_c"], reference="REF", crop_size=200), "reference image .* is 160x144, smaller than the 200 px crop"),
    (dict(metrics=["fid_c"], reference="REF", crop_size=144, width=128, height=128), "smaller than the 144 px crop"),
    (dict(metrics=["nope"]), "unknown metric 'nope'; valid choices: clip, fid_b"),
    (dict(crops=0), "--crops must be a positive integer"),
]


@pytest.mark.parametrize("kwargs,message", BAD_RUNS, ids=[m[:30] for _, m in BAD_RUNS])
def test_bad_runs_fail_before_generating(tiny, tmp_path, reference, net, monkeypatch, kwargs, message):
    from anysize import api

    monkeypatch.setattr(api, "generate", lambda *a, **k: pytest.fail("generated"))
    if kwargs.get("reference") == "REF":
        kwargs["reference"] = reference
    elif kwargs.get("reference") == "missing":
        kwargs["reference"] = tmp_path / "missing"
    with pytest.raises(AnysizeError, match=message):
        run_eval(tmp_path / "o", adapter=adapt(tiny("sd1")), manifest=_manifest(tmp_path, 4), extractor=net,
                 progress=False, **kwargs)
    assert not (tmp_path / "o").exists()


def test_scoring_networks_load_before_generating(tiny, tmp_path, net, monkeypatch):
    from anysize import api

    monkeypatch.setattr(api, "generate", lambda *a, **k: pytest.fail("generated before the CLIP model loaded"))

    def no_clip():
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    with pytest.raises(InvalidArgumentError, match="cannot load the CLIP model .*couldn't connect"):
        run_eval(tmp_path / "o", adapter=adapt(tiny("sd1")), manifest=_manifest(tmp_path, 2), metrics=["clip"],
                 clip_model=no_clip, extractor=net, progress=False)


def test_from_dir_needs_every_image_and_crops_fit(tmp_path, net):
    folder = save_all(textures(3, size=(64, 64)), tmp_path / "gen", names=["p0", "p1", "p2"])
    with pytest.raises(InvalidArgumentError, match="lacks 1 of the 4 manifest images, e.g. p3.png"):
        run_eval(tmp_path / "o", manifest=_manifest(tmp_path, 4), from_dir=folder, extractor=net, progress=False)
    ref = save_all(textures(3, size=(200, 200)), tmp_path / "ref")
    with pytest.raises(InvalidArgumentError, match="generated image .*p0.png is 64x64, smaller than the 128 px crop"):
        run_eval(tmp_path / "o", manifest=_manifest(tmp_path, 3), from_dir=folder, reference=ref, crop_size=128,
                 metrics=["fid_c"], extractor=net, progress=False)


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from anysize.builders import save_tiny_pipeline

    return save_tiny_pipeline("sd1", tmp_path_factory.mktemp("sd1"))


def test_cli_eval_metrics_and_plot(capsys, tmp_path, monkeypatch, model_dir, net):
    monkeypatch.setattr(M, "default_extractor", lambda device="cpu", weights=None: net)
    monkeypatch.chdir(tmp_path)
    manifest = _manifest(tmp_path, 3)
    rc = cli.main(["eval", "metrics", "--model", str(model_dir), "--prompts", str(manifest), "--steps", "1",
                   "--metrics", "is,fid_b,kid_b", "--out", "run", "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("| method |") and lines[2].startswith("| direct |")
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(summary["metrics"]) == {"is_r", "is_r_std", "fid_b", "kid_b", "kid_b_std"}
    rc = cli.main(["eval", "plot", "run", "--metric", "fid_b", "--out", "plot.png"])
    assert rc == 0 and Image.open(tmp_path / "plot.png").size[0] > 300
    capsys.readouterr()
    rc = cli.main(["eval", "plot", "run", "--metric", "fid_r", "--out", "plot2.png"])
    assert rc == 2 and "no run has both fid_r" in capsys.readouterr().err


CLI_BAD = [
    (["--reference", "nowhere"], "reference folder nowhere does not exist"),
    (["--metrics", "fid_r"], "fid_r compares with real images: give --reference DIR"),
    (["--metrics", "fid,kid"], "unknown metric 'fid'"),
    (["--from-dir", "nowhere"], "--from-dir nowhere does not exist"),
    (["--crops", "0"], "--crops must be a positive integer"),
    (["--kid-subset-size", "0"], "--kid-subset-size must be a positive integer"),
    (["--prompts", "nope.jsonl"], "cannot read prompt manifest nope.jsonl"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--size", "100x128"], "not a multiple of 8"),
]


@pytest.mark.parametrize("args,message", CLI_BAD, ids=[m[:30] for _, m in CLI_BAD])
def test_cli_eval_metrics_bad_input(capsys, tmp_path, monkeypatch, model_dir, args, message):
    from anysize import api

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("loaded a model"))
    rc = cli.main(["eval", "metrics", "--model", str(model_dir), *args])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_cli_images_smaller_than_the_crop(capsys, tmp_path, monkeypatch, net):
    monkeypatch.setattr(M, "default_extractor", lambda device="cpu", weights=None: net)
    monkeypatch.chdir(tmp_path)
    save_all(textures(3, size=(64, 64)), tmp_path / "gen", names=["p0", "p1", "p2"])
    save_all(textures(3, size=(300, 300)), tmp_path / "ref")
    rc = cli.main(["eval", "metrics", "--from-dir", "gen", "--prompts", str(_manifest(tmp_path, 3)),
                   "--reference", "ref", "--crop-size", "128", "--metrics", "fid_c", "--out", "o"])
    err = capsys.readouterr().err
    assert rc == 2 and "is 64x64, smaller than the 128 px crop" in err and err.count("\n") == 1


def test_cli_eval_metrics_out_of_memory_is_one_line_and_a_rerun_goes_on(capsys, tmp_path, monkeypatch, model_dir,
                                                                       net):
    from anysize.methods.direct import Direct

    monkeypatch.setattr(M, "default_extractor", lambda device="cpu", weights=None: net)
    monkeypatch.chdir(tmp_path)
    manifest = _manifest(tmp_path, 3)
    real = Direct.predict

    def too_big_for_p1(self, ctx, x_in):  # the second row (seed 11) does not fit
        if 11 in ctx.seeds:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        return real(self, ctx, x_in)

    monkeypatch.setattr(Direct, "predict", too_big_for_p1)
    args = ["eval", "metrics", "--model", str(model_dir), "--prompts", str(manifest), "--steps", "1",
            "--metrics", "is", "--warmup", "0", "--out", "run", "-q"]
    rc = cli.main(args)
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith("anysize: error: generating p1 failed: OutOfMemoryError: out of memory on cpu generating 1 "
                          "128x128 image with direct (CUDA out of memory. Tried to allocate 12.00 GiB)")
    assert "the 1 images before it are kept, rerun the same command to go on" in err
    assert sorted(p.name for p in (tmp_path / "run" / "images").glob("*.png")) == ["p0.png"]
    monkeypatch.setattr(Direct, "predict", real)
    rc = cli.main(args)
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["speed"]["resumed_images"] == 1 and summary["config"]["n"] == 3
