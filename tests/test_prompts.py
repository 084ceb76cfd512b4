"""Prompts that are not valid UTF-8 text are refused before any work, in every front end (issue 18, item 3).

On POSIX, Python turns command-line bytes that are not UTF-8 into lone surrogates (PEP 383): the
in-process tests pass those strings, one subprocess passes the raw bytes.
"""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import anysize
from anysize import api, cli
from anysize.errors import InvalidArgumentError
from anysize.models import adapt
from anysize.prompts import check_prompt, check_prompts

ROOT = Path(anysize.__file__).resolve().parents[1]
BAD = "\udcff\udcfe red \udc80 circle"  # what Python makes of b"\xff\xfe red \x80 circle" in argv


@pytest.fixture(autouse=True)
def _workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_load(monkeypatch):
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("the model was loaded before the prompt was checked"))


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(rc, out, err, *fragments):
    assert rc == 2 and out == "", (rc, out, err)
    assert err.count("\n") == 1 and err.startswith("anysize: error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


def test_check_prompt_names_the_byte_and_where():
    with pytest.raises(InvalidArgumentError, match=r"prompt is not valid UTF-8 text: byte 0xff at character 1 "
                       r"\('\\xff\\xfe red \\x80 circle'\)"):
        check_prompt(BAD)
    with pytest.raises(InvalidArgumentError, match="a lone surrogate U\\+D800 at character 3"):
        check_prompt("ab\ud800")
    with pytest.raises(InvalidArgumentError, match=r"must be text \(str\), got bytes; decode it first"):
        check_prompt(b"a cat")
    with pytest.raises(InvalidArgumentError, match="prompt 2 of 2 is not valid UTF-8"):
        check_prompts(["fine", "\udce9"])
    with pytest.raises(InvalidArgumentError, match="must be a string or a list of strings, got int"):
        check_prompts(123)
    assert check_prompt("un château, 城, 🏰") == "un château, 城, 🏰"  # any valid Unicode is fine
    assert check_prompts(("a", "b")) == ["a", "b"]


@pytest.mark.parametrize("argv, fragment", [
    (["generate", BAD], "prompt is not valid UTF-8 text: byte 0xff at character 1"),
    (["generate", "a cat", BAD], "prompt 2 is not valid UTF-8 text"),
    (["generate", "a cat", "--negative", "blurry \udc80"], "--negative is not valid UTF-8 text: byte 0x80"),
    (["upscale", "in.png", "--scale", "2", "--prompt", BAD], "--prompt is not valid UTF-8 text"),
    (["upscale", "in.png", "--scale", "2", "--negative", BAD], "--negative is not valid UTF-8 text"),
    (["demo", "--prompt", BAD], "--prompt is not valid UTF-8 text"),
], ids=["generate", "second-prompt", "negative", "upscale-prompt", "upscale-negative", "demo"])
def test_cli_refuses_bad_prompts_before_loading(capsys, no_load, _workdir, argv, fragment):
    from PIL import Image

    Image.new("RGB", (16, 16)).save("in.png")
    rc, out, err = run(capsys, *argv)
    one_error(rc, out, err, fragment)
    assert sorted(os.listdir(_workdir)) == ["in.png"]


def test_prompts_file_not_utf8(capsys, no_load, _workdir):
    Path("p.txt").write_bytes(b"a cat\n\nune \xe9toile rouge\n")
    one_error(*run(capsys, "generate", "--prompts-file", "p.txt"),
              "prompts file p.txt is not UTF-8 text: byte 0xe9 on line 3 cannot be decoded; re-save it as UTF-8")
    Path("bin.txt").write_bytes(bytes(range(256)))
    one_error(*run(capsys, "generate", "--prompts-file", "bin.txt"), "prompts file bin.txt is not UTF-8 text: byte 0x80")


def test_prompts_file_utf8_with_bom_is_read(monkeypatch):
    from anysize.cli.inputs import read_prompts

    Path("p.txt").write_bytes("\ufeffa cat\r\nun château\n".encode("utf-8"))
    assert read_prompts([], "p.txt") == ["a cat", "un château"]


def test_prompts_from_stdin_bytes_and_locale_text(capsys, no_load, monkeypatch):
    class Stdin:  # the real sys.stdin: text over a byte buffer, which read_prompts decodes as a file
        buffer = io.BytesIO(b"a cat\n\xff\xfe red\n")

    monkeypatch.setattr(sys, "stdin", Stdin())
    one_error(*run(capsys, "generate", "--prompts-file", "-"), "prompts file <stdin> is not UTF-8 text: byte 0xff on line 2")
    # a text stream without a buffer, decoded with surrogateescape as Python does in the C locale
    monkeypatch.setattr(sys, "stdin", io.StringIO("a cat\n\udcff red\n"))
    one_error(*run(capsys, "generate", "--prompts-file", "-"),
              "prompt on line 2 of prompts file <stdin> is not valid UTF-8 text: byte 0xff")


def test_raw_argv_bytes_from_a_real_shell(tmp_path):
    """The issue's command, with its raw bytes as a shell passes them: one line, exit 2, no traceback."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               LC_ALL="C.UTF-8")
    proc = subprocess.run([os.fsencode(sys.executable), b"-m", b"anysize", b"generate", b"\xff\xfe red \x80 circle",
                           b"--out", b"x.png"], cwd=tmp_path, env=env, capture_output=True, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and proc.stdout == b"", err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "prompt is not valid UTF-8 text: byte 0xff at character 1" in err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def adapter(tiny, monkeypatch):
    a = adapt(tiny("sd1"))
    monkeypatch.setattr(a, "encode_prompt", lambda *x, **k: pytest.fail("the prompt reached the tokenizer"))
    return a


@pytest.mark.parametrize("kwargs, fragment", [
    ({"prompt": BAD}, "prompt is not valid UTF-8 text"),
    ({"prompt": ["fine", BAD]}, "prompt 2 of 2 is not valid UTF-8 text"),
    ({"prompt": "fine", "negative_prompt": BAD}, "negative prompt is not valid UTF-8 text"),
    ({"prompt": b"a cat"}, "prompt must be text (str), got bytes"),
    ({"prompt": [b"a cat"]}, "prompt must be text (str), got bytes"),
    ({"prompt": 123}, "prompt must be a string or a list of strings, got int"),
], ids=["surrogates", "in-a-list", "negative", "bytes", "bytes-in-a-list", "int"])
def test_generate_api_refuses_bad_prompts(adapter, kwargs, fragment):
    prompt = kwargs.pop("prompt")
    with pytest.raises(InvalidArgumentError) as e:
        api.generate(adapter, prompt, steps=1, progress=False, **kwargs)
    assert fragment in str(e.value)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"prompt": BAD}, "prompt is not valid UTF-8 text"),
    ({"negative_prompt": BAD}, "negative prompt is not valid UTF-8 text"),
    ({"prompt": b"detailed"}, "prompt must be text (str), got bytes"),
], ids=["surrogates", "negative", "bytes"])
def test_upscale_api_refuses_bad_prompts(adapter, kwargs, fragment):
    from PIL import Image

    with pytest.raises(InvalidArgumentError) as e:
        api.upscale(adapter, Image.new("RGB", (16, 16)), scale=1, steps=4, strength=1.0, progress=False, **kwargs)
    assert fragment in str(e.value)
