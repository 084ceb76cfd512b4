"""The Python API's results: one image per prompt, indexable, each saved with its own parameters (issue 24.2)."""

from __future__ import annotations

import pytest

import anysize
from anysize.errors import OutputError
from anysize.models import adapt
from anysize.output import read_metadata


@pytest.fixture(scope="module")
def result(tiny):
    return anysize.generate(adapt(tiny("sd1")), ["a cat", "a dog"], steps=2, seed=7, progress=False)


def test_a_result_is_indexed_and_iterated_by_image(result, tmp_path):
    assert len(result) == 2
    assert [(one.prompt, one.seed) for one in result] == [("a cat", 7), ("a dog", 8)]
    assert result[-1].seed == 8 and result[1].image is result.images[1]
    with pytest.raises(IndexError, match="image 2 of a result with 2 images"):
        result[2]
    with pytest.raises(TypeError):
        result["a"]
    path = result[1].save(tmp_path / "dog.png")
    meta = read_metadata(path)
    assert meta["prompt"] == "a dog" and meta["seed"] == 8


def test_an_existing_file_names_the_api_spelling_of_force(result, tmp_path):
    result.save(tmp_path / "x.png")
    with pytest.raises(OutputError, match=r"pass force=True to overwrite it") as e:
        result[0].save(tmp_path / "x.png")
    assert "--force" not in str(e.value)
    result[0].save(tmp_path / "x.png", force=True)


def test_step_info_shows_shapes_not_tensors(tiny):
    seen = []
    anysize.generate(adapt(tiny("sd1")), "a cat", steps=2, seed=1, progress=False, output_type="latent",
                     callback=lambda info: seen.append(repr(info)))
    assert seen[0].startswith("StepInfo(step 1/") and "latents (1, 4, 16, 16) float32)" in seen[0]
    assert "tensor(" not in seen[0] and len(seen[0]) < 120
