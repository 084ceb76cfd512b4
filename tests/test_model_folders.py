"""A model folder is checked against its model_index.json before diffusers loads it (issue 18, item 5).

A real tiny pipeline is saved once; each case copies it and deletes or breaks a part. Every error
names what is missing and what a diffusers folder holds, and ``from_pretrained`` is never reached.
"""

import json
import re
import shutil

import pytest

import anysize
from anysize import cli
from anysize.errors import ModelLoadError
from anysize.models.config_files import FOLDER_LAYOUT, check_pipeline_folder

LAYOUT = re.escape(FOLDER_LAYOUT)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from anysize.builders import save_tiny_pipeline

    return save_tiny_pipeline("sd1", tmp_path_factory.mktemp("saved") / "sd1")


@pytest.fixture
def folder(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "model")


@pytest.fixture
def never_loaded(monkeypatch):
    import diffusers

    def refuse(*a, **k):
        raise AssertionError("from_pretrained was called on a folder that should have been refused")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", refuse)


def index(folder):
    return json.loads((folder / "model_index.json").read_text())


def write_index(folder, data):
    (folder / "model_index.json").write_text(json.dumps(data) if not isinstance(data, str) else data)


BREAKS = [  # (name, how to break the folder, regex of the message after the folder's name)
    ("no-unet", lambda f: shutil.rmtree(f / "unet"),
     r"is incomplete: missing component folder unet/ \(UNet2DConditionModel\); its model_index.json lists "
     r"scheduler, text_encoder, tokenizer, unet, vae, and " + LAYOUT + "$"),
    ("no-unet-no-vae", lambda f: (shutil.rmtree(f / "unet"), shutil.rmtree(f / "vae")),
     r"is incomplete: missing component folders unet/ \(UNet2DConditionModel\), vae/ \(AutoencoderKL\);"),
    ("unet-without-weights", lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").unlink(),
     r"is incomplete: unet/ \(UNet2DConditionModel\) has no weights \(\*\.safetensors or \*\.bin\);"),
    ("text-encoder-without-weights", lambda f: (f / "text_encoder" / "model.safetensors").unlink(),
     r"is incomplete: text_encoder/ \(CLIPTextModel\) has no weights"),
    ("vae-without-config", lambda f: (f / "vae" / "config.json").unlink(), r"is incomplete: vae/ \(AutoencoderKL\) has no config.json"),
    ("scheduler-without-config", lambda f: (f / "scheduler" / "scheduler_config.json").unlink(),
     r"is incomplete: scheduler/ \(PNDMScheduler\) has no scheduler_config.json"),
    ("empty-tokenizer", lambda f: [p.unlink() for p in (f / "tokenizer").iterdir()],
     r"is incomplete: tokenizer/ \(CLIPTokenizer\) has no tokenizer files"),
    ("unet-is-a-file", lambda f: (shutil.rmtree(f / "unet"), (f / "unet").write_text("x")),
     r"is incomplete: missing component folder unet/ \(UNet2DConditionModel\)"),
]


@pytest.mark.parametrize("name, damage, message", BREAKS, ids=[b[0] for b in BREAKS])
def test_incomplete_folder_names_the_missing_parts(folder, never_loaded, name, damage, message):
    damage(folder)
    with pytest.raises(ModelLoadError, match=f"^model folder {re.escape(str(folder))} " + message):
        check_pipeline_folder(folder)
    with pytest.raises(ModelLoadError, match=message):  # the API's load checks first
        anysize.load(folder)


INDEXES = [  # (name, model_index.json content, regex of the message)
    ("truncated-json", lambda d: json.dumps(d)[:40],
     r"model_index.json is not valid JSON \(Unterminated string starting at: line 1 column \d+\); " + LAYOUT),
    ("empty-file", lambda d: "", r"model_index.json is not valid JSON \(Expecting value: line 1 column 1\)"),
    ("a-list", lambda d: "[1, 2]", r"model_index.json holds a JSON list, not an object; " + LAYOUT),
    ("no-class-name", lambda d: {k: v for k, v in d.items() if k != "_class_name"},
     r"model_index.json names no pipeline class \(_class_name\); " + LAYOUT),
    ("no-components", lambda d: {"_class_name": "StableDiffusionPipeline"}, r"model_index.json lists no components"),
    ("unknown-pipeline-class", lambda d: {**d, "_class_name": "StableDifusionPipeline"},
     r"model_index.json names pipeline class 'StableDifusionPipeline', which diffusers \S+ does not have"),
    ("unknown-component-class", lambda d: {**d, "unet": ["diffusers", "UNet9000Model"]},
     r"model_index.json names component classes this installation does not have \(unet: diffusers.UNet9000Model;"),
]


@pytest.mark.parametrize("name, content, message", INDEXES, ids=[i[0] for i in INDEXES])
def test_broken_model_index(folder, never_loaded, name, content, message):
    write_index(folder, content(index(folder)))
    with pytest.raises(ModelLoadError, match=message):
        anysize.load(folder)


def test_model_index_not_utf8(folder, never_loaded):
    (folder / "model_index.json").write_bytes(b'{"_class_name": "\xff"}')
    with pytest.raises(ModelLoadError, match=r"model_index.json is not UTF-8 JSON \(invalid start byte at byte 17\)"):
        anysize.load(folder)


def test_not_a_folder(tmp_path, never_loaded):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=f"^model {re.escape(str(tmp_path / 'file'))} is a file, not a diffusers "
                       "pipeline folder; " + LAYOUT):
        anysize.load(tmp_path / "file")
    with pytest.raises(ModelLoadError, match=r"empty is not a diffusers pipeline folder \(no model_index.json\); " + LAYOUT):
        anysize.load(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="^model folder .*/nowhere does not exist$"):
        anysize.load(tmp_path / "nowhere")


def test_hub_id_not_cached_with_downloads_off(never_loaded):
    with pytest.raises(ModelLoadError, match="^model 'nobody/no-such-model' is neither a local folder nor a pipeline in "
                       r"the local Hugging Face cache, and downloads are off \(HF_HUB_OFFLINE is set\)"):
        anysize.load("nobody/no-such-model")


def test_cli_names_the_missing_component(capsys, folder, tmp_path, monkeypatch, never_loaded):
    """The issue's case: before, 'no file named config.json found in directory <root>'."""
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(folder / "unet")
    rc = cli.main(["generate", "a cat", "--model", str(folder), "--steps", "1", "--out", "o.png"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "missing component folder unet/ (UNet2DConditionModel)" in err and "model_index.json" in err
    assert "no file named config.json" not in err
    assert not (tmp_path / "o.png").exists()


def test_every_family_and_the_shipped_model_pass(tmp_path):
    from anysize.builders import save_tiny_pipeline, tiny_x4_upscaler_pipeline
    from anysize.defaults import SHIPPED_MODEL

    for family in ("sd1", "sdxl", "sd3", "flux"):
        check_pipeline_folder(save_tiny_pipeline(family, tmp_path / family))
    tiny_x4_upscaler_pipeline().save_pretrained(tmp_path / "x4")
    check_pipeline_folder(tmp_path / "x4")
    check_pipeline_folder(SHIPPED_MODEL)


def test_intact_folder_still_loads(folder):
    adapter = anysize.load(folder)
    assert adapter.family == "sd1" and adapter.source == str(folder)


def test_loading_shows_no_library_bars_or_torchvision_notice(folder, capfd, monkeypatch):
    import logging

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from huggingface_hub import utils as hub_utils

    import diffusers

    hub_during = []
    original = diffusers.DiffusionPipeline.from_pretrained
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", lambda *a, **k: (
        hub_during.append(hub_utils.are_progress_bars_disabled()), original(*a, **k))[1])
    hub_off = hub_utils.are_progress_bars_disabled()
    anysize.load(folder)
    err = capfd.readouterr().err
    assert "Loading pipeline components" not in err and "Loading weights" not in err, err
    # the libraries' own settings are as they were (on: their default) for the user's other loads, and a
    # download during the load keeps the hub's bar
    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
    assert hub_during == [hub_off] and hub_utils.are_progress_bars_disabled() == hub_off
    # transformers warns once per process, so the filter is checked on its logger directly
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.utils.import_utils")
    logger.addHandler(handler)
    try:
        logger.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to "
                       "`CLIPImageProcessorPil` for backward compatibility.")
        logger.warning("another notice")
    finally:
        logger.removeHandler(handler)
    assert seen == ["another notice"]
