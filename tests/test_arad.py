"""ARAD: bucket assignment (Algorithm 1), bucketed data, LoRA training that resumes exactly."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from anysize.buckets import PAPER_BUCKETS, Bucket
from anysize.errors import AnysizeError, InvalidArgumentError
from anysize.train.arad import AradConfig, add_lora, draw_batch, train_arad
from anysize.train.data import scan, to_bucket

# ------------------------------------------------------------------------------------------ data


def _png(path, w, h, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    sizes = [(128, 128), (256, 128), (128, 128), (240, 120), (132, 128), (250, 126)]
    for i, (w, h) in enumerate(sizes):
        folder = d / "sub" if i % 2 else d
        _png(folder / f"{i}.png", w, h, i)
        (folder / f"{i}.txt").write_text(f" image  {i}\n")
    (d / "broken.png").write_bytes(b"not an image")
    (d / "broken.txt").write_text("broken")
    _png(d / "uncaptioned.png", 128, 128)
    _png(d / "empty.png", 128, 128)
    (d / "empty.txt").write_text("   ")
    _png(d / "small.png", 40, 40)
    (d / "small.txt").write_text("small")
    return d


def test_scan_skips_and_counts_bad_entries(dataset):
    buckets = (Bucket(64, 64), Bucket(64, 128))
    data = scan(dataset, buckets, min_side=64)
    assert sorted(e.caption for e in data.entries) == [f"image {i}" for i in range(6)]
    assert dict(data.skipped) == {"unreadable image": 1, "missing caption": 2, "smaller than min side": 1}
    assert data.counts() == {"64x64": 3, "128x64": 3}
    for e in data.entries:
        assert e.bucket == (0 if e.width == e.height or e.width < 1.5 * e.height else 1)


def test_manifest_datasets_and_bad_rows(tmp_path):
    _png(tmp_path / "a.png", 96, 64)
    truncated = tmp_path / "t.png"
    _png(truncated, 64, 64)
    truncated.write_bytes(truncated.read_bytes()[:60])  # header readable, pixels not
    lines = [
        {"image": "a.png", "caption": "a wide one"},
        {"file_name": "t.png", "text": "truncated", "width": 64, "height": 64},
        {"image": "missing.png", "caption": "gone"},
        {"image": "a.png"},
        "not json",
        {"caption": "no path"},
    ]
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    data = scan(m, (Bucket(64, 64), Bucket(64, 96)))
    assert [e.caption for e in data.entries] == ["a wide one", "truncated"]
    assert dict(data.skipped) == {"unreadable image": 1, "missing caption": 1, "no image path": 2}
    # the truncated file passes the scan (sizes given) and fails to decode: counted, replaced in-bucket
    data.entries[1] = type(data.entries[1])(truncated, "truncated", 64, 64, 1)  # same bucket as a.png
    data.__post_init__()
    img, caption = data.load(1, np.random.default_rng(0))
    assert caption == "a wide one" and img.shape == (3, 64, 96)
    assert data.skipped["undecodable at load"] == 1
    csv = tmp_path / "m.csv"
    csv.write_text("path,prompt\na.png,from csv\n")
    assert [e.caption for e in scan(csv, (Bucket(64, 64),)).entries] == ["from csv"]


def test_scan_errors(tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        scan(tmp_path / "nope", PAPER_BUCKETS)
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(InvalidArgumentError, match="folder, a .jsonl or a .csv"):
        scan(tmp_path / "x.txt", PAPER_BUCKETS)
    with pytest.raises(InvalidArgumentError, match="no usable image"):
        scan(tmp_path, PAPER_BUCKETS)


def test_to_bucket_covers_then_crops_without_distortion():
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 150, 100))  # left half blue
    x = to_bucket(img, Bucket(64, 64), random_crop=False)
    assert x.shape == (3, 64, 64)
    # cover: 300x100 -> 192x64, centre 64 px crop spans the blue/red border in the middle
    assert x[2, 32, 5] > 0.9 and x[0, 32, -5] > 0.9
    crops = {tuple(to_bucket(img, Bucket(64, 64), np.random.default_rng(s)).mean(dim=(1, 2)).tolist()) for s in range(6)}
    assert len(crops) > 1  # random crops move


def test_draw_batch_is_consistent_across_ranks(dataset):
    data = scan(dataset, (Bucket(64, 64), Bucket(64, 128)), min_side=64)
    for micro in range(20):
        bucket, picks = draw_batch(data, micro, per_rank=1, world=2, seed=3)
        assert (bucket, picks) == draw_batch(data, micro, 1, 2, 3)  # a pure function of the step
        assert all(data.entries[i].bucket == bucket for i in picks)
        assert len(set(picks)) == 2  # the two ranks get different images of the same bucket
    assert {draw_batch(data, m, 1, 1, 0)[0] for m in range(30)} == {0, 1}


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from anysize.builders import save_tiny_pipeline

    return str(save_tiny_pipeline("sd1", tmp_path_factory.mktemp("model") / "sd1"))


def _cfg(dataset, out, model, **kw):
    base = dict(data=str(dataset), out=str(out), model=model, steps=4, batch=2, checkpoint_every=2,
                buckets="128x128,256x128", device="cpu", progress=False, min_side=64)
    return AradConfig(**{**base, **kw})


def _hash_folder(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_training_changes_only_lora_weights_and_saves_a_diffusers_lora(dataset, tmp_path, tiny_model, monkeypatch):
    import pathlib

    import anysize
    from safetensors.torch import load_file

    before = _hash_folder(pathlib.Path(tiny_model))
    seen = {}
    real_load = anysize.load

    def spy(*a, **k):
        seen["adapter"] = real_load(*a, **k)
        return seen["adapter"]

    monkeypatch.setattr(anysize, "load", spy)
    lora = train_arad(_cfg(dataset, tmp_path / "out", tiny_model))
    trained = seen["adapter"].network
    fresh = real_load(tiny_model).network
    fresh_state = fresh.state_dict()
    changed_lora = 0
    for name, p in trained.named_parameters():
        if "lora" in name:
            changed_lora += int(name.endswith("lora_B.default.weight") and p.abs().max() > 0)
        else:
            key = name.replace(".base_layer", "")
            assert torch.equal(p, fresh_state[key]), name  # frozen weights untouched
    assert changed_lora > 0  # lora_B starts at zero: training moved it
    assert _hash_folder(pathlib.Path(tiny_model)) == before
    weights = load_file(str(lora))
    assert weights and all("lora" in k and k.startswith("unet.") for k in weights)
    info = json.loads((tmp_path / "out" / "arad.json").read_text())
    assert info["skipped"] == {"unreadable image": 1, "missing caption": 2, "smaller than min side": 1}
    assert info["entries_per_bucket"] == {"128x128": 3, "256x128": 3}


def test_resume_continues_to_the_identical_state(dataset, tmp_path, tiny_model):
    from safetensors.torch import load_file

    straight = load_file(str(train_arad(_cfg(dataset, tmp_path / "a", tiny_model))))
    train_arad(_cfg(dataset, tmp_path / "b", tiny_model, steps=2))  # "interrupted" after step 2
    assert (tmp_path / "b" / "checkpoints" / "step-0000002" / "state.json").is_file()
    resumed = load_file(str(train_arad(_cfg(dataset, tmp_path / "b", tiny_model))))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    log = [json.loads(line) for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    # a different seed is a different run
    other = load_file(str(train_arad(_cfg(dataset, tmp_path / "c", tiny_model, seed=1))))
    assert not all(torch.equal(straight[k], other[k]) for k in straight)


def test_the_lora_loads_in_stock_diffusers_and_changes_generation(dataset, tmp_path, tiny_model):
    import anysize
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "out"
    train_arad(_cfg(dataset, out, tiny_model, steps=2, lr=5e-2))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    base = anysize.generate(pipe, "image 1", steps=2, seed=0, output_type="np", progress=False).images[0]
    pipe.load_lora_weights(str(out))
    tuned = anysize.generate(pipe, "image 1", steps=2, seed=0, output_type="np", progress=False).images[0]
    assert np.abs(base - tuned).max() > 1e-3
    pipe.unload_lora_weights()
    again = anysize.generate(pipe, "image 1", steps=2, seed=0, output_type="np", progress=False).images[0]
    assert np.abs(base - again).max() < 1e-6


def test_add_lora_trains_only_lora_parameters(tiny):
    from anysize.models import adapt

    unet = adapt(tiny("sd2")).network
    import copy

    unet = copy.deepcopy(unet)
    params = add_lora(unet, AradConfig(data="x", out="y", rank=2))
    names = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names) and len(names) == len(params)
    assert all(p.dtype == torch.float32 for p in params)
    with pytest.raises(InvalidArgumentError, match="cannot put LoRA"):
        add_lora(copy.deepcopy(adapt(tiny("sd1")).network), AradConfig(data="x", out="y", targets=("nope",)))


@pytest.mark.parametrize("kw,match", [
    ({"steps": 0}, "steps"), ({"batch": -1}, "batch"), ({"lr": 0.0}, "lr"), ({"caption_dropout": 1.0}, "caption_dropout"),
    ({"mixed_precision": "fp8"}, "mixed_precision"), ({"bucket_rule": "area"}, "bucket_rule"), ({"grad_clip": -1.0}, "grad_clip"),
    ({"targets": ()}, "targets"),
])
def test_bad_config(kw, match):
    with pytest.raises(AnysizeError, match=match):
        AradConfig(data="x", out="y", **kw).validate()


def test_cli_trains_resumes_and_refuses_to_overwrite(dataset, tmp_path, tiny_model, capsys):
    from anysize.cli import main

    out = tmp_path / "cli"
    args = ["train-arad", str(dataset), "--model", tiny_model, "--out", str(out), "--steps", "2", "--batch", "1",
            "--buckets", "128x128,256x128", "--min-side", "64", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith("pytorch_lora_weights.safetensors")
    assert main(args) == 0  # already complete: resumes at the end, nothing to do
    assert main(args + ["--no-resume"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train-arad", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert main(["train-arad", str(dataset), "--out", str(tmp_path / "x"), "--bucket-rule", "area"]) == 2
    assert "valid choices: paper, log" in capsys.readouterr().err


def test_cli_help_teaches_multi_gpu():
    import subprocess
    import sys

    text = subprocess.run([sys.executable, "-m", "anysize", "train-arad", "--help"], capture_output=True, text=True,
                          check=True).stdout
    assert "accelerate launch --multi_gpu" in text and "load_lora_weights" in text and "Algorithm 1" in text


def test_the_lora_drives_asd_stage_one_from_the_command_line(dataset, tmp_path, tiny_model):
    from PIL import Image as PILImage

    from anysize.cli import main

    out = tmp_path / "lora"
    train_arad(_cfg(dataset, out, tiny_model, steps=2, lr=5e-2))
    common = ["generate", "image 1", "--model", tiny_model, "--method", "asd", "--size", "128x256", "--steps", "2",
              "--quiet"]
    assert main(common + ["--out", str(tmp_path / "base.png")]) == 0
    assert main(common + ["--set", f"arad_lora={out}", "--out", str(tmp_path / "arad.png")]) == 0
    base = np.asarray(PILImage.open(tmp_path / "base.png"), dtype=np.int16)
    arad = np.asarray(PILImage.open(tmp_path / "arad.png"), dtype=np.int16)
    assert base.shape == arad.shape == (256, 128, 3)
    assert np.abs(base - arad).max() > 0


def test_gradient_accumulation_resumes_exactly(dataset, tmp_path, tiny_model):
    from safetensors.torch import load_file

    straight = load_file(str(train_arad(_cfg(dataset, tmp_path / "a", tiny_model, grad_accum=2, batch=1))))
    train_arad(_cfg(dataset, tmp_path / "b", tiny_model, grad_accum=2, batch=1, steps=2))
    resumed = load_file(str(train_arad(_cfg(dataset, tmp_path / "b", tiny_model, grad_accum=2, batch=1))))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    plain = load_file(str(train_arad(_cfg(dataset, tmp_path / "c", tiny_model, batch=1))))
    assert not all(torch.equal(straight[k], plain[k]) for k in straight)  # 2 micro-batches per step differ


def test_distributed_data_parallel_on_two_cpu_processes(dataset, tmp_path, tiny_model):
    """torchrun with 2 processes (gloo): one run, both ranks on the same bucket each step, one output."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "29571", "-m", "anysize", "train-arad", str(dataset),
           "--model", tiny_model, "--out", str(out), "--steps", "2", "--batch", "1", "--buckets", "128x128,256x128",
           "--min-side", "64", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "arad.json").read_text())
    assert info["processes"] == 2
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2]  # written once, by the main process
    # without --device cpu on a machine with no GPU the launch would train each rank alone: refused
    cmd[cmd.index("--device"):cmd.index("--device") + 2] = []
    cmd[cmd.index("--out") + 1] = str(tmp_path / "alone")
    env["CUDA_VISIBLE_DEVICES"] = ""
    alone = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert alone.returncode != 0 and "no distributed training" in alone.stderr


def test_truncated_zero_byte_and_misnamed_images_in_a_whole_run(dataset, tmp_path, tiny_model, monkeypatch):
    """Issue 24.4: the header-only scan passes a truncated PNG; the run counts it once under
    'undecodable at load' and never opens it again, however often it is drawn."""
    from PIL import Image as PILImage

    import anysize.train.data as data_module

    truncated = dataset / "truncated.png"
    _png(truncated, 128, 128, 7)
    truncated.write_bytes(truncated.read_bytes()[:80])  # the header decodes, the pixels do not
    (dataset / "truncated.txt").write_text("cut short")
    (dataset / "zero.png").write_bytes(b"")
    (dataset / "zero.txt").write_text("nothing")
    _png(dataset / "misnamed.jpg", 128, 128, 8)  # a PNG with a .jpg name: Pillow reads it by content
    (dataset / "misnamed.txt").write_text("misnamed")
    opened = []
    real_open = PILImage.open

    def counting_open(path, *a, **kw):
        opened.append(str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(data_module.Image, "open", counting_open)
    out = tmp_path / "out"
    train_arad(_cfg(dataset, out, tiny_model, steps=12, batch=4, checkpoint_every=12))
    info = json.loads((out / "arad.json").read_text())
    assert info["skipped"]["undecodable at load"] == 1
    assert info["skipped"]["unreadable image"] == 2  # broken.png and the zero-byte file, at the scan
    loads = [p for p in opened if p.endswith("truncated.png")]
    assert len(loads) == 2  # once by the scan (header), once at load: then never again
    assert any(p.endswith("misnamed.jpg") for p in opened[-100:])  # drawn and decoded
