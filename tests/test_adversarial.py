"""The adversarial suite: bad input, from every front end, and the exact outcome each must get.

Every case is one small record in a table, and each front end has one parametrised test that runs
its table:

* ``CLI``: a command line (``{model}`` stands for a tiny SD 1.x folder) and either ``refused(...)``
  — exit code 2, stdout empty, stderr exactly one line ``anysize: error: ...`` matching the regex, no
  ``Traceback``, no file created or changed in the working directory, and (unless ``loads=True``)
  no model loaded — or ``works(...)`` with a check of the result.
* ``API``: a call on a tiny SD 1.x adapter (``ctx.adapter``), a tiny pipeline (``ctx.pipe``) or its
  folder (``ctx.model_dir``), and either ``raises(ErrorType, regex)`` — the typed anysize error,
  raised before any work (no prompt encoded, no VAE encode, no network call, no weights read unless
  ``loads=True``) — or ``returns(check)``.

To add a case, append one line to the table of its front end: ``refused("name", *argv, match=...)``,
``works("name", *argv, check=...)``, ``raises("name", lambda ctx: ..., Error, "regex")`` or
``returns("name", lambda ctx: ..., check)``. The working directory of every CLI case holds the files
of ``FILES`` (a valid PNG, a truncated one, a text file named .png, a directory, an existing output,
prompt files, a folder that is no model, ...); add one there when a case needs it. Keep it growing
with every new front end (the web UI, batch rows): give it a table and a runner of its own here.
Keep it fast: prefer cases that fail before a model loads; the few that run use the tiny model,
1-2 steps, 64-128 px.

Found by this suite (each fixed at the depth where it belongs, and held here):

* ``anysize generate ""`` (or ``"   "``) generated an image from no text with exit 0: a blank
  command-line prompt is refused (blank lines of a prompts file are skipped, as before).
* ``--out ""`` (generate, upscale) wrote the default name into the current directory: refused.
* ``anysize demo --json X --out X`` wrote the sheet, then refused the metrics with exit 2, leaving a
  file behind: refused before any work.
* ``demo``, ``eval composition`` and ``bench`` ran with ``--seed -1`` (``generate`` refuses it); and
  ``generate a b --seed 9223372036854775807`` gave image 2 a seed beyond the range: one seed rule,
  ``anysize.api.check_seed``, for every front end.
* ``anysize.generate``/``upscale``: ``seed=-1`` ran and recorded the seed 18446744073709551615;
  ``seed=1.5``, ``"1"`` and ``True`` were truncated or converted silently; a seed list holding
  ``"x"`` and ``seed=2**64`` ended in a ``ValueError``; ``guidance="7"`` was converted and
  ``guidance=nan`` gave a NaN image; ``method_options="tile=64"`` was a ``TypeError``;
  ``callback="x"`` a ``TypeError`` after the prompt was encoded and a step run; ``cancel=True`` an
  ``AttributeError``; ``progress="yes"`` was taken; ``method=Direct`` (the class) said "unknown
  method <class ...>"; a model path instead of a loaded model said "str is not a text-to-image
  pipeline"; ``upscale(size="128x128")`` was a ``ValueError``.
* ``anysize.load(123)`` was a ``TypeError``; ``device="quantum"`` a ``RuntimeError`` and, without
  CUDA, ``device="cuda"`` an ``AssertionError``, both after the weights were read;
  ``family="sdxl"`` on an SD 1.5 folder returned an SDXL adapter (the CLI refused it; the API did not).

The seed rule: seeds are integers in [0, 2**63 - 1]. torch's ``manual_seed`` takes negative ones,
but records them as their unsigned 64-bit twin, so a PNG's seed would not be the one given; and
the command line has always refused them.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

import anysize
from anysize import cli, methods
from anysize.errors import InvalidArgumentError, InvalidSizeError, ModelLoadError, OutputExistsError, UnknownChoiceError
from anysize.models import FamilyMismatchError
from anysize.output import read_metadata

MAX_SEED = 2**63 - 1

# ------------------------------------------------------------------------------------------ the files


def _png(size=(64, 64), colour=(200, 30, 30)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


#: the working directory of every CLI case: name -> bytes (a file) or None (an empty directory)
FILES: dict[str, bytes | None] = {
    "ok.png": _png(),
    "trunc.png": _png()[: len(_png()) // 2],
    "zero.png": b"",
    "text.png": b"this is not an image\n",
    "exists.png": b"an earlier result that must survive",
    "blocker": b"a regular file where a folder is expected",
    "adir": None,
    "noindex": None,  # a folder without model_index.json
    "noindex/weights.bin": b"\0" * 16,
    "empty.txt": b"",
    "blank.txt": b"\n   \n\t\n",
    "latin1.txt": "a café\n".encode("latin-1"),
    "prompts.txt": "\ufeffa red circle\r\n\r\na blue square\r\n".encode("utf-8"),
}


def _snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with a hash of its content (a folder: "dir")."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------------------ the CLI table


@dataclass(frozen=True)
class CLICase:
    name: str
    argv: tuple[str, ...]
    #: regex of the one error line (after "anysize: error: "); None: the command must succeed
    error: str | None = None
    #: the check needs the model's weights (else reading them fails the case)
    loads: bool = False
    #: a success's check(work, stdout)
    check: Callable[[Path, str], None] | None = None


def refused(name: str, *argv: str, match: str, loads: bool = False) -> CLICase:
    return CLICase(name, argv, match, loads)


def works(name: str, *argv: str, check: Callable[[Path, str], None]) -> CLICase:
    return CLICase(name, argv, None, True, check)


M = ("--model", "{model}")
GEN = ("generate", "a cat", *M, "--steps", "1", "--size", "64x64", "-q")  # + the case's own arguments
UP = ("upscale", "ok.png", *M, "--steps", "2", "-q")
MD = ("generate", "a cat", *M, "--method", "multidiffusion", "-q")


def _png_of(path: str, size: tuple[int, int], **meta):
    def check(work: Path, out: str):
        assert out.strip().splitlines()[-1] == path
        with Image.open(work / path) as im:
            assert im.size == size and im.format == "PNG"
        got = read_metadata(work / path)
        assert all(got[k] == v for k, v in meta.items()), {k: got[k] for k in meta}
    return check


def _two_prompts_from_the_file(work: Path, out: str):
    written = out.split()
    assert written == ["anysize-out/000-s0.png", "anysize-out/001-s1.png"]
    assert [read_metadata(work / w)["prompt"] for w in written] == ["a red circle", "a blue square"]


def _lists_direct(work: Path, out: str):
    assert out.startswith("direct: ") and "options: none" in out


CLI: list[CLICase] = [
    # ---- sizes
    refused("size zero", *GEN, "--size", "0x64", match=r"width must be a positive number of pixels, got 0"),
    refused("size negative", *GEN, "--size", "-64x64", match=r"width must be a positive number of pixels, got -64"),
    refused("size not a multiple", *GEN, "--size", "63x64", match=r"width 63 is not a multiple of 8 .*use 56 or 64"),
    refused("size abc", *GEN, "--size", "abcx64", match=r"width 'abc' is not an integer"),
    refused("size 64x", *GEN, "--size", "64x", match=r"size '64x' is not WIDTHxHEIGHT"),
    refused("size one number", *GEN, "--size", "64", match=r"size '64' is not WIDTHxHEIGHT"),
    refused("size three numbers", *GEN, "--size", "64x64x64", match=r"is not WIDTHxHEIGHT"),
    refused("size absurdly large", *GEN, "--size", "999992x999992", loads=True,
            match=r"999992x999992 needs at least [\d.]+ GiB .*the largest square that could fit is about \d+x\d+"),
    # ---- names
    refused("unknown method", *GEN, "--method", "nope", match=r"unknown method 'nope'; valid choices: asd, demofusion, direct, "),
    refused("empty method", *GEN, "--method", "", match=r"unknown method ''; valid choices: "),
    refused("unknown scheduler", *GEN, "--scheduler", "nope", match=r"unknown scheduler 'nope'; valid choices: .*ddim"),
    refused("flow scheduler on a U-Net", *GEN, "--scheduler", "flow_euler", loads=True,
            match=r"scheduler 'flow_euler' does not fit a sd1 model .*choose one of: ddim"),
    refused("unknown dtype", *GEN, "--dtype", "fp8", match=r"unknown dtype 'fp8'; valid choices: bf16, fp16, fp32"),
    refused("unknown family", *GEN, "--family", "sd9", match=r"unknown family 'sd9'; valid choices: flux, "),
    refused("family of another layout", *GEN, "--family", "sdxl", loads=True,
            match=r"--family sdxl does not fit this model: .*sd1 pipeline .*leave --family out"),
    refused("unknown device", *GEN, "--device", "quantum", match=r"unknown device 'quantum'; use cpu, cuda"),
    refused("device that is not there", *GEN, "--device", "cuda:99", match=r"'cuda:99' (is not available|does not exist)"),
    refused("unknown offload", *GEN, "--offload", "disk", match=r"unknown offload 'disk'; valid choices: model, none"),
    refused("offload on the cpu", *GEN, "--offload", "model", "--device", "cpu", match=r"needs --device cuda, not cpu"),
    refused("unknown tiled-vae mode", *GEN, "--tiled-vae", "maybe", match=r"valid choices: auto, fast, off, on"),
    refused("unknown option", *GEN, "--bogus", match=r"unrecognized arguments: --bogus"),
    # ---- method options
    refused("--set without a value", *GEN, "--set", match=r"argument --set: expected one argument"),
    refused("--set =1", *GEN, "--set", "=1", match=r"--set expects KEY=VALUE, got '=1'"),
    refused("--set without =", *GEN, "--set", "tile", match=r"--set expects KEY=VALUE, got 'tile'"),
    refused("--set unknown name", *GEN, "--set", "tile=abc", match=r"method 'direct' has no option tile; its options: none"),
    refused("--set bad type", *GEN, "--method", "fstd", "--set", "tile=abc",
            match=r"fstd option tile must be an integer >= 1 or unset, got 'abc'"),
    refused("--set bad choice", *MD, "--set", "weighting=box",
            match=r"unknown multidiffusion option weighting 'box'; valid choices: gaussian, uniform"),
    refused("--set NaN", *MD, "--set", "stride=NaN", match=r"stride must be an integer >= 1 or unset, got nan"),
    refused("--set fraction for an integer", *MD, "--set", "stride=1.5", match=r"stride must be an integer >= 1"),
    refused("--set bool for an integer", *MD, "--set", "stride=true", match=r"stride must be an integer >= 1 .*got True"),
    refused("--set window beyond the canvas", *MD, "--set", "window=4096", "--size", "64x64", "--steps", "1", loads=True,
            match=r"window 4096 latent px is larger than the 8x8 latent canvas; use at most 8"),
    refused("--lora that does not exist", *GEN, "--lora", "x.safetensors:0.5", match=r"^LoRA x.safetensors does not exist"),
    refused("--lora with a scale that is no number", *GEN, "--lora", "x.safetensors:y",
            match=r"^LoRA x.safetensors:y does not exist .*a scale goes after the last ':'"),
    # ---- prompts
    refused("empty prompt", "generate", "", *M, match=r"^prompt is empty; give the text of the image to generate$"),
    refused("whitespace prompt", "generate", "a", "  \t ", *M, match=r"^prompt 2 is empty"),
    refused("no prompt", "generate", *M, match=r"no prompt given: pass one or more PROMPTs or --prompts-file FILE"),
    refused("prompts file missing", *GEN, "--prompts-file", "missing.txt", match=r"cannot read prompts file missing\.txt"),
    refused("prompts file empty", *GEN, "--prompts-file", "empty.txt", match=r"prompts file empty\.txt has no prompts"),
    refused("prompts file blank", *GEN, "--prompts-file", "blank.txt", match=r"prompts file blank\.txt has no prompts"),
    refused("prompts file a directory", *GEN, "--prompts-file", "adir", match=r"cannot read prompts file adir: Is a dir"),
    refused("prompts file not UTF-8", *GEN, "--prompts-file", "latin1.txt",
            match=r"latin1\.txt is not UTF-8 text: byte 0xe9 on line 1"),
    refused("prompt not UTF-8", "generate", "a \udcff cat", *M, match=r"prompt is not valid UTF-8 text: byte 0xff"),
    # ---- numbers
    refused("steps 0", *GEN, "--steps", "0", match=r"--steps must be a positive integer, got 0"),
    refused("steps -1", *GEN, "--steps", "-1", match=r"--steps must be a positive integer, got -1"),
    refused("steps 1.5", *GEN, "--steps", "1.5", match=r"argument --steps: invalid int value: '1\.5'"),
    refused("guidance -1", *GEN, "--guidance", "-1", match=r"--guidance must be a number >= 0, got -1"),
    refused("guidance nan", *GEN, "--guidance", "nan", match=r"--guidance must be a number >= 0, got nan"),
    refused("guidance inf", *GEN, "--guidance", "inf", match=r"--guidance must be a number >= 0, got inf"),
    refused("seed abc", *GEN, "--seed", "abc", match=r"argument --seed: invalid int value: 'abc'"),
    refused("seed 1.5", *GEN, "--seed", "1.5", match=r"argument --seed: invalid int value: '1\.5'"),
    refused("seed -1", *GEN, "--seed", "-1", match=r"--seed must be an integer in \[0, 9223372036854775807\], got -1"),
    refused("seed 2**63", *GEN, "--seed", str(2**63), match=r"--seed must be an integer in \[0, 9223372036854775807\]"),
    refused("seed of the 2nd image beyond the range", "generate", "a", "b", *M, "--seed", str(MAX_SEED),
            match=r"--seed 9223372036854775807 gives image 2 of 2 the seed 9223372036854775808"),
    # ---- model folders
    refused("model is a file", *GEN[:2], "--model", "blocker", match=r"model blocker is a file, not a diffusers pipeline"),
    refused("model without model_index.json", *GEN[:2], "--model", "noindex",
            match=r"noindex is not a diffusers pipeline folder \(no model_index\.json\)"),
    refused("model is an empty directory", *GEN[:2], "--model", "adir",
            match=r"adir is not a diffusers pipeline folder"),
    refused("model folder missing", *GEN[:2], "--model", "/nonexistent/anysize/m", match=r"does not exist"),
    refused("model id not cached", *GEN[:2], "--model", "no-such/model-anywhere", "-q",
            match=r"'no-such/model-anywhere' is neither a local folder nor a pipeline in the local Hugging Face cache"),
    # ---- output paths
    refused("--out without .png", *GEN, "--out", "x", match=r"--out x must end in \.png"),
    refused("--out .jpg", *GEN, "--out", "x.jpg", match=r"--out x\.jpg must end in \.png"),
    refused("--out empty", *GEN, "--out", "", match=r"--out is empty; give a \.png file or a directory"),
    refused("--out under a file", *GEN, "--out", "blocker/x.png", match=r"cannot write blocker/x\.png: blocker is not a dir"),
    refused("--out exists", *GEN, "--out", "exists.png",
            match=r"exists\.png already exists; pass --force to overwrite it"),
    refused("several prompts and one .png", "generate", "a", "b", *M, "--out", "x.png",
            match=r"with 2 prompts --out is a directory, not a \.png file"),
    refused("several prompts and --out a file", "generate", "a", "b", *M, "--out", "blocker",
            match=r"--out blocker is a file; with 2 prompts --out must be a directory"),
    # ---- upscale
    refused("upscale without a target", *UP, match=r"give the target as --scale S or --size WxH"),
    refused("upscale strength 0", *UP, "--scale", "2", "--strength", "0", match=r"strength must be in \(0, 1\], got 0"),
    refused("upscale strength 1.5", *UP, "--scale", "2", "--strength", "1.5", match=r"strength must be in \(0, 1\]"),
    refused("upscale strength nan", *UP, "--scale", "2", "--strength", "nan", match=r"strength must be in \(0, 1\], got nan"),
    refused("upscale strength running no step", *UP, "--scale", "2", "--strength", "0.1", loads=True,
            match=r"strength 0\.1 of 2 steps runs no step at all; use strength >= 0\.5 or more steps"),
    refused("upscale scale 0", *UP, "--scale", "0", match=r"--scale must be a number > 0, got 0"),
    refused("upscale scale nan", *UP, "--scale", "nan", match=r"--scale must be a number > 0, got nan"),
    refused("upscale scale inf", *UP, "--scale", "inf", match=r"--scale must be a number > 0, got inf"),
    refused("upscale scale -2", *UP, "--scale", "-2", match=r"--scale must be a number > 0, got -2"),
    refused("upscale scale absurdly large", *UP, "--scale", "1e9", loads=True, match=r"needs at least [\d.]+ GiB"),
    refused("upscale scale and size", *UP, "--scale", "2", "--size", "128x128",
            match=r"argument --size: not allowed with argument --scale"),
    refused("upscale size not a multiple", *UP, "--size", "100x128", match=r"width 100 is not a multiple of 8"),
    refused("upscale noise level on an SD model", *UP, "--scale", "2", "--noise-level", "20", loads=True,
            match=r"noise_level is an option of image-conditioned upscalers \(sd-x4-upscaler\), not of the sd1 model"),
    refused("upscale a multi-stage method", *UP, "--scale", "2", "--method", "asd",
            match=r"method 'asd' makes its own canvas .*use one of: direct, "),
    refused("upscale a directory", "upscale", "adir", *M, "--scale", "2", match=r"image adir is a directory"),
    refused("upscale a missing file", "upscale", "missing.png", *M, "--scale", "2", match=r"missing\.png does not exist"),
    refused("upscale a truncated PNG", "upscale", "trunc.png", *M, "--scale", "2",
            match=r"cannot read image trunc\.png: image file is truncated"),
    refused("upscale a zero-byte file", "upscale", "zero.png", *M, "--scale", "2",
            match=r"cannot read image zero\.png: cannot identify image file"),
    refused("upscale a text file named .png", "upscale", "text.png", *M, "--scale", "2",
            match=r"cannot read image text\.png: cannot identify image file"),
    refused("upscale --out .jpg", *UP, "--scale", "2", "--out", "x.jpg", match=r"--out x\.jpg must end in \.png"),
    refused("upscale --out empty", *UP, "--scale", "2", "--out", "", match=r"--out is empty"),
    refused("upscale --out exists", *UP, "--scale", "1", "--out", "exists.png", loads=True,
            match=r"exists\.png already exists; pass --force"),
    refused("upscale --set bad type", *UP, "--scale", "2", "--set", "tile=abc", match=r"fstd option tile must be an integer"),
    # ---- methods, demo, bench, eval, train-arad
    refused("methods nope", "methods", "nope", match=r"unknown method 'nope'; valid choices: asd, demofusion, direct"),
    refused("methods direct nope", "methods", "direct", "nope", match=r"unknown method 'nope'"),
    refused("demo unknown method", "demo", *M, "--methods", "nope", match=r"unknown method 'nope'"),
    refused("demo steps 0", "demo", *M, "--steps", "0", match=r"--steps must be a positive integer, got 0"),
    refused("demo seed -1", "demo", *M, "--seed", "-1", match=r"--seed must be an integer in \[0, "),
    refused("demo --out .jpg", "demo", *M, "--out", "x.jpg", match=r"--out x\.jpg must end in \.png"),
    refused("demo --json is --out", "demo", *M, "--out", "s.png", "--json", "./s.png",
            match=r"--json \./s\.png is the sheet's own file \(--out\)"),
    refused("demo sheet exists", "demo", *M, "--out", "exists.png", match=r"exists\.png already exists; pass --force"),
    refused("bench unknown architecture", "bench", "--arch", "nope", match=r"unknown architecture 'nope'; valid choices"),
    refused("bench steps 0", "bench", "--steps", "0", match=r"--steps must be a positive integer, got 0"),
    refused("bench repeats 0", "bench", "--repeats", "0", match=r"--repeats must be a positive integer, got 0"),
    refused("bench warmup -1", "bench", "--warmup", "-1", match=r"--warmup must be >= 0, got -1"),
    refused("bench size abc", "bench", "--size", "abc", match=r"size 'abc' is not 'native', a scale like '2x'"),
    refused("bench scale 0", "bench", "--size", "0x", match=r"size '0x': the scale must be positive"),
    refused("bench unknown depth", "bench", "--depth", "nope", match=r"unknown depth 'nope'; valid choices: auto"),
    refused("bench seed -1", "bench", "--seed", "-1", match=r"--seed must be an integer in \[0, "),
    refused("bench --out .txt", "bench", "--out", "x.txt", match=r"--out x\.txt must end in \.json"),
    refused("eval without an evaluation", "eval", match=r"choose an evaluation: composition, metrics"),
    refused("eval composition n 0", "eval", "composition", *M, "--n", "0", match=r"--n must be a positive integer, got 0"),
    refused("eval composition size abc", "eval", "composition", *M, "--size", "abc", match=r"size 'abc' is not WIDTHxH"),
    refused("eval composition seed -1", "eval", "composition", *M, "--seed", "-1", match=r"--seed must be an integer in"),
    refused("eval composition last seed beyond the range", "eval", "composition", *M, "--n", "4", "--seed", str(MAX_SEED),
            match=r"--seed 9223372036854775807 gives image 4 of 4 the seed"),
    refused("eval composition --out .txt", "eval", "composition", *M, "--out", "r.txt", match=r"must end in \.json"),
    refused("train-arad missing dataset", "train-arad", "missing-data", "--out", "o",
            match=r"dataset missing-data does not exist"),
    refused("train-arad without --out", "train-arad", "adir", match=r"the following arguments are required: --out"),
    refused("train-arad steps 0", "train-arad", "adir", "--out", "o", "--steps", "0",
            match=r"train-arad option steps must be an integer >= 1, got 0"),
    refused("train-arad lr -1", "train-arad", "adir", "--out", "o", "--lr", "-1",
            match=r"train-arad option lr must be a number > 0, got -1"),
    refused("train-arad unknown precision", "train-arad", "adir", "--out", "o", "--mixed-precision", "fp8",
            match=r"unknown train-arad option mixed_precision 'fp8'; valid choices: no, fp16, bf16"),
    refused("train-arad device cuda", "train-arad", "adir", "--out", "o", "--device", "cuda",
            match=r"--device takes only 'cpu'"),
    refused("train-arad no targets", "train-arad", "adir", "--out", "o", "--targets", ",",
            match=r"train-arad option targets must be a non-empty list of non-empty strings"),
    # ---- correct results
    works("missing output folders are made", *GEN, "--out", "new/sub/x.png",
          check=_png_of("new/sub/x.png", (64, 64), width=64, height=64, steps=1)),
    works("size with a capital X and spaces", *GEN, "--size", " 64 X 128 ", "--out", "w.png",
          check=_png_of("w.png", (64, 128), width=64, height=128)),
    works("an existing file with --force", *GEN, "--out", "exists.png", "--force",
          check=_png_of("exists.png", (64, 64), prompt="a cat")),
    works("an existing folder as --out", *GEN, "--seed", "3", "--out", "adir",
          check=_png_of("adir/anysize-direct-64x64-s3.png", (64, 64), seed=3)),
    works("the largest seed", *GEN, "--seed", str(MAX_SEED), "--out", "s.png", check=_png_of("s.png", (64, 64), seed=MAX_SEED)),
    works("an empty negative prompt", *GEN, "--negative", "", "--out", "n.png",
          check=_png_of("n.png", (64, 64), negative_prompt="")),
    works("prompts file with a BOM, CRLF and a blank line", "generate", "--prompts-file", "prompts.txt", *M,
          "--steps", "1", "--size", "64x64", "-q", check=_two_prompts_from_the_file),
    works("upscale a PNG by 2", *UP, "--scale", "2", "--strength", "0.5", "--out", "big.png",
          check=_png_of("big.png", (128, 128), width=128, height=128, strength=0.5)),
    works("methods direct", "methods", "direct", check=_lists_direct),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from anysize.builders import save_tiny_pipeline

    return save_tiny_pipeline("sd1", tmp_path_factory.mktemp("adversarial") / "m")


@pytest.fixture
def work(tmp_path, monkeypatch):
    folder = tmp_path / "work"
    folder.mkdir()
    for name, content in FILES.items():
        path = folder / name
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    monkeypatch.chdir(folder)
    return folder


def _no_work(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} before the input was checked")
    return refuse


@pytest.mark.parametrize("case", CLI, ids=[c.name for c in CLI])
def test_cli(case: CLICase, model_dir, work, capsys, monkeypatch):
    if not case.loads:
        import anysize.bench
        import anysize.train.arad

        from diffusers import DiffusionPipeline

        monkeypatch.setattr(DiffusionPipeline, "from_pretrained", _no_work("the model's weights were read"))
        monkeypatch.setattr(anysize.bench, "bench", _no_work("the benchmark started"))
        monkeypatch.setattr(anysize.train.arad, "train_arad", _no_work("training started"))
    argv = [a.replace("{model}", str(model_dir)) for a in case.argv]
    before = _snapshot(work)
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    if case.error is None:
        assert rc == 0, err
        case.check(work, out)
        return
    assert rc == 2, (rc, out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n") and lines[0].startswith("anysize: error: "), err
    message = lines[0][len("anysize: error: "):]
    assert re.search(case.error, message), f"{message!r} does not match {case.error!r}"
    assert _snapshot(work) == before, "a refused command created or changed a file"


# ------------------------------------------------------------------------------------------ the API table


@dataclass(frozen=True)
class APICase:
    name: str
    call: Callable[[SimpleNamespace], Any]
    #: the anysize error it must raise (None: it must return, and ``check`` its result)
    error: type | None = None
    match: str = ""
    check: Callable[[Any, SimpleNamespace], None] | None = None
    #: the call may read a model's weights (else from_pretrained fails the case)
    loads: bool = False
    #: refused only after valid work (e.g. saving a generated image over a file)
    after_work: bool = False


def raises(name: str, call, error: type, match: str, *, loads: bool = False, after_work: bool = False) -> APICase:
    return APICase(name, call, error, match, loads=loads, after_work=after_work)


def returns(name: str, call, check) -> APICase:
    return APICase(name, call, None, check=check, loads=True)


def gen(ctx, prompt="a cat", **kw):
    """anysize.generate on the tiny adapter, quick (1 step, 64x64) unless overridden."""
    return anysize.generate(ctx.adapter, prompt, **{"width": 64, "height": 64, "steps": 1, "progress": False, **kw})


def up(ctx, image=None, **kw):
    """anysize.upscale of the 64x64 test image, quick (2 steps at strength 0.5, 2x) unless overridden."""
    kw = {"steps": 2, "strength": 0.5, "progress": False, **kw}
    if "size" not in kw:
        kw.setdefault("scale", 2)
    return anysize.upscale(ctx.adapter, ctx.image if image is None else image, **kw)


def _config(**expected):
    def check(result, ctx):
        got = {k: result.config[k] for k in expected}
        assert got == expected
    return check


def _default_guidance(result, ctx):
    assert result.config["guidance"] == ctx.adapter.default_guidance


def _np_image(result, ctx):
    assert isinstance(result.images, np.ndarray) and result.images.shape == (1, 64, 64, 3)


def _called_once(result, ctx):
    assert ctx.steps_seen == [0]


def _upscaled_to(size):
    def check(result, ctx):
        assert result.image.size == size and result.config["upscale"]["size"] == list(size)
    return check


ERR = InvalidArgumentError
PATH_TYPE = r"must be a hub id or the path of a diffusers pipeline folder"

API: list[APICase] = [
    # ---- generate: sizes
    raises("width abc", lambda c: gen(c, width="abc"), InvalidSizeError, r"width must be an integer number of pixels, got 'abc'"),
    raises("height 1.5", lambda c: gen(c, height=1.5), InvalidSizeError, r"height must be an integer number of pixels, got 1\.5"),
    raises("width True", lambda c: gen(c, width=True), InvalidSizeError, r"width must be an integer number of pixels, got True"),
    raises("width 0", lambda c: gen(c, width=0), InvalidSizeError, r"width must be positive, got 0"),
    raises("height negative", lambda c: gen(c, height=-64), InvalidSizeError, r"height must be positive, got -64"),
    raises("width not a multiple", lambda c: gen(c, width=63), InvalidSizeError, r"width 63 is not a multiple of 8 .*56 or 64"),
    raises("size absurdly large", lambda c: gen(c, width=999992, height=999992), InvalidSizeError, r"needs at least .* GiB"),
    # ---- generate: numbers
    raises("steps 1.5", lambda c: gen(c, steps=1.5), ERR, r"steps must be an integer >= 1, got 1\.5"),
    raises("steps '10'", lambda c: gen(c, steps="10"), ERR, r"steps must be an integer >= 1, got '10'"),
    raises("steps 0", lambda c: gen(c, steps=0), ERR, r"steps must be an integer >= 1, got 0"),
    raises("steps True", lambda c: gen(c, steps=True), ERR, r"steps must be an integer >= 1, got True"),
    raises("seed -1", lambda c: gen(c, seed=-1), ERR, r"seed must be an integer in \[0, 9223372036854775807\], got -1"),
    raises("seed 1.5", lambda c: gen(c, seed=1.5), ERR, r"seed must be an integer in \[0, .*got 1\.5"),
    raises("seed '1'", lambda c: gen(c, seed="1"), ERR, r"seed must be an integer in \[0, .*got '1'"),
    raises("seed True", lambda c: gen(c, seed=True), ERR, r"seed must be an integer .*got True"),
    raises("seed 2**64", lambda c: gen(c, seed=2**64), ERR, r"seed must be an integer in \[0, 9223372036854775807\]"),
    raises("seed of the 2nd image beyond the range", lambda c: gen(c, ["a", "b"], seed=MAX_SEED), ERR,
           r"seed 9223372036854775807 gives image 2 of 2 the seed 9223372036854775808"),
    raises("seed list with a string", lambda c: gen(c, ["a", "b"], seed=[1, "x"]), ERR, r"seed 2 of 2 must be an integer"),
    raises("seed list too short", lambda c: gen(c, ["a", "b"], seed=[1]), ERR, r"1 seeds for 2 prompts"),
    raises("guidance '7'", lambda c: gen(c, guidance="7"), ERR, r"guidance must be a number >= 0, got '7'"),
    raises("guidance nan", lambda c: gen(c, guidance=float("nan")), ERR, r"guidance must be a number >= 0, got nan"),
    raises("guidance inf", lambda c: gen(c, guidance=float("inf")), ERR, r"guidance must be a number >= 0, got inf"),
    raises("guidance -1", lambda c: gen(c, guidance=-1), ERR, r"guidance must be a number >= 0, got -1"),
    # ---- generate: prompts
    raises("prompt 123", lambda c: gen(c, 123), ERR, r"prompt must be a string or a list of strings, got int"),
    raises("prompt list holding a number", lambda c: gen(c, ["a", 3]), ERR, r"prompt 2 of 2 must be a string, got int"),
    raises("prompt empty list", lambda c: gen(c, []), ERR, r"empty prompt list: give at least one prompt"),
    raises("prompt None", lambda c: gen(c, None), ERR, r"no prompt given"),
    raises("prompt bytes", lambda c: gen(c, b"a cat"), ERR, r"prompt must be text \(str\), got bytes; decode it first"),
    raises("negative prompt 5", lambda c: gen(c, negative_prompt=5), ERR, r"negative prompt must be a string or a list"),
    raises("negative prompts for other prompts", lambda c: gen(c, ["a", "b", "c"], negative_prompt=["x", "y"]), ERR,
           r"2 negative prompts for 3 prompts"),
    # ---- generate: choices and objects
    raises("method 3", lambda c: gen(c, method=3), ERR, r"method must be a method name \(asd, demofusion, direct, .*got int 3"),
    raises("method nope", lambda c: gen(c, method="nope"), UnknownChoiceError, r"unknown method 'nope'; valid choices: asd"),
    raises("method class", lambda c: gen(c, method=methods.get("direct")), ERR,
           r"got the class Direct; pass Direct\(\.\.\.\) or its name 'direct'"),
    raises("method_options as text", lambda c: gen(c, method="fstd", method_options="tile=64"), ERR,
           r"method_options must be a dict of option names to values, e\.g\. \{'tile': 64\}, got 'tile=64'"),
    raises("method_options unknown name", lambda c: gen(c, method_options={"tile": 64}), ERR,
           r"method 'direct' has no option tile; its options: none"),
    raises("method_options with a method object", lambda c: gen(c, method=methods.create("direct"),
                                                                 method_options={"x": 1}), ERR, r"method_options go with a method name"),
    raises("scheduler nope", lambda c: gen(c, scheduler="nope"), UnknownChoiceError, r"unknown scheduler 'nope'; valid"),
    raises("scheduler of flow models", lambda c: gen(c, scheduler="flow_euler"), ERR, r"does not fit a sd1 model"),
    raises("tiled_vae 'yes'", lambda c: gen(c, tiled_vae="yes"), ERR, r"tiled_vae must be True, False, 'auto' or 'fast', got 'yes'"),
    raises("tiled_vae 1", lambda c: gen(c, tiled_vae=1), ERR, r"tiled_vae must be True, False, 'auto' or 'fast', got 1"),
    raises("output_type jpg", lambda c: gen(c, output_type="jpg"), UnknownChoiceError,
           r"unknown output_type 'jpg'; valid choices: latent, np, pil, pt"),
    raises("callback 'x'", lambda c: gen(c, callback="x"), ERR, r"callback must be a function called with a StepInfo .*got str"),
    raises("cancel True", lambda c: gen(c, cancel=True), ERR, r"cancel must be a threading\.Event .*got bool True"),
    raises("progress 'yes'", lambda c: gen(c, progress="yes"), ERR, r"progress must be True or False, got 'yes'"),
    raises("model given as a path", lambda c: anysize.generate(str(c.model_dir), "a"), ERR,
           r"model must be a loaded model \(anysize\.load\(\.\.\.\)\) or a diffusers pipeline, got the path"),
    raises("model None", lambda c: anysize.generate(None, "a"), ModelLoadError, r"NoneType is not a text-to-image pipeline"),
    # ---- generate: correct results
    returns("guidance None is the model's", lambda c: gen(c, guidance=None), _default_guidance),
    returns("empty prompt generates without text", lambda c: gen(c, ""), _config(prompts=[""], seeds=[0])),
    returns("the largest seed", lambda c: gen(c, seed=MAX_SEED), _config(seeds=[MAX_SEED])),
    returns("one seed per prompt", lambda c: gen(c, ["a", "b"], seed=[7, 3]), _config(seeds=[7, 3])),
    returns("numpy output, untiled", lambda c: gen(c, output_type="np", tiled_vae=False), _np_image),
    returns("a callback and an unset event", lambda c: gen(c, callback=lambda info: c.steps_seen.append(info.index),
                                                            cancel=threading.Event()), _called_once),
    # ---- upscale
    raises("upscale scale 0", lambda c: up(c, scale=0), ERR, r"scale must be a number > 0, got 0"),
    raises("upscale scale nan", lambda c: up(c, scale=float("nan")), ERR, r"scale must be a number > 0, got nan"),
    raises("upscale scale inf", lambda c: up(c, scale=float("inf")), ERR, r"scale must be a number > 0, got inf"),
    raises("upscale scale -2", lambda c: up(c, scale=-2), ERR, r"scale must be a number > 0, got -2"),
    raises("upscale scale '2'", lambda c: up(c, scale="2"), ERR, r"scale must be a number > 0, got '2'"),
    raises("upscale scale and size", lambda c: up(c, scale=2, size=(128, 128)), ERR, r"give exactly one of scale or size"),
    raises("upscale size as text", lambda c: up(c, size="128x128"), InvalidSizeError,
           r"size must be a \(width, height\) pair of integers, got '128x128'"),
    raises("upscale size of three", lambda c: up(c, size=(128, 128, 3)), InvalidSizeError, r"\(width, height\) pair"),
    raises("upscale size 0", lambda c: up(c, size=(0, 128)), InvalidSizeError, r"target width must be a positive integer"),
    raises("upscale strength 0", lambda c: up(c, strength=0), ERR, r"strength must be in \(0, 1\], got 0"),
    raises("upscale strength 1.5", lambda c: up(c, strength=1.5), ERR, r"strength must be in \(0, 1\], got 1\.5"),
    raises("upscale strength nan", lambda c: up(c, strength=float("nan")), ERR, r"strength must be in \(0, 1\], got nan"),
    raises("upscale strength running no step", lambda c: up(c, strength=0.1), ERR, r"strength 0\.1 of 2 steps runs no step"),
    raises("upscale noise_level on an SD model", lambda c: up(c, noise_level=20), ERR,
           r"noise_level is an option of image-conditioned upscalers"),
    raises("upscale seed -1", lambda c: up(c, seed=-1), ERR, r"seed must be an integer in \[0, "),
    raises("upscale seed list", lambda c: up(c, seed=[1]), ERR, r"upscale makes one image: seed must be one integer"),
    raises("upscale guidance '7'", lambda c: up(c, guidance="7"), ERR, r"guidance must be a number >= 0, got '7'"),
    raises("upscale callback 5", lambda c: up(c, callback=5), ERR, r"callback must be a function"),
    raises("upscale cancel True", lambda c: up(c, cancel=True), ERR, r"cancel must be a threading\.Event"),
    raises("upscale prompt list", lambda c: up(c, prompt=["a", "b"]), ERR, r"upscale takes one prompt"),
    raises("upscale prompt 5", lambda c: up(c, prompt=5), ERR, r"prompt must be a string, got int"),
    raises("upscale multi-stage method", lambda c: up(c, method="asd"), ERR, r"method 'asd' makes its own canvas"),
    raises("upscale image 123", lambda c: up(c, image=123), ERR, r"image must be a PIL image or a file path, got int"),
    raises("upscale image directory", lambda c: up(c, image=c.tmp), ERR, r"is a directory, not an image file"),
    raises("upscale truncated PNG", lambda c: up(c, image=c.file("trunc.png")), ERR, r"cannot read image .*trunc\.png"),
    raises("upscale zero-byte file", lambda c: up(c, image=c.file("zero.png")), ERR, r"cannot identify image file"),
    raises("upscale text named .png", lambda c: up(c, image=c.file("text.png")), ERR, r"cannot identify image file"),
    returns("upscale to a size", lambda c: up(c, size=(128, 64)), _upscaled_to((128, 64))),
    # ---- load
    raises("load 123", lambda c: anysize.load(123), ERR, PATH_TYPE),
    raises("load empty path", lambda c: anysize.load(""), ERR, PATH_TYPE),
    raises("load a file", lambda c: anysize.load(c.file("blocker")), ModelLoadError, r"is a file, not a diffusers pipeline"),
    raises("load a folder without model_index.json", lambda c: anysize.load(c.file("adir")), ModelLoadError,
           r"is not a diffusers pipeline folder \(no model_index\.json\)"),
    raises("load unknown dtype", lambda c: anysize.load(c.model_dir, dtype="fp8"), UnknownChoiceError,
           r"unknown dtype 'fp8'; valid choices: bf16, fp16, fp32"),
    raises("load unknown device", lambda c: anysize.load(c.model_dir, device="quantum"), ERR,
           r"unknown device 'quantum'; use cpu, cuda, cuda:N or mps"),
    raises("load device that is not there", lambda c: anysize.load(c.model_dir, device="cuda:99"), ERR,
           r"device 'cuda:99' (is not available .*use device='cpu'|does not exist)"),
    raises("load unknown family", lambda c: anysize.load(c.model_dir, family="sd9"), UnknownChoiceError,
           r"unknown family 'sd9'"),
    raises("load unknown offload", lambda c: anysize.load(c.model_dir, offload="disk"), UnknownChoiceError,
           r"unknown offload 'disk'; valid choices: model, none, sequential"),
    raises("load family of another layout", lambda c: anysize.load(c.model_dir, family="sdxl"), FamilyMismatchError,
           r"family='sdxl' does not fit this model: its components are those of a sd1 pipeline .*leave family out",
           loads=True),
    # ---- patch
    raises("patch nope", lambda c: anysize.patch(c.pipe, "nope"), UnknownChoiceError,
           r"unknown patch 'nope'; valid choices: hidiffusion, msw_msa, npa, raunet"),
    raises("patch a number", lambda c: anysize.patch(123, "hidiffusion"), ERR,
           r"anysize\.patch needs a diffusers pipeline or an anysize model adapter, got int"),
    raises("patch unknown option", lambda c: anysize.patch(c.pipe, "hidiffusion", bogus=1), ERR,
           r"patch 'hidiffusion' has no option bogus; its options: "),
    # ---- methods.create
    raises("create nope", lambda c: methods.create("nope"), UnknownChoiceError, r"unknown method 'nope'; valid choices"),
    raises("create bad type", lambda c: methods.create("fstd", tile="abc"), ERR,
           r"fstd option tile must be an integer >= 1 or unset, got 'abc'"),
    raises("create bad choice", lambda c: methods.create("multidiffusion", weighting="box"), UnknownChoiceError,
           r"unknown multidiffusion option weighting 'box'; valid choices: gaussian, uniform"),
    raises("create out of range", lambda c: methods.create("scalediff", restart=2), ERR,
           r"scalediff option restart must be in \(0, 1\] or unset, got 2"),
    raises("create NaN", lambda c: methods.create("multidiffusion", stride=float("nan")), ERR,
           r"stride must be an integer >= 1 or unset, got nan"),
    # ---- output
    raises("save over an existing file", lambda c: gen(c).save(c.file("exists.png")), OutputExistsError,
           r"exists\.png already exists; pass force=True to overwrite it", after_work=True),
]


@pytest.fixture(scope="module")
def adapter(tiny):
    from anysize.models import adapt

    return adapt(tiny("sd1"))


@pytest.fixture
def ctx(adapter, tiny, model_dir, tmp_path, monkeypatch):
    """The tiny adapter with counters on every kind of work, the test files, and a 64x64 image."""
    counts = {"encode_prompt": 0, "encode": 0}
    for name in counts:
        real = getattr(adapter, name)

        def counted(*a, _real=real, _name=name, **k):
            counts[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(adapter, name, counted)
    for name, content in FILES.items():
        path = tmp_path / name
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return SimpleNamespace(adapter=adapter, pipe=tiny("sd1"), model_dir=model_dir, tmp=tmp_path, counts=counts,
                           image=Image.new("RGB", (64, 64), (30, 120, 200)), file=lambda n: tmp_path / n,
                           steps_seen=[])


@pytest.mark.parametrize("case", API, ids=[c.name for c in API])
def test_api(case: APICase, ctx, monkeypatch):
    if not case.loads:
        from diffusers import DiffusionPipeline

        monkeypatch.setattr(DiffusionPipeline, "from_pretrained", _no_work("weights were read"))
    calls = ctx.adapter.calls
    if case.error is None:
        case.check(case.call(ctx), ctx)
        return
    with pytest.raises(case.error) as info:
        case.call(ctx)
    assert re.search(case.match, str(info.value)), f"{str(info.value)!r} does not match {case.match!r}"
    if not case.after_work:
        assert ctx.counts == {"encode_prompt": 0, "encode": 0}, f"work started before the refusal: {ctx.counts}"
        assert ctx.adapter.calls == calls, "the network ran before the refusal"


def test_the_tables_are_big_and_names_unique():
    assert len({c.name for c in CLI}) == len(CLI) and len({c.name for c in API}) == len(API)
    assert len(CLI) + len(API) >= 40
