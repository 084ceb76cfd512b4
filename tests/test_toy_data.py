"""The toy dataset: deterministic, one object of the captioned colour and shape, sizes as specified."""

from __future__ import annotations

import numpy as np
import pytest

from anysize.errors import InvalidArgumentError
from anysize.toy.data import (
    COLOURS, NATIVE_SIZE, OBJECT_COLOURS, SHAPES, SIZE_RANGE, ToyDataset, caption, make_sample, parse_caption,
    render, shape_mask,
)


def test_samples_are_a_pure_function_of_seed_and_index():
    a, spec_a = make_sample(3, 17)
    b, spec_b = make_sample(3, 17)
    assert spec_a == spec_b and np.array_equal(a, b)
    c, spec_c = make_sample(4, 17)
    assert spec_c != spec_a
    # order does not matter: item 17 is the same whether or not 0..16 were drawn first
    ds = ToyDataset(seed=3)
    assert np.array_equal(((ds[17]["pixel_values"].numpy().transpose(1, 2, 0) + 1) * 127.5).round(), a)


def test_image_contents_match_the_spec():
    for i in range(50):
        img, spec = make_sample(0, i)
        assert img.shape == (NATIVE_SIZE, NATIVE_SIZE, 3) and img.dtype == np.uint8
        assert spec.colour in OBJECT_COLOURS and spec.shape in SHAPES and spec.colour not in spec.background
        assert SIZE_RANGE[0] <= spec.side <= SIZE_RANGE[1]
        x0, y0, x1, y1 = spec.box(NATIVE_SIZE)
        assert 0 <= x0 and 0 <= y0 and x1 <= NATIVE_SIZE and y1 <= NATIVE_SIZE  # fully inside
        # pixels of exactly the object colour exist only inside its box
        obj = np.all(img == np.array(COLOURS[spec.colour], dtype=np.uint8), axis=-1)
        ys, xs = np.nonzero(obj)
        assert obj.sum() > 0.2 * (x1 - x0) * (y1 - y0)
        assert xs.min() >= x0 - 1 and xs.max() <= x1 and ys.min() >= y0 - 1 and ys.max() <= y1
        # the centre pixel of the box is the object for every shape drawn here (a star's too)
        assert obj[(y0 + y1) // 2, (x0 + x1) // 2]


def test_distribution_covers_every_colour_shape_and_both_backgrounds():
    specs = [make_sample(1, i)[1] for i in range(400)]
    assert {s.colour for s in specs} == set(OBJECT_COLOURS)
    assert {s.shape for s in specs} == set(SHAPES)
    two_tone = sum(s.split is not None for s in specs) / len(specs)
    assert 0.2 < two_tone < 0.4


def test_captions_and_their_parsing():
    assert caption("red", "triangle", ("blue",)) == "a red triangle on a blue background"
    assert caption("orange", "star", ("white", "gray")) == "an orange star on a white and gray background"
    assert parse_caption("an orange star on a red background") == ("orange", "star")
    assert parse_caption("A Blue Circle, on a yellow background") == ("blue", "circle")
    assert parse_caption("a castle") == (None, None)
    for i in range(20):
        spec = make_sample(2, i)[1]
        assert parse_caption(spec.caption) == (spec.colour, spec.shape)


def test_shape_templates_fill_their_box():
    fill = {s: shape_mask(s, 64, 64).mean() for s in SHAPES}
    assert fill["square"] == pytest.approx(1.0)
    assert fill["circle"] == pytest.approx(np.pi / 4, abs=0.01)
    assert fill["triangle"] == pytest.approx(0.5, abs=0.01)
    assert 0.3 < fill["star"] < 0.5
    m = shape_mask("triangle", 40, 40)  # apex up: the top row is nearly empty, the bottom row full
    assert m[0].mean() < 0.1 and m[-1].mean() > 0.9


def test_render_at_other_sizes_scales_the_same_scene():
    _, spec = make_sample(0, 5)
    small, big = render(spec, 64), render(spec, 256)
    down = big.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
    assert np.abs(down - small.astype(float)).mean() < 3.0


def test_bad_input():
    _, spec = make_sample(0, 0)
    with pytest.raises(InvalidArgumentError, match="at least 8"):
        render(spec, 4)
    with pytest.raises(InvalidArgumentError, match="circle"):
        shape_mask("hexagon", 8, 8)
    with pytest.raises(IndexError):
        ToyDataset(length=3)[3]


def test_object_size_and_centring_are_parameters_with_checked_ranges():
    for i in range(40):
        _, spec = make_sample(6, i, size=16, size_range=(0.5, 0.7), centre_jitter=0.02)
        assert 0.5 <= spec.side <= 0.7
        assert all(abs(c - 0.5) <= 0.02 + 1e-9 for c in spec.centre)
    # the defaults are the documented toy world
    assert make_sample(6, 3)[1] == make_sample(6, 3, size_range=SIZE_RANGE)[1]
    for bad in [dict(size_range=(0.7, 0.5)), dict(size_range=(0.0, 0.5)), dict(size_range=(0.5, 1.2)),
                dict(centre_jitter=0.5), dict(centre_jitter=-0.1)]:
        with pytest.raises(InvalidArgumentError, match="object size range"):
            make_sample(0, 0, size=16, **bad)


def test_non_square_render_keeps_the_object_square_and_centred():
    from anysize.toy.data import ToySpec, render

    spec = ToySpec("red", "square", ("blue",), None, (0.5, 0.5), 0.5)
    for h, w in [(128, 256), (256, 128), (144, 256)]:
        img = render(spec, (h, w))
        assert img.shape == (h, w, 3)
        ys, xs = np.nonzero((img == [215, 40, 40]).all(-1))
        side = 0.5 * min(h, w)
        assert abs((xs.max() - xs.min() + 1) - side) <= 1 and abs((ys.max() - ys.min() + 1) - side) <= 1
        assert abs((xs.max() + xs.min()) / 2 - (w - 1) / 2) <= 1 and abs((ys.max() + ys.min()) / 2 - (h - 1) / 2) <= 1
    assert np.array_equal(render(spec, 96), render(spec, (96, 96)))


def test_write_aspect_dataset(tmp_path):
    from PIL import Image

    from anysize.toy.composition import analyse
    from anysize.toy.data import write_aspect_dataset

    assert write_aspect_dataset(tmp_path, 6, [(64, 128), (128, 64), (72, 128)], seed=2) == 6
    pngs = sorted(tmp_path.glob("*.png"))
    assert [Image.open(p).size for p in pngs] == [(128, 64), (64, 128), (128, 72)] * 2
    for p in pngs:
        caption = p.with_suffix(".txt").read_text().strip()
        a = analyse(np.array(Image.open(p).convert("RGB")), caption, native_size=64)
        assert a.n_objects == 1 and a.fidelity, (p.name, caption)
    with pytest.raises(InvalidArgumentError):
        write_aspect_dataset(tmp_path, 0, [(64, 64)])
