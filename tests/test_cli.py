"""The command line, run in-process through ``main([...])`` and once as ``python -m anysize``.

A tiny random-weight SD 1.x pipeline saved to a folder is loaded through the real
``from_pretrained`` path; at 128x128 px and 2 steps a whole run takes well under a second.
"""

import dataclasses
import os
import re
import subprocess
import sys

import pytest
import torch

import anysize
from anysize import api, cli
from anysize.errors import InvalidArgumentError
from anysize.methods import METHODS
from anysize.methods.base import MethodOptions
from anysize.methods.direct import Direct
from anysize.options import option
from anysize.output import read_metadata, read_parameters

FAST = ["--steps", "2", "--size", "128x128"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from anysize.builders import save_tiny_pipeline

    return save_tiny_pipeline("sd1", tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(autouse=True)
def _workdir(tmp_path, monkeypatch):
    """Run every test in its own empty directory."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def run(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def gen(capsys, model_dir, *args):
    return run(capsys, "generate", *args, "--model", model_dir, *FAST, "--quiet")


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------------------ happy paths


def test_generate_writes_png_with_metadata(capsys, model_dir, _workdir):
    rc, out, err = gen(capsys, model_dir, "a red square", "--seed", "3", "--negative", "blurry", "--out", "sq.png")
    assert rc == 0, err
    assert out.strip() == "sq.png"
    meta = read_metadata("sq.png")
    assert meta["prompt"] == "a red square" and meta["negative_prompt"] == "blurry"
    assert (meta["width"], meta["height"], meta["steps"], meta["seed"]) == (128, 128, 2, 3)
    assert meta["method"] == "direct" and meta["model"] == str(model_dir) and meta["family"] == "sd1"
    assert meta["versions"]["anysize"] == anysize.__version__
    params = read_parameters("sq.png")
    assert params.startswith("a red square\nNegative prompt: blurry\nSteps: 2, Sampler: pndm, CFG scale: 7.5, Seed: 3")
    assert "Size: 128x128" in params and "Method: direct" in params
    assert files(_workdir) == ["sq.png"]


def test_same_seed_gives_identical_bytes(capsys, model_dir, _workdir):
    for name, seed in (("a.png", 5), ("b.png", 5), ("c.png", 6)):
        assert gen(capsys, model_dir, "a cat", "--seed", seed, "--out", name)[0] == 0
    assert (_workdir / "a.png").read_bytes() == (_workdir / "b.png").read_bytes()
    assert (_workdir / "a.png").read_bytes() != (_workdir / "c.png").read_bytes()


def test_force_needed_to_overwrite(capsys, model_dir, _workdir):
    assert gen(capsys, model_dir, "a cat", "--seed", "1", "--out", "x.png")[0] == 0
    original = (_workdir / "x.png").read_bytes()
    rc, out, err = gen(capsys, model_dir, "a cat", "--seed", "2", "--out", "x.png")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("anysize: error:") and "--force" in err
    assert (_workdir / "x.png").read_bytes() == original
    rc, out, err = gen(capsys, model_dir, "a cat", "--seed", "2", "--out", "x.png", "--force")
    assert rc == 0, err
    assert (_workdir / "x.png").read_bytes() != original
    assert read_metadata(_workdir / "x.png")["seed"] == 2
    assert files(_workdir) == ["x.png"]


def test_several_prompts_write_a_directory(capsys, model_dir, _workdir):
    prompts = _workdir.parent / "prompts.txt"
    prompts.write_text("a dog\n\n   \na bird\n", encoding="utf-8")
    rc, out, err = gen(capsys, model_dir, "a cat", "--prompts-file", prompts, "--seed", "10", "--out", "batch")
    assert rc == 0, err
    assert files(_workdir) == ["batch", "batch/000-s10.png", "batch/001-s11.png", "batch/002-s12.png"]
    assert out.split() == [os.path.join("batch", f) for f in ("000-s10.png", "001-s11.png", "002-s12.png")]
    metas = [read_metadata(_workdir / "batch" / f"00{i}-s{10 + i}.png") for i in range(3)]
    assert [m["prompt"] for m in metas] == ["a cat", "a dog", "a bird"]
    assert [m["seed"] for m in metas] == [10, 11, 12]


def test_several_prompts_default_directory(capsys, model_dir, _workdir):
    rc, out, err = gen(capsys, model_dir, "a cat", "a dog")
    assert rc == 0, err
    assert files(_workdir) == ["anysize-out", "anysize-out/000-s0.png", "anysize-out/001-s1.png"]


def test_several_prompts_show_one_bar(capsys, model_dir, _workdir):
    from _progress_helpers import bar_lines, opened

    args = ["generate", "a cat", "a dog", "--model", model_dir, "--method", "asd", "--size", "192x128", "--steps", "2"]
    rc, out, err = run(capsys, *args)
    assert rc == 0, err
    assert out.split() == [os.path.join("anysize-out", f) for f in ("000-s0.png", "001-s1.png")]
    lines = bar_lines(err)
    assert opened(lines) == 1, err  # not one bar per prompt, nor one per stage
    assert {ln["desc"] for ln in lines} == {"asd", "asd · stage II (fstd)"}
    assert {ln["postfix"] for ln in lines} == {"[1/2] a cat", "[2/2] a dog"}
    assert len({ln["total"] for ln in lines}) == 4  # grown by each prompt's two loops
    rc, out, err = run(capsys, *args, "--force", "-q")
    assert rc == 0 and err == ""


def test_default_model_size_and_name(capsys, model_dir, _workdir):
    """No --model, --size, --out: the shipped toy model at its native size, default file name."""
    from anysize.defaults import SHIPPED_MODEL

    rc, out, err = run(capsys, "generate", "a red circle on a white background", "--steps", "2", "--seed", "5", "-q")
    assert rc == 0, err
    assert out.strip() == "anysize-direct-128x128-s5.png"
    meta = read_metadata(_workdir / out.strip())
    assert meta["model"] == str(SHIPPED_MODEL)
    assert (meta["width"], meta["height"]) == (128, 128)
    # the toy VAE's factor (4) is known before loading
    rc, out, err = run(capsys, "generate", "a cat", "--size", "130x128", "-q")
    assert rc == 2 and "width 130 is not a multiple of 4 (this model's pixel factor); use 128 or 132" in err
    # an existing directory as --out gets the default name inside
    (_workdir / "d").mkdir()
    rc, out, err = gen(capsys, model_dir, "a cat", "--out", "d")
    assert rc == 0, err
    assert out.strip() == os.path.join("d", "anysize-direct-128x128-s0.png")


@dataclasses.dataclass
class _BoostOptions(MethodOptions):
    boost: float = option(1.0, "a number")
    label: str = option("x", "a string")


class _Boost(Direct):
    name = "test-boost"
    summary = "direct, with options (test only)"
    Options = _BoostOptions


def test_set_passes_method_options(capsys, model_dir, _workdir, monkeypatch):
    monkeypatch.setitem(METHODS, _Boost.name, _Boost)
    rc, out, err = gen(capsys, model_dir, "a cat", "--method", "test-boost", "--set", "boost=2.5", "--set", "label=a b",
                       "--out", "o.png")
    assert rc == 0, err
    meta = read_metadata("o.png")
    assert meta["method"] == "test-boost" and meta["method_options"] == {"boost": 2.5, "label": "a b"}
    assert "boost: 2.5, label: a b, Version:" in read_parameters("o.png")
    rc, out, err = run(capsys, "methods")
    assert "test-boost: direct, with options (test only)" in out
    assert "boost (float): a number\n        default: 1; valid: a number" in out
    assert "label (str): a string\n        default: x; valid: a non-empty string" in out
    rc, out, err = gen(capsys, model_dir, "a cat", "--method", "test-boost", "--set", "nope=1", "--out", "p.png")
    assert rc == 2 and err.count("\n") == 1 and "boost, label" in err
    assert not (_workdir / "p.png").exists()


def test_parse_set_and_size():
    assert cli.parse_set(["a=1", "b=text", "c=[1, 2]", "d=true", "window-size=64", "e=x=y"]) == {
        "a": 1, "b": "text", "c": [1, 2], "d": True, "window_size": 64, "e": "x=y",
    }
    assert cli.parse_size("4096x2048") == (4096, 2048)
    assert cli.parse_size(" 640 X 480 ") == (640, 480)
    from anysize.errors import InvalidSizeError

    for text, part in [("1_28x128", "'1_28'"), ("+256x+128", "'+256'"), ("256x1e2", "'1e2'"), ("٢٥٦x128", "'٢٥٦'")]:
        with pytest.raises(InvalidSizeError, match=re.escape(f"{part} is not an integer; give WIDTHxHEIGHT")):
            cli.parse_size(text)
    with pytest.raises(InvalidSizeError, match="width must be a positive number of pixels, got -5"):
        cli.parse_size("-5x5")


# ------------------------------------------------------------------------------------------ help, methods, version


def test_methods_lists_direct(capsys):
    rc, out, err = run(capsys, "methods")
    assert rc == 0
    assert "direct: the whole canvas in one network call per step (baseline)" in out
    assert "options: none" in out


def test_methods_name_lists_every_option_from_its_declaration(capsys):
    from anysize.methods import get

    rc, out, err = run(capsys, "methods", "fstd", "elastic")
    assert rc == 0 and out.startswith("fstd: ") and "\n\nelastic: " in out and "direct:" not in out
    for name in ("fstd", "elastic"):
        for spec in get(name).Options.specs():
            assert f"    {spec.name} ({spec.kind}" in out and spec.doc in out and spec.requirement() in out
    assert "one of asd, improved" in out and "one of per_run, per_step, gray" in out  # every valid value
    assert "cli: resampling_steps=10" in out  # elastic's presets
    rc, out, err = run(capsys, "methods", "nope")
    assert rc == 2 and "unknown method 'nope'; valid choices: asd, demofusion, direct" in err


def test_help_teaches(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    assert 'anysize generate "a red triangle on a blue background"' in out
    assert "--model stabilityai/stable-diffusion-xl-base-1.0" in out
    assert "--size 4096x2048 --dtype fp16 --device cuda" in out
    rc, out, _ = run(capsys, "generate", "--help")
    assert rc == 0
    assert "multiples of the model's pixel factor: 8 for" in out and "16 for SD3 and FLUX" in out
    assert "native size" in out
    assert "direct" in out and "dpm++2m_karras" in out and "flow_euler" in out
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.startswith(f"anysize {anysize.__version__}")


# ------------------------------------------------------------------------------------------ bad input

PRE_LOAD = [  # (args, fragment of the message): all must fail before any model is loaded
    (["--size", "0x128"], "positive"),
    (["--size", "-8x128"], "positive"),
    (["--size", "100x128"], "use 96 or 104"),
    (["--size", "128x100"], "height 100 is not a multiple of 8"),
    (["--size", "abcx128"], "not an integer"),
    (["--size", "128"], "WIDTHxHEIGHT"),
    (["--method", "nope"], "unknown method 'nope'; valid choices: asd, demofusion, direct"),
    (["--scheduler", "nope"], "valid choices: ddim, ddpm, default, dpm++2m"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'; valid choices: bf16, fp16, fp32"),
    (["--offload", "disk"], "valid choices: model, none, sequential"),
    (["--family", "sd9"], "valid choices: flux, sd-x4-upscaler, sd1, sd2, sd3, sdxl"),
    (["--tiled-vae", "maybe"], "valid choices: auto, fast, off, on"),
    (["--set", "nope=1"], "has no option nope; its options: none"),
    (["--set", "nope"], "KEY=VALUE"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--steps", "two"], "invalid int value"),
    (["--guidance", "-1"], "--guidance must be a number >= 0"),
    (["--seed", "-1"], "--seed must be an integer in [0, 9223372036854775807]"),
    (["--device", "quantum"], "unknown device"),
    (["--model", "/nonexistent/anysize/model"], "does not exist"),
    (["--out", "blocker/out.png"], "not a directory"),
    (["--out", "out.jpg"], "must end in .png"),
    (["--prompts-file", "empty.txt"], "has no prompts"),
    (["--prompts-file", "missing.txt"], "cannot read prompts file"),
    (["--bogus"], "unrecognized arguments: --bogus (see 'anysize generate --help')"),
    (["--steps"], "expected one argument (see 'anysize generate --help')"),
]


@pytest.mark.parametrize("args, message", PRE_LOAD, ids=[" ".join(a) for a, _ in PRE_LOAD])
def test_bad_input_fails_before_loading(capsys, model_dir, _workdir, monkeypatch, args, message):
    (_workdir / "blocker").write_text("a regular file")
    (_workdir / "empty.txt").write_text("\n  \n")
    before = files(_workdir)

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the input was validated")

    monkeypatch.setattr(api, "load", no_load)
    model = [] if "--model" in args else ["--model", model_dir]
    rc, out, err = run(capsys, "generate", "a cat", *model, "--steps", "2", "--out", "out.png", *args)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("anysize: error: "), err
    assert message in err
    assert files(_workdir) == before


POST_LOAD = [  # need the model (or its folder) to be looked at, but fail before any generation
    (lambda m, w: ["--model", w / "emptydir"], "not a diffusers pipeline folder"),
    (lambda m, w: ["--model", m, "--scheduler", "flow_euler"], "choose one of: ddim, ddpm"),
    (lambda m, w: ["--model", m, "--family", "sdxl"], "--family sdxl does not fit this model"),
]


@pytest.mark.parametrize("make_args, message", POST_LOAD, ids=["empty-dir", "flow-scheduler", "wrong-family"])
def test_bad_model_input(capsys, model_dir, _workdir, monkeypatch, make_args, message):
    (_workdir / "emptydir").mkdir()
    before = files(_workdir)

    def no_generate(*a, **k):
        raise AssertionError("generation started")

    monkeypatch.setattr(api, "generate", no_generate)
    rc, out, err = run(capsys, "generate", "a cat", *make_args(model_dir, _workdir), *FAST, "--out", "o.png", "-q")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("anysize: error: ") and message in err, err
    assert files(_workdir) == before


def test_size_factor_of_a_local_model_is_known_before_loading(capsys, model_dir, monkeypatch):
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("loaded"))
    assert cli.size_factor(str(model_dir), None) == (8, "this model's pixel factor")
    assert cli.size_factor(str(model_dir), "flux")[0] == 16
    assert cli.size_factor("no-such/model-anywhere", None) is None


def test_every_output_checked_before_generating(capsys, model_dir, _workdir, monkeypatch):
    (_workdir / "batch").mkdir()
    (_workdir / "batch" / "001-s1.png").write_bytes(b"keep")
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("loaded"))
    rc, out, err = gen(capsys, model_dir, "a", "b", "c", "--out", "batch")
    assert rc == 2 and "001-s1.png already exists" in err and "--force" in err
    assert files(_workdir) == ["batch", "batch/001-s1.png"]
    rc, out, err = gen(capsys, model_dir, "a", "b", "--out", "b.png")
    assert rc == 2 and "directory" in err


def test_no_prompt(capsys, model_dir, _workdir):
    rc, out, err = run(capsys, "generate", "--model", model_dir)
    assert rc == 2 and "no prompt given" in err and err.count("\n") == 1


def test_no_command(capsys):
    rc, out, err = run(capsys)
    assert rc == 2 and "generate, upscale, methods" in err and err.count("\n") == 1


def test_ctrl_c_exits_130_without_files(capsys, model_dir, _workdir, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "generate", interrupted)
    rc, out, err = gen(capsys, model_dir, "a cat", "--out", "x.png")
    assert rc == 130
    assert "Traceback" not in err and "interrupted" in err
    assert files(_workdir) == []


def test_ctrl_c_while_saving_leaves_no_partial_file(capsys, model_dir, _workdir, monkeypatch):
    from PIL import Image

    real_save = Image.Image.save

    def interrupted_save(self, fp, *a, **k):
        fp.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    rc, out, err = gen(capsys, model_dir, "a cat", "--out", "sub/x.png")
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert rc == 130
    assert [f for f in files(_workdir) if f.endswith((".png", ".tmp"))] == []


# ------------------------------------------------------------------------------------------ entry point


def test_python_dash_m_entry_point(model_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "anysize", "generate", "a cat", "--model", str(model_dir), *FAST, "--out", "cat.png"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cat.png"
    assert read_metadata(tmp_path / "cat.png")["prompt"] == "a cat"
    # a bad size: exit 2 and exactly one line on stderr, nothing else (no warnings, no traceback)
    proc = subprocess.run(cmd[:-1] + ["dog.png", "--size", "100x128"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "anysize: error: width 100 is not a multiple of 8 (this model's pixel factor); use 96 or 104"
    ]
    assert not (tmp_path / "dog.png").exists()


# ------------------------------------------------------------------------------------------ default model


def test_default_model_missing_is_a_clear_error(capsys, tmp_path, monkeypatch, _workdir):
    import anysize.defaults

    monkeypatch.setattr(anysize.defaults, "SHIPPED_MODEL", tmp_path / "gone")
    rc, out, err = run(capsys, "generate", "a cat", "-q")
    assert rc == 2 and "the embedded default model is missing" in err and "--model" in err
    assert files(_workdir) == []


# ------------------------------------------------------------------------------------------ demo


def test_demo_writes_sheet_and_metrics(capsys, model_dir, _workdir):
    import json

    from PIL import Image

    from anysize.toy.demo import COLUMNS

    # one method keeps this test quick; that every registered method gets a row by default is tested below
    rc, out, err = run(capsys, "demo", "--model", model_dir, "--steps", "2", "--seed", "4", "--out", "s.png", "-q",
                       "--methods", "direct")
    assert rc == 0, err
    assert out.split() == ["s.png", "s.json"]
    records = json.loads((_workdir / "s.json").read_text())
    assert records["config"]["seed"] == 4 and records["config"]["steps"] == 2
    assert records["config"]["methods"] == ["direct"]
    cells = records["cells"]
    assert [(c["method"], c["column"]) for c in cells] == [("direct", c[0]) for c in COLUMNS]
    sizes = {c["column"]: (c["width"], c["height"]) for c in cells}
    assert sizes == {"native": (128, 128), "2x wide": (256, 128), "2x tall": (128, 256), "4x area": (256, 256)}
    for c in cells:
        assert c["error"] is None and c["network_calls"] > 0
        assert set(c["analysis"]) >= {"n_objects", "fidelity", "colour_match", "shape_match"}
    sheet = Image.open(_workdir / "s.png")
    # every cell at its true size side by side, plus labels
    assert sheet.width > 128 + 256 + 128 + 256 and sheet.height > 256
    assert read_metadata(_workdir / "s.png")["kind"] == "anysize demo sheet"
    # no silent overwrite, of the sheet or of the metrics
    (_workdir / "s.png").unlink()
    rc, out, err = run(capsys, "demo", "--model", model_dir, "--steps", "2", "--out", "s.png", "-q")
    assert rc == 2 and "s.json already exists" in err and not (_workdir / "s.png").exists()


def test_demo_default_steps_are_capped_for_speed(model_dir):
    import anysize
    from anysize.toy.demo import DEMO_STEPS, run_demo

    adapter = anysize.load(model_dir)
    assert adapter.default_steps > DEMO_STEPS
    result = run_demo(adapter, methods=["direct"], columns=[("native", 1, 1)], progress=False)
    assert result.config["steps"] == DEMO_STEPS
    # a PNDM scheduler evaluates steps + 1 times, with guidance twice each
    assert result.cells[0].network_calls in (2 * DEMO_STEPS, 2 * (DEMO_STEPS + 1))


def test_demo_shows_one_progress_bar_over_the_cells(model_dir, capsys):
    import anysize
    from anysize.toy.demo import run_demo

    adapter = anysize.load(model_dir)
    capsys.readouterr()
    run_demo(adapter, methods=["direct", "fstd"], columns=[("native", 1, 1), ("2x wide", 1, 2)], steps=1)
    err = capsys.readouterr().err
    assert "anysize demo" in err and "4/4" in err and "fstd 256x128" in err  # cells done / total, the cell running
    assert "direct ·" not in err and "it/s]" not in err.replace("cell/s]", "")  # no per-run (per-step) bars


def test_demo_uses_and_shows_a_methods_quick_settings(model_dir):
    import anysize
    from anysize.toy.demo import render_sheet, run_demo

    adapter = anysize.load(model_dir)  # native latent 16: multidiffusion's quick stride is 16 // 2
    result = run_demo(adapter, methods=["direct", "multidiffusion"], columns=[("2x wide", 1, 2)], steps=1,
                      progress=False)
    assert result.config["method_options"] == {"multidiffusion": {"stride": 8}}
    calls = {c.method: c.network_calls for c in result.cells}
    # 16x32 latent: windows at columns 0, 8, 16 (3), with guidance (2), PNDM's 2 evaluations for 1 step
    assert calls["multidiffusion"] == 3 * 2 * calls["direct"] // 2
    assert render_sheet(result).width > 256


def _fake_demo_result():
    """A sheet's worth of made-up cells (no generation): long captions, a long row name and setting,
    a cell that could not run."""
    from PIL import Image

    from anysize.toy.demo import COLUMNS, DemoCell, DemoResult

    long_name = "a-method-with-a-name-far-too-long-for-the-margin"
    cells = []
    for row, method in enumerate(["direct", long_name, "fstd"]):
        for k, (label, mh, mw) in enumerate(COLUMNS):
            cell = DemoCell(method, label, 128 * mw, 128 * mh, seconds=12.4 + k)
            if method == long_name and label == "4x area":
                cell.error = "needs a larger canvas"
            else:  # the reviewed sheet's longest caption under the 128-px columns
                cell.image = Image.new("RGB", (cell.width, cell.height), (40 * row, 60 * k, 200))
                cell.analysis = {"n_objects": 2 if k == 3 else int(k == 1), "n_other_objects": 14 - k,
                                 "fidelity": k == 1}
            cells.append(cell)
    options = {long_name: {"lora": "/a/very/long/path/without/any/spaces/to/a/lora.safetensors",
                           "resampling_steps": 1, "repaint": False}}
    return DemoResult(cells, {"method_options": options})


def test_demo_sheet_texts_stay_in_their_column_and_apart(monkeypatch):
    """Every text of the sheet is wrapped to its column (a caption, a column title) or to the left
    margin (a row's name and settings), and the rows make room for the wrapped lines: no text box
    leaves its column, meets another or covers an image (the user review: under 128-px columns each
    caption ran into the next column's)."""
    from PIL import Image, ImageDraw

    from anysize.toy.demo import _cell_caption, render_sheet

    result = _fake_demo_result()
    title = "'" + "a red triangle on a blue background " * 6 + "'  seed 0  2 steps"
    texts, pastes = [], []
    draw_text, paste = ImageDraw.ImageDraw.text, Image.Image.paste

    def record_text(self, xy, text, *args, **kwargs):
        texts.append((text, self.textbbox(xy, text, font=kwargs.get("font")), kwargs.get("fill")))
        return draw_text(self, xy, text, *args, **kwargs)

    def record_paste(self, im, box=None, *args, **kwargs):
        pastes.append((box[0], box[1], box[0] + im.width, box[1] + im.height))
        return paste(self, im, box, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record_text)
    monkeypatch.setattr(Image.Image, "paste", record_paste)
    sheet = render_sheet(result, title=title)
    monkeypatch.undo()

    assert len(pastes) == len(result.cells) - 1
    starts = sorted({p[0] for p in pastes})  # each column's x: a column and its gutter end at the next one
    assert len(starts) == 4
    bounds = [0] + starts + [sheet.width]
    first = next(i for i, (_, box, _) in enumerate(texts) if box[0] == starts[0])  # the title's lines come first
    for text, (x0, y0, x1, y1), _ in texts:
        assert 0 <= x0 < x1 <= sheet.width and 0 <= y0 < y1 <= sheet.height, text
    for text, (x0, y0, x1, y1), _ in texts[first:]:
        region = max(i for i, b in enumerate(bounds[:-1]) if b <= x0)  # the margin or a column
        assert x1 <= bounds[region + 1], f"{text!r} ({x0}..{x1}) runs past its column ({bounds[region + 1]})"

    def meet(a, b):
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    for i, (text, box, _) in enumerate(texts):
        for other, obox, _ in texts[i + 1:]:
            assert not meet(box, obox), f"{text!r} {box} overlaps {other!r} {obox}"
        for image in pastes:
            assert not meet(box, image), f"{text!r} {box} covers the image at {image}"
    # nothing is lost in the wrapping: the captions' words, in order; a word too long is cut with an ellipsis
    captions = [t for t, _, fill in texts if fill in ((170, 0, 0), (0, 110, 0))]
    assert " ".join(captions) == " ".join(_cell_caption(c) for c in result.cells)
    assert len(captions) > len(result.cells)
    assert any(t.startswith("lora=/a/very") and t.endswith("\u2026") for t, _, _ in texts)
    assert any(t.startswith("a-method-with") and t.endswith("\u2026") for t, _, _ in texts)
    assert {"resampling_steps=1", "repaint=False"} <= {t for t, _, _ in texts}  # short enough: whole
    assert first > 1  # the long title is wrapped to the sheet


def test_demo_rows_follow_the_registry(capsys, model_dir, _workdir, monkeypatch):
    import json

    # a registry of direct and one new method: the default sheet has a row for each, automatically
    for name in list(METHODS):
        if name != "direct":
            monkeypatch.delitem(METHODS, name)
    monkeypatch.setitem(METHODS, _Boost.name, _Boost)
    rc, out, err = run(capsys, "demo", "--model", model_dir, "--steps", "1", "-q")
    assert rc == 0, err
    records = json.loads((_workdir / "anysize-demo.json").read_text())
    assert records["config"]["methods"] == ["direct", "test-boost"]
    assert sorted({c["method"] for c in records["cells"]}) == ["direct", "test-boost"]
    # --methods picks rows
    rc, out, err = run(capsys, "demo", "--model", model_dir, "--steps", "1", "-q", "--force", "--methods", "test-boost")
    assert rc == 0, err
    cells = json.loads((_workdir / "anysize-demo.json").read_text())["cells"]
    assert {c["method"] for c in cells} == {"test-boost"}


# ------------------------------------------------------------------------------------------ eval composition


def test_eval_composition_table_and_json(capsys, model_dir, _workdir):
    import json

    from anysize.toy.benchmark import toy_prompts

    rc, out, err = run(capsys, "eval", "composition", "--model", model_dir, "--method", "direct",
                       "--size", "128x128", "256x128", "--n", "3", "--batch", "2", "--steps", "2", "--seed", "7", "-q")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("| method | size | n | objects | one object | duplicated |")
    assert lines[2].startswith("| direct | 128x128 | 3 |") and lines[3].startswith("| direct | 256x128 | 3 |")
    assert lines[-1] == "anysize-eval-composition-direct-n3-s7.json"
    results = json.loads((_workdir / lines[-1]).read_text())["results"]
    assert [(r["config"]["width"], r["config"]["height"]) for r in results] == [(128, 128), (256, 128)]
    for r in results:
        assert [i["seed"] for i in r["images"]] == [7, 8, 9]
        assert [i["prompt"] for i in r["images"]] == toy_prompts(3)
        s = r["summary"]
        assert s["n"] == 3 and 0 <= s["duplication_rate"] <= 1
        # the rates are the per-image verdicts, counted
        assert s["duplication_rate"] == pytest.approx(sum(i["n_objects"] > 1 for i in r["images"]) / 3)
        # one network evaluation per image, step and guidance branch, whatever the batching
        one = api.generate(api.load(str(model_dir)), "a cat", steps=2, progress=False).network_calls
        assert r["summary"]["network_calls"] == 3 * one
    rc, out, err = run(capsys, "eval", "composition", "--model", model_dir, "--n", "1", "--steps", "1",
                       "--seed", "7", "--out", lines[-1], "-q")
    assert rc == 2 and "already exists" in err


def test_eval_composition_shows_one_bar_over_the_cells(capsys, model_dir, _workdir):
    from _progress_helpers import bar_lines, opened

    args = ["eval", "composition", "--model", model_dir, "--method", "direct", "--size", "128x128", "256x128",
            "--batch", "2", "--steps", "1", "--out", "c.json"]
    rc, out, err = run(capsys, *args, "--n", "2")
    assert rc == 0, err
    lines = bar_lines(err)
    assert opened(lines) == 1, err
    assert {ln["total"] for ln in lines} == {4}  # cells x n, known from the start
    assert {ln["desc"] for ln in lines} == {"composition · direct 128x128", "composition · direct 256x128"}
    assert [ln["n"] for ln in lines].count(4) == 1  # the final line once
    # --resume with a larger n: only the images still to make are counted
    rc, out, err = run(capsys, *args, "--n", "3", "--resume")
    assert rc == 0, err
    assert {ln["total"] for ln in bar_lines(err)} == {2}


class _FluxOnly(Direct):
    name = "test-flux-only"
    summary = "direct, FLUX only (test only)"
    families = ("flux",)


def test_eval_composition_all_runs_the_registry_for_the_model(capsys, model_dir, _workdir, monkeypatch):
    import json

    # 'all' = every registered method that supports the model (the FLUX-only one is left out), once each
    for name in list(METHODS):
        if name != "direct":
            monkeypatch.delitem(METHODS, name)
    monkeypatch.setitem(METHODS, _Boost.name, _Boost)
    monkeypatch.setitem(METHODS, _FluxOnly.name, _FluxOnly)
    rc, out, err = run(capsys, "eval", "composition", "--model", model_dir, "--method", "all", "direct",
                       "--size", "128x128", "128x64", "--n", "1", "--steps", "1", "-q")
    assert rc == 0, err
    results = json.loads((_workdir / "anysize-eval-composition-all-n1-s0.json").read_text())["results"]
    assert [(r["config"]["method"], r["config"]["width"], r["config"]["height"]) for r in results] == [
        ("direct", 128, 128), ("direct", 128, 64), ("test-boost", 128, 128), ("test-boost", 128, 64)]
    # the method x size table: a row per method, a column per size, "one object / duplicated"
    table = out.split("\n\n")[1].splitlines()
    assert table[0] == "| method (one object / duplicated) | 128x128 | 128x64 |"
    by_method = {r["config"]["method"] + r["config"]["width"].__str__() + "x" + str(r["config"]["height"]): r["summary"]
                 for r in results}
    s = by_method["test-boost128x64"]
    assert table[3].startswith("| test-boost | ") and table[3].endswith(
        f" | {s['single_object_rate']:.0%} / {s['duplication_rate']:.0%} |")
    # an option every method must take: the one that does not is named
    rc, out, err = run(capsys, "eval", "composition", "--model", model_dir, "--method", "all", "--set", "boost=2",
                       "--n", "1", "--steps", "1", "-q", "--out", "x.json")
    assert rc == 2 and "direct" in err and "boost" in err


class _WideOnlyOutOfMemory(Direct):
    """Refuses canvases taller than wide (a 'not run' cell, named up front); runs out of memory on
    the second network call of a wide canvas while ``OOM`` is set (a cell that fails mid-run)."""

    name = "test-wide"
    summary = "direct on wide canvases (test only)"
    OOM = True

    def check(self, adapter, height, width, steps=None):
        super().check(adapter, height, width, steps)
        if height > width:
            raise InvalidArgumentError(f"test-wide needs a wide canvas, not {width}x{height}")

    def predict(self, ctx, x_in):
        if self.OOM and x_in.shape[-1] > x_in.shape[-2] and ctx.index == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return super().predict(ctx, x_in)


def test_eval_composition_cells_not_run_and_resume(capsys, model_dir, _workdir, monkeypatch):
    import json

    from anysize.toy import benchmark as toy_benchmark

    for name in list(METHODS):
        if name != "direct":
            monkeypatch.delitem(METHODS, name)
    monkeypatch.setitem(METHODS, _WideOnlyOutOfMemory.name, _WideOnlyOutOfMemory)
    ran = []
    real = toy_benchmark.composition_benchmark
    monkeypatch.setattr(toy_benchmark, "composition_benchmark",
                        lambda adapter, **kw: ran.append((kw["method"], kw["width"], kw["height"])) or real(adapter, **kw))
    args = ["eval", "composition", "--model", model_dir, "--method", "all", "--size", "128x64", "64x128",
            "--n", "2", "--steps", "2", "--out", "field.json", "-q"]
    rc, out, err = run(capsys, *args)
    # the refused cell is named up front and not run; the one out of memory fails alone, the others run
    assert ran == [("direct", 128, 64), ("direct", 64, 128), ("test-wide", 128, 64)]
    assert rc == 1 and err.count("\n") == 2, err
    assert "test-wide at 128x64: failed during the run: out of memory on cpu generating 2 128x64 images" in err
    assert err.splitlines()[-1].startswith("anysize: error: 1 of 4 cells failed during the run")
    results = json.loads((_workdir / "field.json").read_text())["results"]
    assert [("not_run" in r, r["config"]["method"], r["config"]["width"]) for r in results] == [
        (False, "direct", 128), (False, "direct", 64), (True, "test-wide", 128), (True, "test-wide", 64)]
    assert results[2]["not_run"].startswith("failed during the run: out of memory") and "--tiled-vae fast" in results[2]["not_run"]
    assert "--method" not in results[2]["not_run"]  # this registry has no method with a bounded working set to name
    assert results[3]["not_run"] == "test-wide needs a wide canvas, not 64x128"
    table = out.split("\n\n")
    assert "| test-wide | 128x64 | 2 | not run (1) |" in table[0]
    assert "2. test-wide at 64x128: test-wide needs a wide canvas, not 64x128" in table[1]
    assert table[2].splitlines()[3] == "| test-wide | not run | not run |"
    # --resume runs only what is missing: the failed cell, now that it fits
    monkeypatch.setattr(_WideOnlyOutOfMemory, "OOM", False)
    ran.clear()
    rc, out, err = run(capsys, *args, "--resume")
    assert rc == 0, err
    assert ran == [("test-wide", 128, 64)]
    again = json.loads((_workdir / "field.json").read_text())["results"]
    assert again[:2] == results[:2] and again[2]["summary"]["n"] == 2 and "not_run" in again[3]
    # other settings than the saved cells': refused before any work, the file kept
    rc, out, err = run(capsys, *args[:-5], "--n", "2", "--steps", "3", "--out", "field.json", "-q", "--resume")
    assert rc == 2 and "--resume: field.json has direct at 128x64 with other settings (steps 2, now 3)" in err
    rc, out, err = run(capsys, *args[:-5], "--n", "1", "--steps", "2", "--out", "field.json", "-q", "--resume")
    assert rc == 2 and "with other settings (n 2, now 1)" in err  # a smaller n does not shrink the saved cells
    rc, out, err = run(capsys, *args[:-5], "--n", "3", "--steps", "3", "--out", "field.json", "-q", "--resume")
    assert rc == 2 and "with other settings (n 2, now 3, steps 2, now 3)" in err  # a larger n grows only the same cell
    assert json.loads((_workdir / "field.json").read_text())["results"] == again
    rc, out, err = run(capsys, *args, "--resume", "--force")
    assert rc == 2 and "give one of them" in err
    (_workdir / "other.json").write_text('{"cells": []}')
    rc, out, err = run(capsys, *args[:-3], "--out", "other.json", "-q", "--resume")
    assert rc == 2 and "other.json is not an 'eval composition' results file" in err
    # a cell that did not run has no images to mix: at other settings it runs (here: is refused) again
    rc, out, err = run(capsys, *args[:7], "64x128", "--n", "3", "--steps", "2", "--out", "field.json", "-q", "--resume")
    assert rc == 0, err
    grown = json.loads((_workdir / "field.json").read_text())["results"]
    assert [(r["config"]["method"], r["config"]["width"], r["config"]["n"], "not_run" in r) for r in grown] == [
        ("direct", 64, 3, False), ("test-wide", 64, 3, True), ("direct", 128, 2, False), ("test-wide", 128, 2, False)]
    assert grown[0]["images"][:2] == again[1]["images"]


class _StopsAtImage(Direct):
    """Direct, with Ctrl-C pressed while image ``STOP_AT`` is generated (None: never)."""

    name = "test-stops"
    summary = "direct, interrupted at one image (test only)"
    STOP_AT = None

    def predict(self, ctx, x_in):
        if self.STOP_AT is not None and self.STOP_AT in ctx.seeds:
            raise KeyboardInterrupt
        return super().predict(ctx, x_in)


def test_eval_composition_resume_goes_on_from_the_last_saved_batch_with_the_same_images(capsys, model_dir, _workdir,
                                                                                         monkeypatch):
    import json

    monkeypatch.setitem(METHODS, _StopsAtImage.name, _StopsAtImage)
    seeds = []
    real = api.generate
    monkeypatch.setattr(api, "generate", lambda *a, **k: seeds.append(k["seed"]) or real(*a, **k))
    args = ["eval", "composition", "--model", model_dir, "--method", "direct", "test-stops", "--size", "128x64",
            "--n", "5", "--batch", "2", "--steps", "2", "-q"]
    rc, out, err = run(capsys, *args, "--out", "whole.json")
    assert rc == 0, err
    whole = json.loads((_workdir / "whole.json").read_text())["results"]
    monkeypatch.setattr(_StopsAtImage, "STOP_AT", 3)  # Ctrl-C in the second batch of test-stops (images 2, 3)
    seeds.clear()
    rc, out, err = run(capsys, *args, "--out", "stopped.json")
    assert rc == 130 and seeds == [[0, 1], [2, 3], [4], [0, 1], [2, 3]]
    saved = json.loads((_workdir / "stopped.json").read_text())["results"]
    assert saved[0]["images"] == whole[0]["images"] and set(saved[1]) == {"config", "partial"}
    assert [i["seed"] for i in saved[1]["partial"]["images"]] == [0, 1]
    # --resume: direct is kept, test-stops goes on from image 2, and the cell is the one a whole run makes
    monkeypatch.setattr(_StopsAtImage, "STOP_AT", None)
    seeds.clear()
    rc, out, err = run(capsys, *args[:-1], "--out", "stopped.json", "--resume")  # not quiet: the note says what is kept
    assert rc == 0, err
    assert seeds == [[2, 3], [4]]
    resumed = json.loads((_workdir / "stopped.json").read_text())["results"]
    assert resumed[0] == saved[0] and "direct at 128x64" not in err  # kept as it was
    assert "--resume: 1 of 2 cells already in stopped.json; test-stops at 128x64 goes on from image 2" in err
    assert resumed[1]["images"] == whole[1]["images"] and resumed[1]["summary"]["resumed_at_image"] == 2
    same = {k: v for k, v in resumed[1]["summary"].items() if k not in ("seconds_per_image", "resumed_at_image")}
    assert same == {k: v for k, v in whole[1]["summary"].items() if k != "seconds_per_image"}


def test_eval_composition_resume_with_a_larger_n_grows_the_saved_cells_with_the_images_a_whole_run_makes(
        capsys, model_dir, _workdir, monkeypatch):
    import json

    seeds = []
    real = api.generate
    monkeypatch.setattr(api, "generate", lambda *a, **k: seeds.append(k["seed"]) or real(*a, **k))
    args = ["eval", "composition", "--model", model_dir, "--method", "direct", "--size", "128x64", "64x128",
            "--batch", "2", "--steps", "2", "-q"]
    rc, out, err = run(capsys, *args, "--n", "5", "--out", "whole.json")
    assert rc == 0, err
    whole = json.loads((_workdir / "whole.json").read_text())["results"]
    rc, out, err = run(capsys, *args, "--n", "3", "--out", "grown.json")
    assert rc == 0, err
    small = json.loads((_workdir / "grown.json").read_text())["results"]
    seeds.clear()
    rc, out, err = run(capsys, *args[:-1], "--n", "5", "--out", "grown.json", "--resume")
    assert rc == 0, err
    assert seeds == [[3, 4], [3, 4]]  # only the images the saved cells lack
    assert "128x64 goes on from image 3; direct at 64x128 goes on from image 3" in err
    grown = json.loads((_workdir / "grown.json").read_text())["results"]
    for g, w, s in zip(grown, whole, small):
        assert g["config"] == w["config"] and g["images"] == w["images"] and g["images"][:3] == s["images"]
        assert g["summary"]["resumed_at_image"] == 3
        same = {k: v for k, v in g["summary"].items() if k not in ("seconds_per_image", "resumed_at_image")}
        assert same == {k: v for k, v in w["summary"].items() if k != "seconds_per_image"}
        # the saved images' time is kept: the grown cell's time covers the 3 saved images and the 2 new ones
        assert g["summary"]["seconds_per_image"] * 5 > s["summary"]["seconds_per_image"] * 3


@pytest.mark.parametrize("n", ["2", "3"])  # the saved cells kept as they are, or grown to a larger n
def test_eval_composition_stopped_before_the_saved_cells_it_resumes_keeps_them_in_the_file(capsys, model_dir, _workdir,
                                                                                            monkeypatch, n):
    import json

    monkeypatch.setitem(METHODS, _StopsAtImage.name, _StopsAtImage)
    args = ["eval", "composition", "--model", model_dir, "--size", "128x64", "64x128", "--steps", "2", "-q",
            "--out", "field.json"]
    rc, out, err = run(capsys, *args, "--method", "direct", "--n", "2")
    assert rc == 0, err
    saved = json.loads((_workdir / "field.json").read_text())["results"]
    # test-stops runs first and is stopped at its first image: direct's cells, not reached yet, stay in the file
    monkeypatch.setattr(_StopsAtImage, "STOP_AT", 0)
    rc, out, err = run(capsys, *args, "--method", "test-stops", "direct", "--n", n, "--batch", "1", "--resume")
    assert rc == 130
    assert json.loads((_workdir / "field.json").read_text())["results"] == saved
    # and stopped in its second batch: its first image is saved next to them
    monkeypatch.setattr(_StopsAtImage, "STOP_AT", 1)
    rc, out, err = run(capsys, *args, "--method", "test-stops", "direct", "--n", n, "--batch", "1", "--resume")
    assert rc == 130
    now = json.loads((_workdir / "field.json").read_text())["results"]
    assert now[1:] == saved and [i["seed"] for i in now[0]["partial"]["images"]] == [0]


def test_eval_composition_resume_takes_the_embedded_model_saved_on_another_machine(capsys, _workdir, monkeypatch):
    import json

    args = ["eval", "composition", "--n", "1", "--steps", "1", "--size", "128x128", "--out", "t.json", "-q"]
    rc, out, err = run(capsys, *args)
    assert rc == 0, err
    saved = json.loads((_workdir / "t.json").read_text())
    # the GPU machine's checkout lies elsewhere: its path of the same embedded model
    saved["results"][0]["config"]["model"] = "/root/gpu-checkout/anysize/toy/model"
    (_workdir / "t.json").write_text(json.dumps(saved))
    monkeypatch.setattr(api, "generate", lambda *a, **k: pytest.fail("generated again"))
    rc, out, err = run(capsys, *args, "--resume")
    assert rc == 0, err
    saved["results"][0]["config"]["model"] = "/root/other-model"  # a different model is not the same cell
    (_workdir / "t.json").write_text(json.dumps(saved))
    rc, out, err = run(capsys, *args, "--resume")
    assert rc == 2 and "with other settings (model '/root/other-model', now " in err


TOY_COMMANDS_BAD = [  # all fail before the model is loaded
    (["demo", "--methods", "nope"], "unknown method 'nope'; valid choices: asd, demofusion, direct"),
    (["demo", "--steps", "0"], "--steps must be a positive integer"),
    (["demo", "--out", "x.jpg"], "must end in .png"),
    (["demo", "--dtype", "fp8"], "valid choices: bf16, fp16, fp32"),
    (["eval", "composition", "--method", "nope"], "unknown method 'nope'"),
    (["eval", "composition", "--n", "0"], "--n must be a positive integer"),
    (["eval", "composition", "--batch", "0"], "--batch must be a positive integer"),
    (["eval", "composition", "--size", "100x128"], "not a multiple of 8"),
    (["eval", "composition", "--out", "r.txt"], "must end in .json"),
    (["eval", "composition", "--set", "nope=1"], "has no option nope"),
]


@pytest.mark.parametrize("args, message", TOY_COMMANDS_BAD, ids=[" ".join(a) for a, _ in TOY_COMMANDS_BAD])
def test_demo_and_eval_bad_input(capsys, model_dir, _workdir, monkeypatch, args, message):
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("loaded"))
    rc, out, err = run(capsys, *args, "--model", model_dir)
    assert rc == 2 and out == "" and message in err and err.count("\n") == 1, err
    assert files(_workdir) == []


def test_eval_needs_an_evaluation(capsys):
    rc, out, err = run(capsys, "eval")
    assert rc == 2 and "choose an evaluation: composition" in err
