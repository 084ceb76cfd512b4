"""Regional prompts (`regions=`): composition on the toy model, reduction to plain generation, each
prompt encoded once, batch == alone, masks vs boxes, feather, weights, bad input, the command line,
the metadata and batch rows."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import anysize
from anysize import cli
from anysize.batching import jobs as jobs_mod
from anysize.errors import InvalidArgumentError
from anysize.methods import _windows
from anysize.models import adapt
from anysize.output import read_metadata
from anysize.regions import Region, feather, latent_maps, load_regions_file, parse_region
from anysize.toy.composition import objects_in_boxes

H, W = 128, 256  # px: latent 16 x 32 at the tiny models' factor 8, twice their native 16-latent width
QUICK = {"multidiffusion": {"stride": 8}, "fstd": {}}
LEFT, RIGHT = (0, 0, 128, 128), (128, 0, 128, 128)


@pytest.fixture(scope="module")
def sd1(tiny):
    return adapt(tiny("sd1"), native_size=16)


def gen(adapter, prompt="a white background", method="multidiffusion", regions=None, seed=5, steps=3, options=None,
        size=(H, W), **kw):
    h, w = size
    return anysize.generate(adapter, prompt, height=h, width=w, method=method, steps=steps, seed=seed,
                            method_options=QUICK[method] if options is None else options, output_type="latent",
                            progress=False, regions=regions, **kw)


def two_regions(**kw):
    return [Region("a red circle", box=LEFT, **kw), Region("a blue square", box=RIGHT, **kw)]


# ------------------------------------------------------------------------------------------ the toy model

#: seeds of the default run; the full 32 (benchmarks/regions_toy: 100 %) with ANYSIZE_FULL_REGIONS=1
TOY_SEEDS = [0, 1, 2, 3]


def _toy_placement_rate(seeds, steps):
    model = anysize.load()
    targets = [("a red circle", LEFT), ("a blue square", RIGHT)]
    regions = [Region(p, box=b) for p, b in targets]
    hits = 0
    for start in range(0, len(seeds), 4):
        chunk = seeds[start:start + 4]
        res = anysize.generate(model, ["a white background"] * len(chunk), width=256, height=128,
                               method="multidiffusion", method_options={"stride": 16}, seed=chunk, steps=steps,
                               progress=False, regions=regions)
        hits += sum(all(objects_in_boxes(im, targets)) for im in res.images)
    return hits / len(seeds)


def test_the_placement_metric_on_drawn_images():
    from anysize.toy.data import ToySpec, render

    def draw(colour, shape):
        return render(ToySpec(colour, shape, ("white",), None, (0.5, 0.5), 0.45), 128)

    image = np.concatenate([draw("red", "circle"), draw("blue", "square")], axis=1)
    assert objects_in_boxes(image, [("a red circle", LEFT), ("a blue square", RIGHT)]) == [True, True]
    assert objects_in_boxes(image, [("a red circle", RIGHT), ("a blue square", LEFT)]) == [False, False]


def test_toy_model_puts_the_red_circle_left_and_the_blue_square_right():
    assert _toy_placement_rate(TOY_SEEDS, steps=10) >= 0.75


@pytest.mark.skipif(not os.environ.get("ANYSIZE_FULL_REGIONS"), reason="32 seeds take ~8 min on one CPU core; "
                    "set ANYSIZE_FULL_REGIONS=1 (the figure is in benchmarks/regions_toy)")
def test_toy_model_placement_over_32_seeds():
    assert _toy_placement_rate(list(range(32)), steps=20) >= 0.8


# ------------------------------------------------------------------------------------------ reductions


def test_without_regions_the_regional_path_is_never_entered(sd1, monkeypatch):
    plain = gen(sd1)
    monkeypatch.setattr(_windows, "_fuse_regions", lambda *a, **k: pytest.fail("regional fuse without regions"))
    again = gen(sd1)
    assert torch.equal(plain.latents, again.latents) and "regions" not in again.config


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux"])
@pytest.mark.parametrize("method", ["multidiffusion", "fstd"])
def test_a_region_over_the_whole_canvas_with_the_main_prompt_is_no_regions(tiny, family, method):
    adapter = adapt(tiny(family), native_size=16)
    kw = dict(method=method, prompt="a red circle", size=(128, 256))
    if family == "sd1":
        kw["negative_prompt"] = "blurry"
    plain = gen(adapter, **kw)
    whole = gen(adapter, regions=[Region("a red circle", box=(0, 0, 256, 128))], **kw)
    assert torch.equal(plain.latents, whole.latents)
    assert plain.network_calls == whole.network_calls


def test_circular_windows_wrap_the_weight_maps_too(sd1):
    opts = {"stride": 8, "circular": True}  # 4 windows at columns 0, 8, 16, 24: the last wraps to 0-7
    plain = gen(sd1, options=opts)
    whole = gen(sd1, options=opts, regions=[Region("a white background", box=(0, 0, 256, 128))])
    assert torch.equal(plain.latents, whole.latents)
    # a region on the left edge only: the wrapping window meets it through its wrapped columns
    edge = gen(sd1, options=opts, regions=[Region("a red circle", box=(0, 0, 32, 128), bootstrap=0.0)])
    steps = plain.network_calls // (4 * 2)
    assert edge.network_calls == (4 + 2) * 2 * steps  # the background on all 4, the region on 2


def test_each_distinct_prompt_is_encoded_once(sd1, monkeypatch):
    seen = []
    original = sd1.encode_prompt

    def spy(prompts, negative, **kw):
        seen.append(list(prompts))
        return original(prompts, negative, **kw)

    monkeypatch.setattr(sd1, "encode_prompt", spy)
    regions = [Region("a red circle", box=(0, 0, 64, 64)), Region("a red circle", box=(64, 64, 64, 64)),
               Region("a blue square", box=RIGHT)]
    res = anysize.generate(sd1, ["a white background", "a red circle"], width=W, height=H, method="multidiffusion",
                           method_options=QUICK["multidiffusion"], steps=2, seed=1, output_type="latent",
                           progress=False, regions=regions)
    assert seen == [["a white background", "a red circle"], ["a blue square"]]
    assert res.latents.shape[0] == 2


@pytest.mark.parametrize("method", ["multidiffusion", "fstd"])
def test_an_image_of_a_batch_is_that_image_alone(sd1, method):
    regions = two_regions(feather=16, bootstrap=0.5)
    batch = anysize.generate(sd1, ["a white background", "a gray background"], width=W, height=H, method=method,
                             method_options=QUICK[method], steps=3, seed=[5, 9], output_type="latent", progress=False,
                             regions=regions)
    for i, (prompt, seed) in enumerate((("a white background", 5), ("a gray background", 9))):
        alone = gen(sd1, prompt, method, regions=regions, seed=seed).latents[0]
        assert (batch.latents[i] - alone).abs().max() <= 1e-3
    again = gen(sd1, "a white background", method, regions=regions, seed=5).latents[0]
    assert torch.equal(again, gen(sd1, "a white background", method, regions=regions, seed=5).latents[0])


def test_windows_run_only_the_prompts_that_meet_them(sd1):
    # latent 16 x 32, window 16, stride 8: windows at columns 0, 8, 16; the left box (columns 0-15)
    # meets the first two, the right box the last two, the background (weight 0 everywhere) none
    steps = []
    plain = anysize.generate(sd1, "a white background", height=H, width=W, method="multidiffusion",
                             method_options={"stride": 8}, steps=3, seed=1, output_type="latent", progress=False,
                             callback=steps.append)
    n = len(steps)
    regional = gen(sd1, regions=two_regions(), seed=1)
    assert plain.network_calls == 3 * 2 * n and regional.network_calls == 4 * 2 * n
    three = gen(sd1, regions=[Region("a red circle", box=(0, 0, 64, 128))], seed=1)  # 1 window + the background on 3
    assert three.network_calls == (3 + 1) * 2 * n


def test_regions_change_the_image_and_bootstrapping_changes_it_again(sd1):
    plain = gen(sd1).latents
    regional = gen(sd1, regions=two_regions(bootstrap=0.0)).latents
    boot = gen(sd1, regions=two_regions(bootstrap=0.5)).latents
    assert (plain - regional).abs().max() > 1e-2 and (regional - boot).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------ masks, feather, weights


def test_a_mask_equal_to_the_box_gives_the_same_image(sd1):
    box = gen(sd1, regions=[Region("a red circle", box=(32, 16, 96, 64))]).latents
    mask = np.zeros((H, W), dtype=bool)
    mask[16:80, 32:128] = True
    for m in (mask, mask.astype(np.float32), Image.fromarray(mask.astype(np.uint8) * 255), torch.from_numpy(mask)):
        assert torch.equal(box, gen(sd1, regions=[Region("a red circle", mask=m)]).latents)


def test_feather_ramps_linearly_across_the_edge_and_keeps_the_canvas_border():
    m = Region("x", box=(0, 0, 8, 4), feather=4).pixel_mask(16, 4)
    # the edge between columns 7 and 8 becomes a 4-px ramp; the canvas border (left, top, bottom) is not faded
    assert np.allclose(m, [[1] * 7 + [0.75, 0.5, 0.25] + [0] * 6] * 4, atol=1e-6)
    assert np.allclose(feather(np.ones((5, 5), np.float32), 3), 1)
    hard = Region("x", box=(0, 0, 8, 4)).pixel_mask(16, 4)
    assert set(np.unique(hard)) == {0.0, 1.0}


def test_feather_changes_the_image_only_near_the_edge(sd1):
    hard = gen(sd1, regions=two_regions(bootstrap=0.0), steps=1).latents
    soft = gen(sd1, regions=two_regions(bootstrap=0.0, feather=32), steps=1).latents
    diff = (hard - soft).abs().amax(dim=(0, 1, 2))  # per latent column
    assert diff.max() > 1e-3


def test_weights_count_only_where_prompts_share_a_pixel(sd1):
    one = gen(sd1, regions=two_regions(bootstrap=0.0)).latents
    weighted = gen(sd1, regions=[Region("a red circle", box=LEFT, weight=3.0, bootstrap=0.0),
                                 Region("a blue square", box=RIGHT, bootstrap=0.0)]).latents
    assert torch.allclose(one, weighted, atol=1e-5)  # each pixel has one prompt: its weight cancels
    overlap = [Region("a red circle", box=(0, 0, 160, 128), bootstrap=0.0),
               Region("a blue square", box=(96, 0, 160, 128), bootstrap=0.0)]
    heavy = [Region("a red circle", box=(0, 0, 160, 128), weight=4.0, bootstrap=0.0),
             Region("a blue square", box=(96, 0, 160, 128), bootstrap=0.0)]
    assert (gen(sd1, regions=overlap).latents - gen(sd1, regions=heavy).latents).abs().max() > 1e-3


def test_latent_weights_background_and_overlap():
    regions = [Region("a", box=(0, 0, 16, 16), weight=3.0), Region("b", box=(8, 0, 16, 16))]
    weights, masks = latent_maps(regions, 32, 16, 8)  # latent 2 x 4
    assert weights.shape == (3, 2, 4)
    assert np.allclose(masks[1], [[1, 1, 0, 0]] * 2) and np.allclose(masks[2], [[0, 1, 1, 0]] * 2)
    assert np.allclose(weights[0], [[0, 0, 0, 1]] * 2)  # the background: what no region covers
    assert np.allclose(weights[1], [[3, 3, 0, 0]] * 2) and np.allclose(weights[2], masks[2])


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("make,words", [
    (lambda: Region("a", box=(200, 0, 100, 128)), "reaches past the 256x128 canvas"),
    (lambda: Region("a", box=(-8, 0, 64, 64)), "starts outside the canvas"),
    (lambda: Region("a", box=(0, 0, 0, 64)), "is empty"),
    (lambda: Region("", box=(0, 0, 64, 64)), "prompt is empty"),
    (lambda: Region("   ", box=(0, 0, 64, 64)), "prompt is empty"),
    (lambda: Region("a", mask=np.ones((64, 64), bool)), "the mask is 64x64 px but the canvas is 256x128"),
    (lambda: Region("a", mask=np.zeros((128, 256), bool)), "covers no pixel"),
    (lambda: Region("a", box=(0, 0, 8, 8), mask=np.ones((128, 256), bool)), "exactly one of box"),
    (lambda: Region("a"), "exactly one of box"),
    (lambda: Region("a", box=(0, 0, 8, 8), weight=0), "weight must be a number > 0"),
    (lambda: Region("a", box=(0, 0, 8, 8), bootstrap=1.5), "bootstrap must be a number in [0, 1]"),
    (lambda: Region("a", box=(0, 0, 8, 8), feather=-1), "feather must be"),
    (lambda: Region("a", box=(0, 0, 8.5, 8)), "four whole numbers"),
    (lambda: Region("a", mask=np.full((128, 256), 2.0)), "values in [0, 1]"),
])
def test_bad_regions_are_clear_errors(sd1, make, words):
    with pytest.raises(InvalidArgumentError) as e:
        gen(sd1, regions=[make()])
    assert words in str(e.value)


def test_methods_without_regions_refuse_them_naming_those_with(sd1):
    with pytest.raises(InvalidArgumentError, match="method 'direct' takes no regional prompts; the methods that do: "
                       "fstd, multidiffusion"):
        gen(sd1, method="direct", options={}, regions=two_regions())
    with pytest.raises(InvalidArgumentError, match="empty list"):
        gen(sd1, regions=[])


# ------------------------------------------------------------------------------------------ front ends


def test_parse_region_and_its_errors():
    r = parse_region("0, 8,128,64: a red circle, big")
    assert r.box == (0, 8, 128, 64) and r.prompt == "a red circle, big"
    for bad in ("0,0,64:a", "a,b,c,d:x", "0,0,64,64", "0,0,64,64:  "):
        with pytest.raises(InvalidArgumentError):
            parse_region(bad)


def test_regions_file_with_a_mask_relative_to_it(tmp_path):
    mask = np.zeros((128, 256), np.uint8)
    mask[:, 128:] = 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "right.png")
    (tmp_path / "r.json").write_text(json.dumps([
        {"box": [0, 0, 128, 128], "prompt": "a red circle", "feather": 8, "weight": 2},
        {"mask": "masks/right.png", "prompt": "a blue square", "negative": "red"},
    ]))
    a, b = load_regions_file(tmp_path / "r.json")
    assert a.box == (0, 0, 128, 128) and a.feather == 8 and a.weight == 2.0
    assert np.array_equal(b.mask, mask) and b.negative == "red" and b.mask_source == "masks/right.png"
    (tmp_path / "bad.json").write_text(json.dumps([{"box": [0, 0, 8, 8], "prompt": "x", "colour": 1}]))
    with pytest.raises(InvalidArgumentError, match="unknown region field 'colour'"):
        load_regions_file(tmp_path / "bad.json")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from anysize.builders import save_tiny_pipeline

    return save_tiny_pipeline("sd1", tmp_path_factory.mktemp("model") / "m")


def test_cli_region_flags_write_the_regions_into_the_png(capsys, model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.json").write_text(json.dumps([{"box": [0, 0, 64, 64], "prompt": "a green star"}]))
    args = ["generate", "a white background", "--model", str(model_dir), "--size", "256x128", "--steps", "2",
            "--method", "multidiffusion", "--set", "stride=8", "--region", "0,0,128,128:a red circle",
            "--regions", "r.json", "--out", "o.png", "--quiet"]
    assert cli.main(args) == 0, capsys.readouterr().err
    stored = read_metadata(tmp_path / "o.png")["regions"]
    assert [r["prompt"] for r in stored] == ["a red circle", "a green star"]
    assert stored[0]["box"] == [0, 0, 128, 128]
    capsys.readouterr()
    (tmp_path / "off.json").write_text(json.dumps([{"box": [0, 0, 64, 64], "prompt": "a", "weight": -1}]))
    for flag, value, words in (("--region", "0,0,300,128:x", "reaches past the 256x128 canvas"),
                               ("--region", "0,0,64:x", "is not X,Y,W,H:prompt"),
                               ("--regions", "off.json", "weight must be a number > 0"),
                               ("--regions", "missing.json", "cannot read the regions file")):
        rc = cli.main(args[:10] + [flag, value, "--out", "p.png", "--quiet"])
        assert rc == 2 and words in capsys.readouterr().err, (flag, value)
    rc = cli.main(["generate", "x", "--model", str(model_dir), "--region", "0,0,64,64:y", "--quiet"])
    assert rc == 2 and "method 'direct' takes no regional prompts" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_metadata_round_trip_regenerates_the_same_image(sd1, tmp_path):
    mask = np.zeros((H, W), np.float32)
    mask[20:100, 140:230] = 0.6
    regions = [Region("a red circle", box=LEFT, feather=8, weight=2.0, negative="blue"),
               Region("a blue square", mask=mask, bootstrap=0.4)]
    res = anysize.generate(sd1, "a white background", width=W, height=H, method="multidiffusion",
                           method_options=QUICK["multidiffusion"], steps=2, seed=3, progress=False, regions=regions)
    res.save(tmp_path / "a.png")
    cfg = read_metadata(tmp_path / "a.png")
    back = [Region.from_dict(d) for d in cfg["regions"]]
    assert [r.to_dict() for r in back] == [r.to_dict() for r in regions]
    again = anysize.generate(sd1, cfg["prompt"], width=cfg["width"], height=cfg["height"], method=cfg["method"],
                             method_options=cfg["method_options"], steps=cfg["steps"], seed=cfg["seed"],
                             progress=False, regions=back)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(res.images[0]))


def test_batch_rows_take_regions_and_keep_old_ids(tmp_path, sd1):
    row = {"prompt": "a white background", "method": "multidiffusion", "size": "256x128", "steps": 2}
    regions = [{"box": [0, 0, 128, 128], "prompt": "a red circle"}]
    rows = [jobs_mod.Row(1, 1, row), jobs_mod.Row(2, 2, {**row, "regions": regions}),
            jobs_mod.Row(3, 3, {**row, "regions": json.dumps(regions), "__csv__": True}),
            jobs_mod.Row(4, 4, {**row, "method": "direct", "regions": regions}),
            jobs_mod.Row(5, 5, {**row, "regions": {"box": [0, 0, 8, 8]}}),
            jobs_mod.Row(6, 6, {**row, "regions": [{"box": [0, 0, 8, 8], "prompt": ""}]})]
    good, errors = jobs_mod.parse(rows)
    assert [j.row for j in good] == [1, 2, 3]
    assert "regions" not in good[0].spec()  # jobs without regions keep the ids they had
    assert good[1].regions == good[2].regions == [Region("a red circle", box=(0, 0, 128, 128)).to_dict()]
    assert good[1].config_key() != good[0].config_key()
    msgs = {e.row: e.message for e in errors}
    assert "takes no regional prompts" in msgs[4] and "list of region objects" in msgs[5] and "empty" in msgs[6]
    off = jobs_mod.Row(7, 7, {**row, "regions": [{"box": [200, 0, 100, 128], "prompt": "x"}]})
    bad, _ = jobs_mod.parse([off])
    _, errs = jobs_mod.resolve(bad, sd1)
    assert "reaches past the 256x128 canvas" in errs[0].message
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({**row, "regions": regions, "id": "r"}) + "\n")
    result = anysize.batch(sd1, jobs, tmp_path / "out", progress=False)
    assert result.done == 1
    assert read_metadata(tmp_path / "out" / "r.png")["regions"] == good[1].regions


@pytest.mark.parametrize("method", ["multidiffusion", "fstd"])
def test_no_step_waits_for_the_device(sd1, method):
    from anysize.testing.syncs import audit_sampling

    counts, reports = {}, []
    for steps in (3, 6):  # bootstrapping on every step: the colour draws and the noised backgrounds too
        with audit_sampling() as audits:
            gen(sd1, method=method, regions=two_regions(feather=8, bootstrap=1.0), steps=steps)
        counts[steps] = sum(len(a.events) for a in audits)
        reports += [a.report() for a in audits]
    assert counts[6] == counts[3] and counts[6] <= 4, "\n".join(reports)


# ------------------------------------------------------------------------------------------ upscale


def _source(seed=0, size=(128, 64)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def up(adapter, method="fstd", regions=None, prompt="a white background", **kw):
    return anysize.upscale(adapter, _source(), size=(W, H), method=method, strength=0.6, steps=4, seed=2,
                           prompt=prompt, method_options=QUICK[method], output_type="latent", progress=False,
                           regions=regions, **kw)


@pytest.mark.parametrize("method", ["multidiffusion", "fstd"])
def test_upscale_regions_reduce_to_none_over_the_whole_canvas_and_change_the_image_otherwise(sd1, method):
    plain = up(sd1, method)
    whole = up(sd1, method, regions=[Region("a white background", box=(0, 0, W, H))])
    assert torch.equal(plain.latents, whole.latents) and plain.network_calls == whole.network_calls
    regional = up(sd1, method, regions=two_regions(bootstrap=0.0))
    assert (plain.latents - regional.latents).abs().max() > 1e-2
    assert regional.network_calls > plain.network_calls  # the regions' prompts run on the windows they meet
    assert [r["prompt"] for r in regional.config["regions"]] == ["a red circle", "a blue square"]
    assert regional.config["upscale"]["size"] == [W, H]


def test_upscale_regions_run_on_the_windows_they_meet(sd1):
    # multidiffusion, stride 8: windows at latent columns 0, 8, 16; a box over columns 0-7 meets the first only
    steps = []
    plain = up(sd1, "multidiffusion", callback=steps.append)
    left = up(sd1, "multidiffusion", regions=[Region("a red circle", box=(0, 0, 64, 128), bootstrap=0.0)])
    assert plain.network_calls == 3 * 2 * len(steps) and left.network_calls == (3 + 1) * 2 * len(steps)


def test_upscale_regions_bad_input(sd1):
    from anysize.builders import tiny_x4_upscaler_pipeline

    with pytest.raises(InvalidArgumentError, match="reaches past the 256x128 canvas"):
        up(sd1, regions=[Region("a red circle", box=(0, 0, 300, 128))])
    with pytest.raises(InvalidArgumentError, match="method 'direct' takes no regional prompts; the methods that do: "
                       "fstd, multidiffusion"):
        anysize.upscale(sd1, _source(), size=(W, H), method="direct", steps=2, progress=False,
                        regions=two_regions())
    with pytest.raises(InvalidArgumentError, match="not supported with image-conditioned upscalers"):
        anysize.upscale(tiny_x4_upscaler_pipeline(), _source(), size=(512, 256), method="fstd", steps=2, progress=False,
                        regions=two_regions())


def test_cli_upscale_region_flags(capsys, model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _source().save(tmp_path / "in.png")
    args = ["upscale", "in.png", "--model", str(model_dir), "--scale", "2", "--steps", "2", "--strength", "0.5",
            "--method", "multidiffusion", "--set", "stride=8", "--prompt", "a white background", "--quiet"]
    assert cli.main(args + ["--region", "0,0,128,128:a red circle", "--out", "o.png"]) == 0, capsys.readouterr().err
    cfg = read_metadata(tmp_path / "o.png")
    assert [r["prompt"] for r in cfg["regions"]] == ["a red circle"] and cfg["upscale"]["size"] == [256, 128]
    capsys.readouterr()
    # the target of --scale is known only with the model: the box is checked then, before any work
    assert cli.main(args + ["--region", "0,0,300,128:x", "--out", "p.png"]) == 2
    assert "reaches past the 256x128 canvas" in capsys.readouterr().err and not (tmp_path / "p.png").exists()
    assert cli.main(args[:-7] + ["--method", "direct", "--region", "0,0,64,64:y", "--out", "p.png", "--quiet"]) == 2
    assert "method 'direct' takes no regional prompts" in capsys.readouterr().err


def test_format_region_inverts_parse_region_and_json_masks_stay_on_this_machine(tmp_path):
    from anysize.regions import Region, format_region, parse_region, regions_from_data

    r = parse_region("8,0,64,128: a red: circle")
    assert format_region(r) == "8,0,64,128:a red: circle" and parse_region(format_region(r)).box == r.box
    assert format_region(r.to_dict()) == format_region(r)
    assert format_region(Region("x", box=(0, 0, 8, 8), weight=2.0)) is None  # only JSON holds a weight
    assert format_region(Region("x", box=(0, 0, 8, 8), negative="blue")) is None
    Image.new("L", (16, 16), 255).save(tmp_path / "m.png")
    data = [{"prompt": "x", "mask": "m.png"}]
    assert regions_from_data(data, "here", base=tmp_path)[0].mask.shape == (16, 16)
    with pytest.raises(InvalidArgumentError, match="a mask file is read only from a regions file on this machine"):
        regions_from_data(data, "here", base=tmp_path, mask_files=False)
    with pytest.raises(InvalidArgumentError, match="here must hold a non-empty list of region objects"):
        regions_from_data({"a": 1}, "here")
