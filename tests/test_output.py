"""PNG output: metadata round trip, atomic writes, no silent overwrite, unwritable paths."""

import json
import os

import pytest
from PIL import Image

from anysize.errors import OutputError
from anysize.output import check_writable, infotext, read_metadata, read_parameters, save_png


def config(**kw):
    cfg = {
        "prompts": ["a castle on a cliff"],
        "negative_prompts": ["blurry"],
        "width": 4096,
        "height": 2048,
        "method": "direct",
        "method_options": {"window": 128, "stride": [64, 32], "mode": "a, b"},
        "steps": 30,
        "guidance": 5.0,
        "seeds": [7],
        "scheduler": "euler",
        "model": "stabilityai/stable-diffusion-xl-base-1.0",
        "family": "sdxl",
        "native_size": [1024, 1024],
        "prediction_type": "epsilon",
        "dtype": "float16",
        "tiled_vae": "auto",
        "versions": {"anysize": "0.1.0", "diffusers": "0.42.1", "torch": "2.13.0"},
        "prompt": "a castle on a cliff",
        "negative_prompt": "blurry",
        "seed": 7,
    }
    cfg.update(kw)
    return cfg


def image(w=16, h=8):
    return Image.new("RGB", (w, h), (200, 30, 90))


def leftovers(folder, keep=()):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_infotext_a1111_format():
    text = infotext(config())
    lines = text.split("\n")
    assert lines[0] == "a castle on a cliff"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 30, Sampler: euler, CFG scale: 5.0, Seed: 7, Size: 4096x2048, ")
    assert "Model: stabilityai/stable-diffusion-xl-base-1.0, Method: direct, window: 128, " in lines[2]
    assert 'stride: "[64, 32]"' in lines[2] and 'mode: "a, b"' in lines[2]  # values with commas quoted
    assert lines[2].endswith("Version: anysize 0.1.0")
    assert len(lines) == 3


def test_infotext_omits_empty_negative():
    text = infotext(config(negative_prompt="", negative_prompts=None, method_options={}))
    assert "Negative prompt" not in text
    assert text.split("\n")[1].startswith("Steps: 30,")
    assert "Method: direct, Version: anysize 0.1.0" in text


def test_round_trip_with_unicode(tmp_path):
    cfg = config(prompt="ein Schloß 城堡 🏰", prompts=["ein Schloß 城堡 🏰"])
    path = save_png(image(), tmp_path / "out.png", cfg)
    assert path == tmp_path / "out.png"
    assert read_metadata(path) == cfg
    params = read_parameters(path)
    assert params == infotext(cfg)
    assert params.startswith("ein Schloß 城堡 🏰\nNegative prompt: blurry\nSteps: 30")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (16, 8)
        assert im.getpixel((3, 3)) == (200, 30, 90)
    assert leftovers(tmp_path) == ["out.png"]


def test_ascii_parameters_use_a_text_chunk(tmp_path):
    path = save_png(image(), tmp_path / "out.png", config())
    data = path.read_bytes()
    assert b"tEXtparameters\x00a castle on a cliff" in data  # plain tEXt, as A1111 writes it
    assert b"iTXtanysize\x00" in data


def test_creates_missing_directories(tmp_path):
    path = save_png(image(), tmp_path / "a" / "b" / "out.png", config())
    assert path.is_file()


def test_no_overwrite_without_force(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"original")
    with pytest.raises(OutputError, match="pass force=True"):
        save_png(image(), path, config())
    assert path.read_bytes() == b"original"
    assert leftovers(tmp_path) == ["out.png"]
    save_png(image(), path, config(), force=True)
    assert read_metadata(path)["seed"] == 7
    assert leftovers(tmp_path) == ["out.png"]


def test_no_overwrite_is_checked_at_the_final_move(tmp_path, monkeypatch):
    """A file that appears while the PNG is being encoded is not overwritten (race-free check)."""
    path = tmp_path / "out.png"
    img = image()
    real_save = img.save

    def save_then_race(*args, **kwargs):
        real_save(*args, **kwargs)
        path.write_bytes(b"the other writer")

    monkeypatch.setattr(img, "save", save_then_race)
    with pytest.raises(OutputError, match="pass force=True"):
        save_png(img, path, config())
    assert path.read_bytes() == b"the other writer"
    assert leftovers(tmp_path) == ["out.png"]


def test_falls_back_when_hard_links_are_unsupported(tmp_path, monkeypatch):
    import errno

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    path = save_png(image(), tmp_path / "out.png", config())
    assert read_metadata(path) == config()
    with pytest.raises(OutputError, match="pass force=True"):
        save_png(image(), path, config())
    assert leftovers(tmp_path) == ["out.png"]


@pytest.mark.parametrize("error", [ValueError("encoder broke"), KeyboardInterrupt()])
def test_encoding_failure_leaves_nothing(tmp_path, monkeypatch, error):
    img = image()
    real_save = img.save

    def broken(fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")  # something already written to the temporary file
        raise error

    monkeypatch.setattr(img, "save", broken)
    with pytest.raises(type(error)):
        save_png(img, tmp_path / "out.png", config())
    assert leftovers(tmp_path) == []
    monkeypatch.setattr(img, "save", real_save)


def test_unserialisable_config_values_do_not_break_saving(tmp_path):
    path = save_png(image(), tmp_path / "out.png", config(extra=object(), method_options={"t": (1, 2)}))
    meta = read_metadata(path)
    assert meta["method_options"] == {"t": [1, 2]} and isinstance(meta["extra"], str)


def test_path_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        save_png(image(), blocker / "sub" / "out.png", config())
    with pytest.raises(OutputError, match="not a directory"):
        check_writable(blocker / "sub" / "out.png")
    assert leftovers(tmp_path) == ["file"]


def test_path_is_a_directory(tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        save_png(image(), tmp_path, config(), force=True)
    with pytest.raises(OutputError, match="is a directory"):
        check_writable(tmp_path, force=True)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="chmod does not restrict root")
def test_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match=str(locked)):
            save_png(image(), locked / "out.png", config())
        with pytest.raises(OutputError, match="not writable"):
            check_writable(locked / "out.png")
        with pytest.raises(OutputError, match="not writable"):
            check_writable(locked / "new" / "out.png")  # would have to be created inside it
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_permission_denied_is_an_output_error(tmp_path, monkeypatch):
    """The same as above, simulated so that it also runs as root."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_open, real_access = os.open, os.access

    def denied_open(path, *a, **k):
        if os.path.dirname(os.fspath(path)) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", denied_open)
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(locked) else real_access(p, mode))
    with pytest.raises(OutputError, match=f"cannot write {locked / 'out.png'}: Permission denied"):
        save_png(image(), locked / "out.png", config())
    with pytest.raises(OutputError, match=f"directory {locked} is not writable"):
        check_writable(locked / "out.png")
    assert list(locked.iterdir()) == []


def test_check_writable(tmp_path):
    target = tmp_path / "new" / "dir" / "out.png"
    assert check_writable(target) == target
    assert not (tmp_path / "new").exists()  # creates nothing
    existing = tmp_path / "old.png"
    existing.write_bytes(b"x")
    with pytest.raises(OutputError, match="pass force=True"):
        check_writable(existing)
    assert check_writable(existing, force=True) == existing


def test_read_metadata_errors(tmp_path):
    from anysize.errors import AnysizeError

    plain = tmp_path / "plain.png"
    image().save(plain)
    with pytest.raises(AnysizeError, match="no anysize metadata"):
        read_metadata(plain)
    with pytest.raises(AnysizeError, match="does not exist"):
        read_metadata(tmp_path / "missing.png")


def test_metadata_is_plain_json(tmp_path):
    path = save_png(image(), tmp_path / "out.png", config())
    with Image.open(path) as im:
        assert json.loads(im.text["anysize"])["versions"]["diffusers"] == "0.42.1"


def test_save_json_is_atomic_and_refuses_to_overwrite(tmp_path):
    from anysize.output import save_json

    path = save_json({"a": 1, "é": [1.5]}, tmp_path / "sub" / "m.json")
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 1, "é": [1.5]}
    with pytest.raises(OutputError, match="already exists"):
        save_json({"a": 2}, path)
    save_json({"a": 2}, path, force=True)
    assert json.loads(path.read_text())["a"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]  # no temporary files left


def test_a_killed_writes_temporary_file_is_removed_at_the_next_run(tmp_path):
    """Issue 24.3: SIGKILL mid-write leaves .<name>.<hex>.tmp; the next write into the folder removes
    it, but not a live write's file (recent), nor anything that is not anysize's pattern."""
    import os
    import subprocess
    import sys
    import time

    import anysize.output as output

    code = (
        "import os, signal, sys\n"
        "from PIL import Image\n"
        "from anysize.output import save_png\n"
        "im = Image.new('RGB', (64, 64))\n"
        "def save(f, **kw):\n"
        "    f.write(b'partial'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "im.save = save\n"
        f"save_png(im, {str(tmp_path / 'a.png')!r}, {{}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].name.startswith(".a.png.") and not (tmp_path / "a.png").exists()
    # older than both bounds: this worker may have started long before this test (a 20-minute run)
    old = min(output._PROCESS_START, time.time() - output.STALE_TEMP_SECONDS) - 60
    os.utime(stale[0], (old, old))
    live = tmp_path / ".b.png.0123abcd.tmp"  # another process writing right now
    live.write_bytes(b"x")
    other = tmp_path / ".c.png.notours.tmp"
    other.write_bytes(b"x")
    os.utime(other, (old, old))
    save_png(image(), tmp_path / "d.png", config())
    assert not stale[0].exists() and live.exists() and other.exists() and (tmp_path / "d.png").exists()
