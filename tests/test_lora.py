"""LoRAs for every method and for upscale: they change the image, and the network is bit-identical after.

The LoRAs are made offline for the tiny pipelines by :func:`anysize.builders.lora.tiny_lora`: peft's
``LoraConfig`` on the tiny network (and, for SD 1.x, its text encoder), lora_B drawn at random (peft
starts it at zero, which would change nothing), saved with the pipeline class's ``save_lora_weights``.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import torch

import anysize
from anysize import methods
from anysize.errors import Cancelled, InvalidArgumentError
from anysize.lora import Lora, check_loras, parse_lora
from anysize.models import adapt
from anysize.models.lora import SharedExclusiveLock
from anysize.builders import tiny_pipeline
from anysize.builders.lora import tiny_lora

SIZE = (128, 256)  # above the native 128x128 px: every method's own code path runs
STEPS = 2
FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")


def _make_lora(family: str, folder, *, text_encoder: bool = False, seed: int = 0):
    tiny_lora(tiny_pipeline(family), folder, text_encoder=text_encoder, seed=seed)
    return folder


@pytest.fixture(scope="module")
def lora_of(tmp_path_factory):
    """family -> a LoRA folder for that family's tiny network (sd1's also touches its text encoder)."""
    cache = {}

    def get(family, seed=0):
        if (family, seed) not in cache:
            folder = tmp_path_factory.mktemp(f"lora-{family}-{seed}")
            cache[family, seed] = _make_lora(family, folder, text_encoder=family == "sd1", seed=seed)
        return cache[family, seed]

    return get


@pytest.fixture(scope="module")
def adapter_of():
    """family -> an adapter over a pipeline of this module's own (LoRAs are loaded into it)."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = adapt(tiny_pipeline(family), native_size=16)
        return cache[family]

    return get


def _gen(adapter, method="direct", *, options=None, size=SIZE, output_type="np", **kw):
    h, w = size
    return anysize.generate(adapter, "a red circle", height=h, width=w, method=method, steps=STEPS, seed=3,
                            method_options=options, output_type=output_type, progress=False, **kw)


def _state(adapter) -> dict[str, dict[str, torch.Tensor]]:
    """Every parameter and buffer of the parts a LoRA can touch (network, text encoders), copied,
    and every parameter's requires_grad (peft freezes what it wraps)."""
    pipe = adapter.pipe
    parts = {name: getattr(pipe, name) for name in pipe._lora_loadable_modules if getattr(pipe, name, None) is not None}
    state = {name: {k: v.detach().clone() for k, v in part.state_dict().items()} for name, part in parts.items()}
    state["requires_grad"] = {f"{name}.{k}": p.requires_grad for name, part in parts.items()
                              for k, p in part.named_parameters()}
    return state


def _assert_same_state(before, adapter):
    after = _state(adapter)
    assert after.keys() == before.keys()
    assert after.pop("requires_grad") == before["requires_grad"]
    for part, tensors in before.items():
        if part == "requires_grad":
            continue
        assert list(after[part]) == list(tensors), f"{part}: the state dict's keys changed (peft layers left in)"
        changed = [k for k, v in tensors.items() if not torch.equal(v, after[part][k])]
        assert not changed, f"{part}: {changed[:3]} changed"
    assert adapter.pipe.get_list_adapters() == {}


def _family_for(name: str) -> str:
    families = methods.get(name).families
    return "sd1" if families is None or "sd1" in families else families[0]


# ------------------------------------------------------------------------------------------ every method, every family


@pytest.mark.parametrize("name", methods.names())
def test_a_lora_changes_every_method_and_the_network_is_bit_identical_after(adapter_of, lora_of, name):
    family = _family_for(name)
    adapter = adapter_of(family)
    options = methods.get(name).demo_options(adapter) or None
    before = _state(adapter)
    plain = _gen(adapter, name, options=options)
    with_lora = _gen(adapter, name, options=options, lora=lora_of(family))
    assert np.abs(with_lora.images - plain.images).max() > 1e-2, f"the LoRA did not change {name}'s image"
    _assert_same_state(before, adapter)
    assert np.array_equal(_gen(adapter, name, options=options).images, plain.images)
    assert with_lora.config["loras"][0]["path"] == str(lora_of(family)) and plain.config["loras"] == []


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_takes_a_lora(adapter_of, lora_of, family):
    adapter = adapter_of(family)
    before = _state(adapter)
    plain = _gen(adapter, "multidiffusion")
    with_lora = _gen(adapter, "multidiffusion", lora=lora_of(family))
    assert np.abs(with_lora.images - plain.images).max() > 1e-2
    _assert_same_state(before, adapter)
    assert np.array_equal(_gen(adapter, "multidiffusion").images, plain.images)


def test_a_text_encoder_lora_changes_the_prompt_encoding_and_is_removed(adapter_of, lora_of):
    adapter = adapter_of("sd1")
    lora = check_loras(lora_of("sd1"))
    plain = adapter.encode_prompt(["a red circle"], None, guidance_scale=1.0).positive.embeds
    with adapter.loras(lora):
        assert "text_encoder" in adapter.pipe.get_list_adapters()
        loaded = adapter.encode_prompt(["a red circle"], None, guidance_scale=1.0).positive.embeds
    assert not torch.allclose(plain, loaded, atol=1e-3)
    assert torch.equal(adapter.encode_prompt(["a red circle"], None, guidance_scale=1.0).positive.embeds, plain)


# ------------------------------------------------------------------------------------------ scales, several, upscale


def test_scale_zero_is_no_lora_and_scales_are_recorded(adapter_of, lora_of):
    adapter = adapter_of("sd1")
    plain = _gen(adapter)
    zero = _gen(adapter, lora=(lora_of("sd1"), 0.0))
    assert np.array_equal(zero.images, plain.images)
    half = _gen(adapter, lora=Lora(str(lora_of("sd1")), 0.5))
    full = _gen(adapter, lora=lora_of("sd1"))
    assert not np.allclose(half.images, full.images, atol=1e-3) and not np.allclose(half.images, plain.images, atol=1e-3)
    (record,) = half.config["loras"]
    assert record["scale"] == 0.5 and record["file"] == "pytorch_lora_weights.safetensors"
    assert len(record["sha256"]) == 16 and int(record["sha256"], 16) >= 0


def test_two_loras_act_together(adapter_of, lora_of):
    adapter = adapter_of("sd1")
    before = _state(adapter)
    a, b = lora_of("sd1"), lora_of("sd1", seed=1)
    only_a, only_b = _gen(adapter, lora=a).images, _gen(adapter, lora=b).images
    both = _gen(adapter, lora=[a, (b, 0.7)])
    assert not np.allclose(both.images, only_a, atol=1e-3) and not np.allclose(both.images, only_b, atol=1e-3)
    assert [(r["path"], r["scale"]) for r in both.config["loras"]] == [(str(a), 1.0), (str(b), 0.7)]
    assert both.config["loras"][0]["sha256"] != both.config["loras"][1]["sha256"]
    _assert_same_state(before, adapter)


def test_upscale_with_a_lora(adapter_of, lora_of):
    adapter = adapter_of("sd1")
    source = _gen(adapter, size=(128, 128), output_type="pil").image
    before = _state(adapter)

    def up(**kw):
        return anysize.upscale(adapter, source, scale=2, method="fstd", steps=4, strength=0.5, prompt="detailed",
                               output_type="np", progress=False, **kw)

    plain = up()
    with_lora = up(lora=(lora_of("sd1"), 0.8))
    assert np.abs(with_lora.images - plain.images).max() > 1e-2
    assert with_lora.config["loras"][0]["scale"] == 0.8 and with_lora.config["upscale"]["strength"] == 0.5
    _assert_same_state(before, adapter)
    assert np.array_equal(up().images, plain.images)


def test_the_x4_upscaler_takes_a_lora_too(tmp_path):
    from diffusers import StableDiffusionUpscalePipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from PIL import Image

    from anysize.builders import tiny_x4_upscaler_pipeline

    maker = tiny_x4_upscaler_pipeline()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"]), maker.unet)
        for name, p in maker.unet.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
    StableDiffusionUpscalePipeline.save_lora_weights(
        str(tmp_path), unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(maker.unet)),
        safe_serialization=True)
    adapter = adapt(tiny_x4_upscaler_pipeline())
    before = _state(adapter)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))

    def up(**kw):
        return anysize.upscale(adapter, image, scale=4, method="direct", steps=2, seed=1, output_type="np",
                               progress=False, **kw).images

    plain = up()
    assert np.abs(up(lora=tmp_path) - plain).max() > 1e-2
    _assert_same_state(before, adapter)
    assert np.array_equal(up(), plain)


def test_the_metadata_record_reruns_the_image_and_notices_a_changed_file(adapter_of, lora_of, tmp_path):
    import shutil

    adapter = adapter_of("sd1")
    first = _gen(adapter, lora=[(lora_of("sd1"), 0.6)])
    stored = json.loads(json.dumps(first.config["loras"]))  # as read back from the PNG
    assert np.array_equal(_gen(adapter, lora=stored).images, first.images)
    copy = shutil.copytree(lora_of("sd1"), tmp_path / "copy")
    record = dict(stored[0], path=str(copy))
    (copy / "pytorch_lora_weights.safetensors").write_bytes(
        (lora_of("sd1", seed=1) / "pytorch_lora_weights.safetensors").read_bytes())
    with pytest.raises(InvalidArgumentError, match=r"has changed: its weights' SHA-256 begins [0-9a-f]{16}, the record"):
        _gen(adapter, lora=record)


def test_a_pipeline_lora_of_the_user_stays_as_it_was(lora_of):
    adapter = adapt(tiny_pipeline("sd1"), native_size=16)
    adapter.pipe.load_lora_weights(str(lora_of("sd1", seed=1)), adapter_name="mine")
    adapter.pipe.set_adapters(["mine"], adapter_weights=[0.3])
    theirs = _gen(adapter).images
    ours = _gen(adapter, lora=lora_of("sd1")).images
    assert not np.allclose(ours, theirs, atol=1e-3)  # ours on top of theirs
    assert adapter.pipe.get_list_adapters()["unet"] == ["mine"]
    assert np.array_equal(_gen(adapter).images, theirs)  # theirs active again, at 0.3 (not reset to 1)


def test_a_users_unet_lora_stays_and_the_text_encoder_comes_back_plain(lora_of, tmp_path):
    # the user's LoRA wraps only the U-Net; ours wraps the text encoder too, and only ours may go
    adapter = adapt(tiny_pipeline("sd1"), native_size=16)
    pipe = adapter.pipe
    pipe.load_lora_weights(str(_make_lora("sd1", tmp_path / "unet-only", seed=1)), adapter_name="mine")
    text_state = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    unet_keys = set(pipe.unet.state_dict())
    theirs = _gen(adapter).images
    _gen(adapter, lora=lora_of("sd1"))
    after = pipe.text_encoder.state_dict()
    assert set(after) == set(text_state) and all(torch.equal(after[k], v) for k, v in text_state.items())
    assert set(pipe.unet.state_dict()) == unet_keys and pipe.get_list_adapters() == {"unet": ["mine"]}
    assert np.array_equal(_gen(adapter).images, theirs)


# ------------------------------------------------------------------------------------------ errors and clean-up


def test_errors_are_one_line_and_name_the_way_out(adapter_of, lora_of, tmp_path):
    adapter = adapter_of("sd1")
    cases = [
        (tmp_path / "none.safetensors", r"LoRA .*none.safetensors does not exist \(give a .safetensors file or a folder"),
        ((lora_of("sd1"), "abc"), r"the scale must be a finite number \(e.g. 0.8\), got 'abc'"),
        ((lora_of("sd1"), float("nan")), "the scale must be a finite number"),
        ((lora_of("sd1"), True), "the scale must be a finite number"),
        (42, r"lora must be a path, a \(path, scale\) pair, a Lora\(path, scale\), or a list of them, got int 42"),
        ({"path": str(lora_of("sd1")), "weight": 1}, "unknown field 'weight'; a LoRA record has path, scale"),
        (tmp_path, "holds no LoRA weights"),
        (lora_of("sdxl"), r"the LoRA .* does not fit the sd1 model: its weights have other shapes .*another model family"),
        (lora_of("flux"), r"the LoRA .* has no weights for any layer of the sd1 model \(a LoRA for another model family"),
    ]
    before = _state(adapter)
    for value, message in cases:
        with pytest.raises(InvalidArgumentError, match=message) as e:
            _gen(adapter, lora=value)
        assert "\n" not in str(e.value)
    # a bad second LoRA: the first one, already loaded, is taken out again
    with pytest.raises(InvalidArgumentError, match="lora 2 of 2: the scale"):
        _gen(adapter, lora=[lora_of("sd1"), (lora_of("sd1"), "x")])
    with pytest.raises(InvalidArgumentError, match="does not fit the sd1 model"):
        _gen(adapter, lora=[lora_of("sd1"), lora_of("sdxl")])
    _assert_same_state(before, adapter)
    # the tiny FLUX and SD3 share their attention shapes: FLUX's single blocks have no place in SD3
    sd3 = adapter_of("sd3")
    before = _state(sd3)
    with pytest.raises(InvalidArgumentError, match=r"does not fit the sd3 model: \d+ of its weights have no layer to go "
                                                   r"to \(e.g. single_transformer_blocks"):
        _gen(sd3, lora=lora_of("flux"))
    _assert_same_state(before, sd3)


def test_a_pipeline_without_a_lora_loader_is_refused(adapter_of, lora_of, monkeypatch):
    adapter = adapter_of("sd1")
    monkeypatch.setattr(type(adapter.pipe), "load_lora_weights", None)
    with pytest.raises(InvalidArgumentError, match=r"StableDiffusionPipeline \(the sd1 model\) has no LoRA loader"):
        _gen(adapter, lora=lora_of("sd1"))


def test_an_error_or_cancel_during_the_run_removes_the_lora(adapter_of, lora_of):
    adapter = adapter_of("sd1")
    before = _state(adapter)
    with pytest.raises(Cancelled):
        _gen(adapter, lora=lora_of("sd1"), callback=lambda info: False)
    _assert_same_state(before, adapter)

    def boom(info):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _gen(adapter, lora=lora_of("sd1"), callback=boom)
    _assert_same_state(before, adapter)


# ------------------------------------------------------------------------------------------ PATH[:SCALE]


@pytest.mark.parametrize("text,path,scale", [
    ("style.safetensors", "style.safetensors", 1.0),
    ("style.safetensors:0.8", "style.safetensors", 0.8),
    ("style.safetensors:-1", "style.safetensors", -1.0),
    ("style.safetensors:.5", "style.safetensors", 0.5),
    ("style.safetensors:1e-1", "style.safetensors", 0.1),
    (r"C:\loras\style.safetensors", r"C:\loras\style.safetensors", 1.0),
    (r"C:\loras\style.safetensors:0.7", r"C:\loras\style.safetensors", 0.7),
    ("style:v2.safetensors", "style:v2.safetensors", 1.0),
    ("odd:2:1", "odd:2", 1.0),
    ("style.safetensors:abc", "style.safetensors:abc", 1.0),  # not a number: part of the path (then: does not exist)
    ("style.safetensors:inf", "style.safetensors:inf", 1.0),
    (":0.5", ":0.5", 1.0),
])
def test_the_last_colon_followed_by_a_number_is_the_scale(text, path, scale):
    assert parse_lora(text) == Lora(path, scale)


def test_cli_generate_and_upscale_take_repeated_loras(capsys, tmp_path, monkeypatch, lora_of):
    from anysize import cli
    from anysize.builders import save_tiny_pipeline
    from anysize.output import read_metadata, read_parameters

    model = save_tiny_pipeline("sd1", tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    a, b = lora_of("sd1"), lora_of("sd1", seed=1)
    common = ["--model", str(model), "--steps", "2", "--quiet"]
    assert cli.main(["generate", "a cat", *common, "--lora", f"{a}:0.5", "--lora", str(b), "--out", "g.png"]) == 0
    meta = read_metadata(tmp_path / "g.png")
    assert [(r["path"], r["scale"]) for r in meta["loras"]] == [(str(a), 0.5), (str(b), 1.0)]
    assert f"LoRAs: \"{a.name}:0.5 ({meta['loras'][0]['sha256']}), {b.name}:1" in read_parameters(tmp_path / "g.png")
    assert cli.main(["upscale", "g.png", "--scale", "2", *common, "--strength", "0.5", "--lora", str(a),
                     "--out", "u.png"]) == 0
    assert read_metadata(tmp_path / "u.png")["loras"][0]["path"] == str(a)
    capsys.readouterr()
    assert cli.main(["generate", "a cat", *common, "--lora", f"{a}:abc"]) == 2
    err = capsys.readouterr().err
    assert f"LoRA {a}:abc: {a} exists, but 'abc' after the last ':' is not a scale" in err
    assert not list(tmp_path.glob("anysize-*.png"))
    for bad in ("nan", "inf"):  # not finite: not a scale either
        assert cli.main(["generate", "a cat", *common, "--lora", f"{a}:{bad}"]) == 2
        assert f"'{bad}' after the last ':' is not a scale" in capsys.readouterr().err
    assert cli.main(["generate", "a cat", *common, "--lora", "missing.safetensors:abc"]) == 2
    err = capsys.readouterr().err
    assert "LoRA missing.safetensors:abc does not exist" in err and "a scale goes after the last ':'" in err


# ------------------------------------------------------------------------------------------ batch rows


def test_batch_rows_take_one_lora_or_a_list(lora_of, tmp_path):
    from anysize.batching.jobs import parse, read_rows, rows_from_dicts

    a, b = str(lora_of("sd1")), str(lora_of("sd1", seed=1))
    rows, _ = rows_from_dicts([
        {"prompt": "x"},
        {"prompt": "x", "lora": f"{a}:0.5"},
        {"prompt": "x", "lora": [a, {"path": b, "scale": 0.25}]},
        {"prompt": "x", "lora": []},
        {"prompt": "x", "lora": 3},
        {"prompt": "x", "lora": [a, {"path": b, "weight": 1}]},
        {"prompt": "x", "lora": "missing.safetensors:0.5"},
    ])
    jobs, errors = parse(rows, {"lora": [a]})
    assert [j.row for j in jobs] == [1, 2, 3, 4]
    assert [[(r["path"], r["scale"]) for r in j.loras] for j in jobs] == [
        [(a, 1.0)], [(a, 0.5)], [(a, 1.0), (b, 0.25)], []]  # row 1: the --lora default; row 4: none
    assert [str(e).split(": ", 1)[1] for e in errors] == [
        'lora must be "PATH[:SCALE]" or {"path": ..., "scale": ...}, got 3',
        "lora 2 of 2: unknown field 'weight'; a LoRA record has path, scale, file, sha256",
        "LoRA missing.safetensors does not exist (give a .safetensors file or a folder; a scale goes after the "
        "last ':', e.g. style.safetensors:0.8)",
    ]
    # LoRAs enter the spec (with the weights' hash) and split configurations; none keeps the old spec
    assert "loras" not in jobs[3].spec() and jobs[1].spec()["loras"] == [
        {"path": a, "sha256": jobs[1].loras[0]["sha256"], "scale": 0.5}]
    assert len({j.config_key() for j in jobs}) == 4
    csv = tmp_path / "jobs.csv"
    csv.write_text(f'prompt,lora\nx,{a}:0.5\ny,"[""{a}"", ""{b}:2""]"\n', encoding="utf-8")
    jobs, errors = parse(read_rows(csv)[0])
    assert not errors and [[r["scale"] for r in j.loras] for j in jobs] == [[0.5], [1.0, 2.0]]


def test_batch_runs_jobs_with_their_loras(capsys, tmp_path, lora_of):
    from anysize import cli
    from anysize.builders import save_tiny_pipeline
    from anysize.output import read_metadata

    model = save_tiny_pipeline("sd1", tmp_path / "m")
    jobs = tmp_path / "jobs.jsonl"
    a = str(lora_of("sd1"))
    jobs.write_text("\n".join(json.dumps(r) for r in [
        {"id": "plain", "prompt": "a cat"}, {"id": "lora", "prompt": "a cat", "lora": f"{a}:0.5"},
        {"id": "default", "prompt": "a cat", "lora": None}]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert cli.main(["batch", str(jobs), "--out", str(out), "--model", str(model), "--steps", "2", "-q",
                     "--lora", str(lora_of("sd1", seed=1))]) == 0
    metas = {i: read_metadata(out / f"{i}.png") for i in ("plain", "lora", "default")}
    assert [r["scale"] for r in metas["lora"]["loras"]] == [0.5]
    assert metas["plain"]["loras"][0]["path"] == str(lora_of("sd1", seed=1))  # the command's default
    stored = json.loads((out / "lora.json").read_text(encoding="utf-8"))
    assert stored["job"]["loras"][0]["scale"] == 0.5 and stored["config"]["loras"][0]["path"] == a
    # a LoRA of another family is refused before any work, with its row, as every other bad field
    jobs.write_text(json.dumps({"id": "xl", "prompt": "a cat", "lora": str(lora_of("sdxl"))}) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["batch", str(jobs), "--out", str(tmp_path / "out2"), "--model", str(model), "-q"]) == 2
    err = capsys.readouterr().err
    assert "row 1 (line 1): the LoRA" in err and "does not fit the sd1 model" in err
    assert not list((tmp_path / "out2").glob("*.png"))


def test_a_run_inside_a_block_with_the_same_loras_loads_nothing_again(adapter_of, lora_of, monkeypatch):
    from anysize.lora import check_loras

    adapter = adapter_of("sd1")
    before = _state(adapter)
    alone = _gen(adapter, lora=[(str(lora_of("sd1")), 0.7)]).images[0]
    loads = []
    real = type(adapter.pipe).load_lora_weights
    monkeypatch.setattr(type(adapter.pipe), "load_lora_weights",
                        lambda pipe, *a, **k: (loads.append(a[0]), real(pipe, *a, **k))[1])
    same = check_loras([(str(lora_of("sd1")), 0.7)])
    with adapter.loras(same):
        assert len(loads) == 1
        inside = [_gen(adapter, lora=[(str(lora_of("sd1")), 0.7)]).images[0] for _ in range(2)]
        assert len(loads) == 1  # active as they are: nothing attached or removed per run
        other = _gen(adapter, lora=[(str(lora_of("sd1")), 0.3)]).images[0]  # another scale: its own block
        assert len(loads) == 2
        again = _gen(adapter, lora=[(str(lora_of("sd1")), 0.7)]).images[0]  # the outer set, still intact
        assert len(loads) == 2
    assert all((x == alone).all() for x in (*inside, again)) and not (other == alone).all()
    _assert_same_state(before, adapter)


def test_batch_attaches_a_lora_once_for_consecutive_chunks(tmp_path, lora_of, monkeypatch):
    from PIL import Image

    from anysize import cli
    from anysize.builders import save_tiny_pipeline
    from anysize.output import read_metadata

    model = save_tiny_pipeline("sd1", tmp_path / "m")
    a, b = str(lora_of("sd1")), str(lora_of("sd1", seed=1))
    # chunks (batch 1) in plan order: a0 a1 a2 a3 (one group: same settings), b, plain
    rows = [{"id": f"a{i}", "prompt": "a cat", "seed": i, "lora": f"{a}:0.5"} for i in range(3)]
    rows += [{"id": "b", "prompt": "a cat", "lora": b}, {"id": "plain", "prompt": "a cat"},
             {"id": "a3", "prompt": "a cat", "seed": 3, "lora": f"{a}:0.5"}]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    loads, removals = [], []
    pipe_class = type(tiny_pipeline("sd1"))
    real_load, real_unload = pipe_class.load_lora_weights, pipe_class.unload_lora_weights
    monkeypatch.setattr(pipe_class, "load_lora_weights", lambda pipe, *x, **k: (loads.append(x[0]), real_load(pipe, *x, **k))[1])
    monkeypatch.setattr(pipe_class, "unload_lora_weights", lambda pipe, *x, **k: (removals.append(1), real_unload(pipe, *x, **k))[1])
    out = tmp_path / "out"
    assert cli.main(["batch", str(jobs), "--out", str(out), "--model", str(model), "--steps", "2", "--batch", "1",
                     "-q"]) == 0
    # the plan's fit check loads each distinct LoRA once (a, b); then the runs: the a-set once for its four
    # chunks, b once (each chunk on its own: 5)
    assert len(loads) == 4 and len(removals) == 4, loads
    monkeypatch.setattr(pipe_class, "load_lora_weights", real_load)
    monkeypatch.setattr(pipe_class, "unload_lora_weights", real_unload)
    adapter = anysize.load(str(model))
    for job, lora in (("a1", [(a, 0.5)]), ("a3", [(a, 0.5)]), ("b", [b]), ("plain", None)):
        seed = read_metadata(out / f"{job}.png")["seed"]
        ref = anysize.generate(adapter, "a cat", seed=seed, steps=2, lora=lora, progress=False)
        assert (np.asarray(Image.open(out / f"{job}.png")) == np.asarray(ref.images[0])).all(), job
    assert read_metadata(out / "plain.png")["loras"] == [] and read_metadata(out / "b.png")["loras"][0]["path"] == b
    assert adapter.pipe.get_list_adapters() == {}


def test_a_ray_worker_keeps_a_lora_attached_over_its_consecutive_chunks(tmp_path, lora_of, monkeypatch):
    # the actor class itself, in this process (a Ray actor runs the same methods in its own)
    from PIL import Image

    from anysize.batching.plan import make_chunks
    from anysize.batching.ray_engine import _Worker
    from anysize.builders import save_tiny_pipeline

    model = save_tiny_pipeline("sd1", tmp_path / "m")
    a, b = str(lora_of("sd1")), str(lora_of("sd1", seed=1))
    rows = [{"id": f"a{i}", "prompt": "a cat", "seed": i, "lora": f"{a}:0.5", "steps": 2} for i in range(3)]
    rows += [{"id": "b", "prompt": "a cat", "lora": b, "steps": 2}, {"id": "plain", "prompt": "a cat", "steps": 2}]
    worker = _Worker({"model": str(model), "device": "cpu"}, 1)
    out = tmp_path / "out"
    jobs, errors = worker.check(*anysize.batching.read_jobs(rows), str(out))
    assert not errors
    loads, removals = [], []
    pipe_class = type(worker.adapter.pipe)
    real_load, real_unload = pipe_class.load_lora_weights, pipe_class.unload_lora_weights
    monkeypatch.setattr(pipe_class, "load_lora_weights", lambda pipe, *x, **k: (loads.append(x[0]), real_load(pipe, *x, **k))[1])
    monkeypatch.setattr(pipe_class, "unload_lora_weights", lambda pipe, *x, **k: (removals.append(1), real_unload(pipe, *x, **k))[1])
    records = [r for chunk in make_chunks(jobs, 1) for r in worker.run(chunk, str(out), "auto", {"engine": "ray"})]
    assert [r["status"] for r in records] == ["done"] * 5
    # a0 a1 a2 share one attachment; b replaces it; plain removes it
    assert [os.path.dirname(x) for x in loads] == [a, b] and len(removals) == 2, loads
    monkeypatch.setattr(pipe_class, "load_lora_weights", real_load)
    monkeypatch.setattr(pipe_class, "unload_lora_weights", real_unload)
    for job, lora in (("a2", [(a, 0.5)]), ("b", [b]), ("plain", None)):
        ref = anysize.generate(worker.adapter, "a cat", seed=jobs[[j.id for j in jobs].index(job)].seed, steps=2,
                               lora=lora, progress=False)
        assert (np.asarray(Image.open(out / f"{job}.png")) == np.asarray(ref.images[0])).all(), job
    assert worker.adapter.pipe.get_list_adapters() == {}


# ------------------------------------------------------------------------------------------ threads


def test_shared_exclusive_lock_rules():
    lock = SharedExclusiveLock()
    with lock.shared(), lock.shared():
        assert lock.holders() == (1, False)
        with lock.exclusive():  # the thread's own shared holds are given up while it holds it exclusively
            assert lock.holders() == (1, True)
            with lock.exclusive(), lock.shared():  # re-entrant
                pass
        assert lock.holders() == (1, False)
    assert lock.holders() == (0, False)
    order, release = [], threading.Event()

    def writer():
        with lock.exclusive():
            order.append("writer")
            release.wait(10)

    def reader():
        with lock.shared():
            order.append("reader")

    with lock.shared():
        w = threading.Thread(target=writer)
        w.start()
        time.sleep(0.2)
        r = threading.Thread(target=reader)  # arrives while the writer waits: it queues behind it
        r.start()
        time.sleep(0.2)
        assert order == []  # the writer waits for the shared holder, the new reader for the writer
    time.sleep(0.2)
    assert order == ["writer"] and lock.holders() == (1, True)
    release.set()
    w.join(10)
    r.join(10)
    assert order == ["writer", "reader"] and lock.holders() == (0, False)


def test_a_lora_run_never_interleaves_with_a_plain_run_on_the_same_network(lora_of):
    adapter = adapt(tiny_pipeline("sd1"), native_size=16)
    alone = {"plain": _gen(adapter).images, "lora": _gen(adapter, lora=lora_of("sd1")).images}
    for first in ("plain", "lora"):
        events, results, errors = [], {}, []
        started = threading.Event()

        def run(kind, wait):
            def callback(info):
                events.append(kind)
                started.set()
                time.sleep(wait)  # keep the network busy, so the other run would interleave if it could

            try:
                results[kind] = _gen(adapter, lora=lora_of("sd1") if kind == "lora" else None, callback=callback).images
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = {k: threading.Thread(target=run, args=(k, 0.15 if k == first else 0.0)) for k in ("plain", "lora")}
        threads[first].start()
        assert started.wait(60)
        other = threads["lora" if first == "plain" else "plain"]
        other.start()
        for t in threads.values():
            t.join(120)
        assert not errors, errors
        # every step of the first run, then every step of the other (PNDM's warm-up makes it 3 of 2)
        second = "lora" if first == "plain" else "plain"
        assert events == [first] * events.count(first) + [second] * events.count(second), events
        assert events.count(first) == events.count(second) >= STEPS
        assert np.array_equal(results["plain"], alone["plain"]) and np.array_equal(results["lora"], alone["lora"])


def test_two_plain_runs_share_the_network_at_once():
    adapter = adapt(tiny_pipeline("sd1"), native_size=16)
    inside, peak = [0], [0]
    guard = threading.Lock()
    barrier = threading.Barrier(2, timeout=60)

    def callback(info):
        with guard:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        if info.index == 0:
            barrier.wait()  # both runs inside their loops at the same time: the shared lock let them
        with guard:
            inside[0] -= 1

    threads = [threading.Thread(target=lambda: _gen(adapter, callback=callback)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert peak[0] == 2 and not barrier.broken
