"""Every image mode Pillow opens reaches the upscaler as the right RGB pixels, or is refused (issue 18, item 4).

Each case writes an image with known pixel values (a PNG or TIFF file where one holds the mode),
runs :func:`anysize.upscale` up to the VAE encode, and compares the tensor it would encode with a
reference computed here with numpy from the known values, not with Pillow's conversions.
"""

import colorsys
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from anysize import api, cli
from anysize.errors import InvalidArgumentError
from anysize.images import ALPHA_BACKGROUND, READ_MODES, load_image
from anysize.models import adapt

H, W = 8, 16
RNG = np.random.RandomState(18)


class _Encoded(Exception):
    """Raised by the stand-in encoder once it has seen the upscaler's input."""


@pytest.fixture
def encoder_input(tiny, monkeypatch):
    """``run(image) -> tensor``: the pixels anysize.upscale hands the VAE for ``image`` at its own size."""
    adapter = adapt(tiny("sd1"))
    seen = []

    def encode(pixels, **kw):
        seen.append(pixels.clone())
        raise _Encoded

    monkeypatch.setattr(adapter, "encode", encode)

    def run(image, size=None):
        size = size or ((image.width, image.height) if isinstance(image, Image.Image) else Image.open(image).size)
        with pytest.raises(_Encoded):
            api.upscale(adapter, image, size=size, method="direct", steps=10, progress=False)
        return seen.pop()

    return run


def as_tensor(rgb_u8: np.ndarray) -> torch.Tensor:
    """(H, W, 3) 8-bit levels -> the (1, 3, H, W) [-1, 1] tensor the VAE takes."""
    return torch.from_numpy(rgb_u8.astype(np.float32)).permute(2, 0, 1).unsqueeze(0) / 255.0 * 2.0 - 1.0


def grey3(levels: np.ndarray) -> np.ndarray:
    return np.repeat(levels[..., None], 3, axis=-1)


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(rgb.astype(np.float64) * a + np.asarray(ALPHA_BACKGROUND) * (1.0 - a)).astype(np.uint8)


def u8(*shape):
    return RNG.randint(0, 256, size=(H, W, *shape)).astype(np.uint8)


PALETTE = RNG.randint(0, 256, size=(256, 3)).astype(np.uint8)


def make(mode, tmp_path):
    """(image file or PIL image, reference (H, W, 3) uint8, atol in 8-bit levels)."""
    if mode == "1":
        bits = RNG.rand(H, W) > 0.5
        im, ref = Image.fromarray(bits), grey3(bits.astype(np.uint8) * 255)
    elif mode == "L":
        v = u8()
        im, ref = Image.fromarray(v), grey3(v)
    elif mode == "LA":
        v = u8(2)
        im, ref = Image.frombytes("LA", (W, H), v.tobytes()), over_white(grey3(v[..., 0]), v[..., 1])
    elif mode == "P":
        idx = u8()
        im = Image.fromarray(idx, mode="P")
        im.putpalette(PALETTE.tobytes())
        ref = PALETTE[idx]
    elif mode == "P-transparent":
        idx = u8()
        idx[0, :4] = 7  # make sure the transparent index is used
        im = Image.fromarray(idx, mode="P")
        im.putpalette(PALETTE.tobytes())
        im.info["transparency"] = 7
        ref = over_white(PALETTE[idx], np.where(idx == 7, 0, 255))
        path = tmp_path / "p.png"
        im.save(path, transparency=7)
        assert Image.open(path).info.get("transparency") == 7
        return path, ref, 0
    elif mode == "PA":
        v = u8(2)
        im = Image.frombytes("PA", (W, H), v.tobytes())
        im.putpalette(PALETTE.tobytes())
        ref = over_white(PALETTE[v[..., 0]], v[..., 1])
    elif mode == "RGB":
        v = u8(3)
        im, ref = Image.fromarray(v), v
    elif mode == "RGBA":
        v = u8(4)
        v[0, 0, 3], v[0, 1, 3] = 0, 255
        im, ref = Image.frombytes("RGBA", (W, H), v.tobytes()), over_white(v[..., :3], v[..., 3])
    elif mode == "RGBa":  # premultiplied: over white is c_premultiplied + (255 - a)
        v = u8(4)
        v[..., :3] = np.minimum(v[..., :3], v[..., 3:4])
        ref = np.clip(v[..., :3].astype(int) + (255 - v[..., 3:4].astype(int)), 0, 255).astype(np.uint8)
        return Image.frombytes("RGBa", (W, H), v.tobytes()), ref, 1
    elif mode == "RGBX":
        v = u8(4)
        return Image.frombytes("RGBX", (W, H), v.tobytes()), v[..., :3], 0
    elif mode in ("I;16", "I;16B"):
        v = RNG.randint(0, 65536, size=(H, W)).astype(np.uint16)
        v[0, :3] = 0, 65535, 32896  # black, white, the midpoint (128.5 * 256: rounds to 128)
        dtype = ">u2" if mode == "I;16B" else "<u2"
        im = Image.frombytes(mode, (W, H), v.astype(dtype).tobytes())
        ref = grey3(np.rint(v / 65535.0 * 255.0).astype(np.uint8))
        path = tmp_path / ("g.tiff" if mode == "I;16B" else "g.png")
        im.save(path)
        assert Image.open(path).mode == mode
        return path, ref, 0
    elif mode == "I":
        v = RNG.randint(0, 65536, size=(H, W)).astype(np.int32)
        im, ref = Image.fromarray(v), grey3(np.rint(v / 65535.0 * 255.0).astype(np.uint8))
    elif mode == "F":
        v = RNG.rand(H, W).astype(np.float32)
        v[0, :2] = 0.0, 1.0
        im, ref = Image.fromarray(v), grey3(np.rint(v.astype(np.float64) * 255.0).astype(np.uint8))
    elif mode == "CMYK":  # the naive conversion: (1 - c)(1 - k)
        v = u8(4)
        im = Image.frombytes("CMYK", (W, H), v.tobytes())
        f = v.astype(np.float64) / 255.0
        ref = np.rint(255.0 * (1 - f[..., :3]) * (1 - f[..., 3:4])).astype(np.uint8)
        path = tmp_path / "c.tiff"
        im.save(path)
        return path, ref, 1
    elif mode == "YCbCr":  # JPEG's full-range BT.601
        v = u8(3)
        im = Image.frombytes("YCbCr", (W, H), v.tobytes())
        y, cb, cr = (v[..., i].astype(np.float64) for i in range(3))
        rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                        y + 1.772 * (cb - 128)], axis=-1)
        ref = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        path = tmp_path / "y.tiff"
        im.save(path)
        try:
            Image.open(path).load()
        except OSError:  # Pillow < 13 (gradio, extra [app], needs pillow<13) writes a YCbCr TIFF it cannot read
            return im, ref, 1  # the image itself, as for HSV
        return path, ref, 1
    elif mode == "HSV":
        v = u8(3)
        ref = np.array([[colorsys.hsv_to_rgb(*(v[i, j] / 255.0)) for j in range(W)] for i in range(H)])
        return Image.frombytes("HSV", (W, H), v.tobytes()), np.rint(ref * 255).astype(np.uint8), 1
    else:
        raise AssertionError(mode)
    path = tmp_path / ("i.tiff" if mode in ("PA", "I", "F") else "i.png")
    im.save(path)
    assert Image.open(path).mode == mode
    return path, ref, 0


MODES = ["1", "L", "LA", "P", "P-transparent", "PA", "RGB", "RGBA", "RGBa", "RGBX", "I;16", "I;16B", "I", "F",
         "CMYK", "YCbCr", "HSV"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_reaches_the_encoder_as_the_reference_rgb(encoder_input, tmp_path, mode):
    image, ref, atol = make(mode, tmp_path)
    got = encoder_input(image)
    want = as_tensor(ref)
    assert got.shape == want.shape == (1, 3, H, W)
    levels = ((got - want).abs() * 127.5).max().item()  # the difference in 8-bit levels
    assert levels <= atol + 1e-3, f"{mode}: off by {levels:.2f} levels"


def test_read_modes_are_all_tested():
    tested = {m.split("-")[0] for m in MODES}
    assert set(READ_MODES) - tested == {"I;16L", "I;16N"}  # aliases of I;16 with explicit byte order
    assert np.array_equal(np.asarray(load_image(Image.frombytes("I;16L", (2, 1), b"\x00\x00\xff\xff"))),
                          [[[0] * 3, [255] * 3]])


def test_rgb_is_bit_identical_to_the_previous_conversion_also_when_resized(encoder_input, tmp_path):
    v = u8(3)
    Image.fromarray(v).save(tmp_path / "rgb.png")
    got = encoder_input(tmp_path / "rgb.png", size=(40, 24))
    with Image.open(tmp_path / "rgb.png") as im:  # what anysize did before: convert("RGB"), then the bicubic resize
        before = api.image_to_tensor(im.convert("RGB"), 24, 40)
    assert torch.equal(got, before)


@pytest.mark.parametrize("orientation, turn", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
                                                (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(encoder_input, tmp_path, orientation, turn):
    v = u8(3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(v).save(tmp_path / "o.png", exif=exif)
    want = np.ascontiguousarray(turn(v))
    got = encoder_input(tmp_path / "o.png", size=(want.shape[1], want.shape[0]))  # no resize after the turn
    assert torch.equal(got, as_tensor(want))


@pytest.mark.parametrize("make_image, message", [
    (lambda: Image.fromarray(np.array([[-1, 70000]], dtype=np.int32)),
     "is a 32-bit integer image (mode I) with values -1 to 70000: anysize reads mode I as 16-bit levels 0-65535"),
    (lambda: Image.fromarray(np.array([[0.0, 1.5]], dtype=np.float32)),
     "is a floating-point image (mode F) with values 0 to 1.5: anysize reads mode F as levels in [0, 1]"),
    (lambda: Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)),
     "is a floating-point image (mode F) with NaN or infinite values; anysize reads mode F as levels in [0, 1]"),
    (lambda: Image.new("LAB", (2, 2)), "has mode LAB, which anysize does not convert to RGB; readable modes: RGB, 1, L"),
    (lambda: Image.new("La", (2, 2)), "has mode La, which anysize does not convert to RGB"),
], ids=["I-out-of-range", "F-out-of-range", "F-nan", "LAB", "La"])
def test_modes_without_a_defined_range_are_refused(tmp_path, make_image, message):
    with pytest.raises(InvalidArgumentError, match="^the image " + re.escape(message)):
        load_image(make_image())
    im = make_image()
    if im.mode in ("I", "F", "LAB"):  # and from a file, named
        im.save(tmp_path / "x.tiff")
        with pytest.raises(InvalidArgumentError, match=f"^image {tmp_path / 'x.tiff'} "):
            load_image(tmp_path / "x.tiff")


def test_cli_upscales_a_16_bit_grey_gradient_to_a_gradient_not_white(capsys, tmp_path, monkeypatch):
    """The issue's case end to end with the embedded (trained) toy model: before, every pixel came out ~239."""
    monkeypatch.chdir(tmp_path)
    ramp = np.tile(np.linspace(0, 65535, 64), (32, 1)).astype(np.uint16)
    Image.fromarray(ramp).save("ramp.png")
    assert Image.open("ramp.png").mode == "I;16"
    rc = cli.main(["upscale", "ramp.png", "--scale", "2", "--steps", "10", "--strength", "0.1", "--out", "big.png", "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.strip() == "big.png" and sorted(os.listdir()) == ["big.png", "ramp.png"]
    grey = np.asarray(Image.open("big.png").convert("L"), dtype=np.float64)
    assert grey.shape == (64, 128)
    columns = grey.mean(axis=0)
    assert columns[:32].mean() < 90 and columns[-32:].mean() > 165, columns.round()
    rank = np.corrcoef(np.argsort(np.argsort(columns)), np.arange(128))[0, 1]  # Spearman: rising left to right
    assert rank > 0.9, (rank, columns.round())
