"""The web UI's handlers (:mod:`anysize.app.handlers`, :mod:`anysize.app.controls`), called directly.

No Gradio and no server here: the functions the page's buttons and the named endpoints call, on
the embedded toy model (2 steps at its native 128x128 px) and on tiny random-weight pipelines.
What the page and ``gradio_client`` see is tested in ``test_app_client.py``.
"""

import dataclasses
import threading
import time

import pytest
from PIL import Image, PngImagePlugin

from anysize import cli, methods
from anysize.app import controls
from anysize.app.handlers import Busy, DeviceQueue, Jobs, Service
from anysize.errors import AnysizeError, Cancelled, InvalidArgumentError, InvalidSizeError
from anysize.methods import METHODS
from anysize.methods.base import MethodOptions
from anysize.methods.direct import Direct
from anysize.options import option
from anysize.output import infotext, parse_infotext, read_metadata, read_parameters

PROMPT = "a red triangle on a blue background"


@pytest.fixture(scope="module")
def toy():
    service = Service.load(None, queue=2)
    yield service
    service.close()


# ------------------------------------------------------------------------------------------ controls


@dataclasses.dataclass
class _KnobOptions(MethodOptions):
    gain: float = option(1.0, "how hard to push", low=0.0, high=4.0)
    rounds: int = option(2, "how many rounds", low=1)
    style: str = option("soft", "the look", choices=("soft", "hard"))
    sharp: bool = option(False, "sharpen the result")
    extra: float | None = option(None, "an optional amount", kind="float", low=0.0, unset="no extra")


class _Knob(Direct):
    name = "test-knob"
    summary = "direct with knobs (test only)"
    Options = _KnobOptions


def test_controls_follow_the_options_metadata():
    specs = {s.name: s for s in _KnobOptions.specs()}
    gain = controls.control_for("test-knob", specs["gain"])
    assert (gain.widget, gain.minimum, gain.maximum, gain.value) == ("slider", 0.0, 4.0, 1.0)
    assert gain.info.startswith("how hard to push. Valid: ")
    rounds = controls.control_for("test-knob", specs["rounds"])
    assert (rounds.widget, rounds.integer, rounds.value) == ("number", True, 2)  # no upper bound: a number box
    style = controls.control_for("test-knob", specs["style"])
    assert style.widget == "dropdown" and [v for _, v in style.choices] == ["soft", "hard"] and style.value == "soft"
    assert controls.control_for("test-knob", specs["sharp"]).widget == "checkbox"
    extra = controls.control_for("test-knob", specs["extra"])
    assert extra.widget == "textbox" and extra.value == "" and "empty: no extra" in extra.info
    # the way back: only what differs from the defaults, then checked by the method itself
    raw = {"gain": 1.0, "rounds": 3.0, "style": "hard", "sharp": False, "extra": " 0.5 "}
    assert controls.options_from_widgets("test-knob", list(specs.values()), raw) == {
        "rounds": 3, "style": "hard", "extra": 0.5}
    with pytest.raises(InvalidArgumentError, match="extra must be"):
        controls.to_option("test-knob", specs["extra"], "lots")


@pytest.mark.parametrize("name", methods.names())
def test_every_registered_option_has_a_control_that_round_trips(name):
    for spec in methods.get(name).Options.specs():
        c = controls.control_for(name, spec)
        assert c.widget in controls.WIDGETS and c.label.startswith(spec.name) and spec.doc in c.info
        if c.widget == "slider":
            assert spec.low <= c.minimum < c.maximum <= spec.high
        if c.widget == "dropdown" and spec.kind == "choice":
            assert [v for _, v in c.choices if v != controls.UNSET] == [str(v) for v in spec.valid_choices()]
        if not spec.required:
            back = controls.to_option(name, spec, controls.to_widget(spec, spec.default))
            assert controls._same(back, spec.default) or list(back or []) == list(spec.default or []), spec.name


def test_a_registered_method_is_offered_with_no_ui_code(toy, monkeypatch):
    monkeypatch.setitem(METHODS, _Knob.name, _Knob)
    assert "test-knob" in toy.methods()
    assert toy.method_options("test-knob", {"gain": 2.5}) == {"gain": 2.5}
    with pytest.raises(InvalidArgumentError) as e:
        toy.method_options("test-knob", {"gain": 9.0})
    with pytest.raises(InvalidArgumentError) as cli_e:  # the message of anysize generate --set gain=9
        methods.create("test-knob", gain=9.0)
    assert str(e.value) == str(cli_e.value) and "\n" not in str(e.value) and "gain" in str(e.value)


# ------------------------------------------------------------------------------------------ form checks


def test_size_presets_are_multiples_of_the_pixel_factor(toy):
    presets = {p.label.split()[0]: (p.width, p.height) for p in toy.size_presets()}
    assert presets["native"] == (128, 128) and presets["2×"] == (256, 256) and presets["4×"] == (512, 512)
    assert presets["2:1"] == (256, 128) and presets["1:4"] == (128, 512) and presets["9:16"][0] == 128
    for w, h in presets.values():
        assert w % toy.factor == 0 and h % toy.factor == 0
    assert toy.preset_for(256, 128).startswith("2:1") and toy.preset_for(132, 128) == "custom"


def test_bad_input_gets_the_command_lines_one_line_message(toy, capsys, tmp_path):
    # the same size the CLI refuses, with the same message
    with pytest.raises(InvalidSizeError) as e:
        toy.generate(PROMPT, width=130, height=128, steps=1)
    assert cli.main(["generate", PROMPT, "--size", "130x128", "--steps", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert str(e.value) in capsys.readouterr().err
    cases = [
        (dict(prompt=""), "no prompt given"),
        (dict(method="nope"), "unknown method 'nope'; valid choices: " + ", ".join(methods.names())),
        (dict(method="fstd", options={"tile": -3}), "fstd option"),
        (dict(method="direct", options={"nope": 1}), "nope"),
        (dict(seed=-1), "seed must be an integer in [0, "),
        (dict(seed=1.5), "seed must be an integer, got 1.5"),
        (dict(steps=0), "steps must be an integer >= 1, got 0"),
        (dict(guidance=float("nan")), "guidance must be a number >= 0"),
        (dict(scheduler="euler-x"), "unknown scheduler 'euler-x'; valid choices: "),
        (dict(tiled_vae="sometimes"), "unknown tiled-vae mode 'sometimes'; valid choices: auto, fast, off, on"),
        (dict(width="wide"), "width must be an integer number of pixels, got 'wide'"),
        (dict(height=0), "height must be a positive number of pixels, got 0"),
    ]
    for kwargs, message in cases:
        args = {"prompt": PROMPT, "steps": 1, **kwargs}
        with pytest.raises(AnysizeError) as e:
            toy.generate(args.pop("prompt"), **args)
        assert message in str(e.value) and "\n" not in str(e.value), (kwargs, str(e.value))
    assert toy.queue.stats() == {"running": 0, "waiting": 0, "room": 2}  # nothing was queued


# ------------------------------------------------------------------------------------------ runs


def test_generate_writes_the_png_the_cli_writes(toy, capsys, tmp_path):
    events = []
    out = toy.generate(PROMPT, "blurry", width=128, height=128, seed=3.0, steps=2.0, progress=lambda *a: events.append(a))
    assert out.path.name == "anysize-direct-128x128-s3.png"
    assert events[0] == (1, 2, "direct 1/2") and events[1] == (2, 2, "direct 2/2")
    assert out.network_calls == 4 and out.seconds > 0  # 2 steps x (cond + uncond)
    assert out.metrics is not None and out.metrics["prompt_colour"] == "red"
    cli_png = tmp_path / "cli.png"
    assert cli.main(["generate", PROMPT, "--negative", "blurry", "--seed", "3", "--steps", "2", "--quiet",
                     "--out", str(cli_png)]) == 0
    capsys.readouterr()
    app_meta, cli_meta = read_metadata(out.path), read_metadata(cli_png)
    assert app_meta == cli_meta
    assert read_parameters(out.path) == read_parameters(cli_png)
    assert out.path.read_bytes() == cli_png.read_bytes()


def test_compare_runs_each_method_on_the_same_settings(toy):
    events = []
    rows = toy.compare(PROMPT, methods=["direct", "multidiffusion", "direct"], width=128, height=128, seed=7,
                       steps=2, progress=lambda *a: events.append(a[2]))
    assert [r.method for r in rows] == ["direct", "multidiffusion"]  # a repeated method runs once
    for r in rows:
        assert r.error is None
        c = read_metadata(r.output.path)
        assert (c["method"], c["seed"], c["width"], c["height"], c["prompt"]) == (r.method, 7, 128, 128, PROMPT)
        assert r.output.metrics is not None and r.record()["network_calls"] == r.output.network_calls
    assert events[0] == "[1/2] direct 1/2" and events[-1] == "[2/2] multidiffusion 2/2"
    with pytest.raises(InvalidArgumentError, match="choose at least one method"):
        toy.compare(PROMPT, methods=[])


class _XLOnly(Direct):
    name = "test-xl-only"
    summary = "direct on SDXL only (test only)"
    families = ("sdxl",)


def test_compare_says_why_a_method_cannot_run_and_runs_the_others(tiny, monkeypatch):
    from anysize.models import adapt

    monkeypatch.setitem(METHODS, _XLOnly.name, _XLOnly)
    service = Service(adapt(tiny("sd1")))
    try:
        assert "test-xl-only" not in service.methods()  # not offered on an SD 1.x model
        rows = service.compare("a cat", methods=["test-xl-only", "direct"], width=128, height=128, steps=1)
        assert [r.method for r in rows] == ["test-xl-only", "direct"]
        assert rows[0].output is None and rows[0].error == "method 'test-xl-only' supports sdxl, not sd1"
        assert rows[1].error is None and read_metadata(rows[1].output.path)["method"] == "direct"
    finally:
        service.close()


def test_multi_stage_progress_names_the_stage(tiny):
    from anysize.models import adapt

    service = Service(adapt(tiny("sd1")))
    try:
        texts = []
        service.generate("a cat", width=256, height=256, method="asd", steps=2, progress=lambda *a: texts.append(a[2]))
        assert any(t.startswith("stage II (fstd) ") for t in texts), texts
        assert texts[-1] == "writing the PNG"
    finally:
        service.close()


def test_upscale_scale_and_exact_size(toy, tmp_path, capsys):
    src = toy.generate(PROMPT, steps=2).path
    out = toy.upscale(str(src), scale=2, method="fstd", strength=0.5, steps=2)
    c = read_metadata(out.path)
    assert (c["width"], c["height"], c["upscale"]["source"], c["strength"]) == (256, 256, src.name, 0.5)
    out = toy.upscale(str(src), width=256, height=128, method="direct", strength=0.5, steps=2)
    assert Image.open(out.path).size == (256, 128)
    bad = tmp_path / "not.png"
    bad.write_text("hello")
    for kwargs, message in [
        (dict(image=str(bad)), "cannot read"),
        (dict(image=None), "no image given"),
        (dict(image=str(src), method="asd"), "cannot upscale an image; use one of: "),
        (dict(image=str(src), scale=None, width=250, height=128), "not a multiple of 4"),
        (dict(image=str(src), strength=0.4), "strength 0.4 of 2 steps runs no step at all"),
        (dict(image=str(src), scale=-1), "scale must be a number > 0"),
        (dict(image=str(src), strength=1.5), "strength"),
        (dict(image=str(src), scale=None), "give the target as a scale or as width and height"),
    ]:
        args = {"scale": 2, "steps": 2, "strength": 0.5, **kwargs}
        with pytest.raises(AnysizeError) as e:
            toy.upscale(args.pop("image"), **args)
        assert message in str(e.value) and "\n" not in str(e.value), (kwargs, str(e.value))
    # a file that is not an image: the message of anysize upscale
    with pytest.raises(AnysizeError) as e:
        toy.upscale(str(bad), scale=2, steps=2, strength=0.5)
    assert cli.main(["upscale", str(bad), "--scale", "2", "--steps", "2", "--out", str(tmp_path / "u.png")]) == 2
    assert str(e.value) in capsys.readouterr().err


def test_x4_upscaler_only_upscales_with_a_noise_level():
    from anysize.builders import tiny_x4_upscaler_pipeline
    from anysize.models import adapt

    service = Service(adapt(tiny_x4_upscaler_pipeline()))
    try:
        assert not service.generates
        with pytest.raises(InvalidArgumentError, match="use the Upscale tab"):
            service.generate("a cat", steps=1)
        src = service.out_dir / "small.png"
        Image.new("RGB", (32, 32), (200, 40, 40)).save(src)
        out = service.upscale(str(src), scale=4, method="direct", noise_level=30, steps=1)
        c = read_metadata(out.path)
        assert c["upscale"]["noise_level"] == 30 and (c["width"], c["height"]) == (128, 128)
    finally:
        service.close()


# ------------------------------------------------------------------------------------------ cancel and queue


def test_cancel_stops_a_run_and_one_waiting(toy):
    event = threading.Event()
    steps_seen = []

    def progress(done, total, text):
        steps_seen.append(done)
        if done == 2:
            event.set()

    with pytest.raises(Cancelled):
        toy.generate(PROMPT, steps=50, progress=progress, cancel=event)
    assert max(d for d in steps_seen if d) < 50
    # a run waiting for the device leaves the line when cancelled, without running
    queue = DeviceQueue(1)
    release = threading.Event()
    waiting_cancel = threading.Event()
    told = []

    def holder():
        with queue.slot():
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    time.sleep(0.1)
    errors = []

    def waiter():
        try:
            with queue.slot(waiting_cancel, told.append):
                errors.append("ran")
        except Cancelled as e:
            errors.append(str(e))

    w = threading.Thread(target=waiter)
    w.start()
    time.sleep(0.3)
    assert told == [1] and queue.stats() == {"running": 1, "waiting": 1, "room": 1}
    waiting_cancel.set()
    w.join(5)
    assert errors == ["cancelled while waiting for the device"]
    release.set()
    t.join(5)
    assert queue.stats() == {"running": 0, "waiting": 0, "room": 1}


def test_queue_refuses_past_the_waiting_room_and_keeps_order():
    queue = DeviceQueue(2)
    order, refused = [], []
    gate = threading.Event()

    def job(i):
        try:
            with queue.slot():
                if i == 0:
                    gate.wait(5)
                order.append(i)
        except Busy as e:
            refused.append((i, str(e)))

    threads = []
    for i in range(5):
        threads.append(threading.Thread(target=job, args=(i,)))
        threads[-1].start()
        time.sleep(0.1)  # arrive in order
    gate.set()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2]
    assert [i for i, _ in refused] == [3, 4]
    assert refused[0][1].startswith("busy: ") and "try again" in refused[0][1] and "--queue 2" in refused[0][1]
    with pytest.raises(InvalidArgumentError):
        DeviceQueue(-1)


def test_jobs_cancel_only_their_own_session():
    jobs = Jobs()
    a, b = jobs.start("alice"), jobs.start("bob")
    assert jobs.cancel("alice") == 1
    assert jobs.event(a).is_set() and not jobs.event(b).is_set()
    assert not jobs.wait_finished("alice", 0.05)  # its run has not finished yet
    threading.Timer(0.2, jobs.finish, (a,)).start()
    assert jobs.wait_finished("alice", 10) and not jobs.wait_finished("bob", 0.05)
    jobs.finish(b)
    assert len(jobs) == 0 and jobs.cancel("alice") == 0


# ------------------------------------------------------------------------------------------ PNG in


def test_read_png_of_anysize_fills_the_form(toy):
    src = toy.generate(PROMPT, "blurry", width=128, height=128, method="multidiffusion",
                       options={"weighting": "gaussian"}, seed=11, steps=2).path
    form = toy.read_png(str(src))
    assert (form["prompt"], form["negative_prompt"], form["width"], form["height"]) == (PROMPT, "blurry", 128, 128)
    assert (form["seed"], form["steps"], form["method"]) == (11, 2, "multidiffusion")
    assert form["options"]["weighting"] == "gaussian" and "anysize's parameters" in form["note"]


def test_read_png_of_a1111_fills_what_it_can(toy, tmp_path):
    text = ("a castle on a hill, dusk\nNegative prompt: blurry, low quality\n"
            'Steps: 28, Sampler: Euler a, CFG scale: 6.5, Seed: 1234, Size: 768x512, Model hash: abc123, '
            'Lora hashes: "x: 1, y: 2", Version: v1.9.0')
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    form = toy.read_png(str(path))
    assert form["prompt"] == "a castle on a hill, dusk" and form["negative_prompt"] == "blurry, low quality"
    assert (form["steps"], form["guidance"], form["seed"], form["width"], form["height"]) == (28, 6.5, 1234, 768, 512)
    assert "scheduler" not in form and "'Euler a' is not one of anysize's" in form["note"]
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(InvalidArgumentError, match="has no generation parameters"):
        toy.read_png(str(plain))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        toy.read_png(str(junk))


def test_parse_infotext_inverts_infotext():
    config = {"prompt": "a cat, b: c", "negative_prompt": "dog\nsecond line", "steps": 3, "scheduler": "ddim",
              "guidance": 5.0, "seed": 9, "width": 256, "height": 128, "method": "fstd",
              "method_options": {"tile": 64, "labels": "a, b"}, "model": "m", "versions": {"anysize": "1"}}
    parsed = parse_infotext(infotext(config))
    assert parsed["prompt"] == "a cat, b: c" and parsed["negative_prompt"] == "dog\nsecond line"
    p = parsed["params"]
    assert (p["Steps"], p["Seed"], p["Size"], p["Method"]) == ("3", "9", "256x128", "fstd")
    assert parse_infotext("just a prompt") == {"prompt": "just a prompt", "negative_prompt": "", "params": {}}
    with pytest.raises(InvalidArgumentError):
        parse_infotext(None)


# ------------------------------------------------------------------------------------------ LoRA, ControlNet, regions


@pytest.fixture(scope="module")
def resources(toy, tmp_path_factory):
    """A --lora-dir with two LoRAs for the toy model (one in a sub-folder), a toy ControlNet folder and
    a control image, built offline."""
    import numpy as np

    from anysize.builders.controlnet import tiny_controlnet
    from anysize.builders.lora import tiny_lora

    root = tmp_path_factory.mktemp("app-resources")
    (root / "loras" / "sub").mkdir(parents=True)
    tiny_lora(toy.adapter.pipe, root / "loras", name="style.safetensors", text_encoder=True)
    tiny_lora(toy.adapter.pipe, root / "loras" / "sub", name="detail.safetensors", seed=1)
    (root / "loras" / "notes.txt").write_text("not a LoRA")
    tiny_controlnet(toy.adapter.pipe).save_pretrained(root / "edges")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)).save(root / "edges.png")
    return root


@pytest.fixture(scope="module")
def served(toy, resources):
    """The toy model served with the LoRA folder and the ControlNet (loaded once, here)."""
    service = Service.serving(toy.adapter, None, queue=2, lora_dirs=[resources / "loras"],
                              controlnets=[f"edges={resources / 'edges'}"])
    yield service
    service.close()


@pytest.fixture(scope="module")
def plain(served):
    """The toy image without LoRA, ControlNet or regions (2 steps, seed 5, multidiffusion at 128x128)."""
    return pixels(served.generate(PROMPT, steps=2, seed=5, method="multidiffusion").path)


def pixels(path):
    import numpy as np

    return np.asarray(Image.open(path).convert("RGB"))


def api_pixels(result):
    import numpy as np

    return np.asarray(result.image.convert("RGB"))


def test_loras_and_controlnets_are_declared_by_the_server(served, resources, tiny):
    from anysize.app.handlers import check_controlnet_specs, check_lora_dirs, declare_controlnets, parse_controlnet_spec
    from anysize.builders.controlnet import tiny_controlnet

    assert served.loras() == ["style.safetensors", "sub/detail.safetensors"]  # *.safetensors only, sub-folders too
    assert served.controlnet_names() == ["edges"] and not served.union_controlnets()
    extra = resources / "loras" / "late.safetensors"
    extra.write_bytes((resources / "loras" / "style.safetensors").read_bytes())
    try:
        assert "late.safetensors" in served.loras()  # listed anew on every request (the page's refresh)
    finally:
        extra.unlink()
    assert "late.safetensors" not in served.loras()
    assert parse_controlnet_spec("lllyasviel/control_v11p_sd15_canny") == ("control_v11p_sd15_canny",
                                                                           "lllyasviel/control_v11p_sd15_canny")
    assert parse_controlnet_spec("depth=/nets/d/") == ("depth", "/nets/d/")
    assert parse_controlnet_spec("/data/a=b/cn") == ("cn", "/data/a=b/cn")  # an '=' inside a path is the path's
    for call, message in [
        (lambda: check_lora_dirs([resources / "nowhere"]), "--lora-dir " + str(resources / "nowhere") + ": no such folder"),
        (lambda: check_lora_dirs([resources / "edges.png"]), "is a file; give the folder"),
        (lambda: check_lora_dirs([resources / "loras", str(resources / "loras") + "/"]), "is given twice"),
        (lambda: check_controlnet_specs(["a=x", "a=y"]), "the name 'a' is given twice"),
        (lambda: check_controlnet_specs(["=x"]), "no name before '='"),
        (lambda: check_controlnet_specs(["none=x"]), "'none' is the form's word for no ControlNet"),
        (lambda: declare_controlnets(served.adapter, [f"x={resources / 'nowhere'}"]), "--controlnet x: cannot load the ControlNet"),
        (lambda: declare_controlnets(served.adapter, [("a", served.controlnets["edges"].net), f"a={resources / 'edges'}"]),
         "--controlnet: the name 'a' is given twice"),
        (lambda: declare_controlnets(served.adapter, [("xl", tiny_controlnet(tiny("sdxl")))]),
         "--controlnet xl is a sdxl ControlNet (ControlNetModel) and cannot control the sd1 model"),
    ]:
        with pytest.raises(InvalidArgumentError) as e:
            call()
        assert message in str(e.value) and "\n" not in str(e.value), (message, str(e.value))


def test_a_lora_by_name_equals_the_api_with_that_file(served, resources, plain):
    import anysize

    out = served.generate(PROMPT, steps=2, seed=5, method="multidiffusion", loras=["style.safetensors:0.8", ""])
    path = resources / "loras" / "style.safetensors"
    ref = anysize.generate(served.adapter, PROMPT, steps=2, seed=5, method="multidiffusion", lora=[(str(path), 0.8)],
                           progress=False)
    assert (pixels(out.path) == api_pixels(ref)).all()  # bit-identical
    assert (pixels(out.path) != plain).any()
    c = read_metadata(out.path)
    assert c["loras"] == ref.config["loras"] and c["loras"][0]["file"] == "style.safetensors"
    assert "LoRAs: \"style.safetensors:0.8 (" in read_parameters(out.path)
    assert served.adapter.pipe.get_list_adapters() == {}  # removed after the run


def test_a_controlnet_unit_equals_the_api_with_that_net(served, resources, plain):
    import anysize

    image = str(resources / "edges.png")
    unit = {"model": "edges", "image": image, "scale": 0.7, "start": 0.0, "end": 0.5, "mode": "none"}
    out = served.generate(PROMPT, steps=2, seed=5, method="multidiffusion",
                          controls=[unit, {"model": "none", "image": None}])
    ref = anysize.generate(served.adapter, PROMPT, steps=2, seed=5, method="multidiffusion", progress=False,
                           control=anysize.Control(served.controlnets["edges"].net, image, 0.7, 0.0, 0.5))
    assert (pixels(out.path) == api_pixels(ref)).all()
    assert (pixels(out.path) != plain).any()
    rec = read_metadata(out.path)["controls"]
    assert rec == ref.config["controls"] and rec[0]["model"] == str(resources / "edges") and rec[0]["scale"] == 0.7


def test_regions_as_lines_json_or_a_file_equal_the_api(served, tmp_path, plain):
    import json

    import anysize
    from anysize.regions import parse_region

    lines = "0,0,64,128: a blue square\n\n64,0,64,128:a green circle"
    out = served.generate(PROMPT, steps=2, seed=5, method="multidiffusion", regions=lines)
    ref = anysize.generate(served.adapter, PROMPT, steps=2, seed=5, method="multidiffusion", progress=False,
                           regions=[parse_region("0,0,64,128:a blue square"), parse_region("64,0,64,128:a green circle")])
    assert (pixels(out.path) == api_pixels(ref)).all()
    assert (pixels(out.path) != plain).any()
    assert read_metadata(out.path)["regions"] == ref.config["regions"]
    # the same regions as JSON text, JSON objects, and an uploaded regions file
    dicts = ref.config["regions"]
    (tmp_path / "r.json").write_text(json.dumps({"regions": dicts}))
    for given in (dict(regions=json.dumps(dicts)), dict(regions=dicts), dict(regions=lines.splitlines()),
                  dict(regions_file=str(tmp_path / "r.json")),
                  dict(regions=lines.splitlines()[0], regions_file=None)):
        found = served.check_regions(given.get("regions"), "fstd", 128, 128, regions_file=given.get("regions_file"))
        expected = dicts[:1] if given.get("regions") == lines.splitlines()[0] else dicts
        assert [r.to_dict() for r in found] == expected, given
    assert served.check_regions("", "direct", 128, 128) is None  # none given: any method


def test_upscale_with_a_lora_and_a_tile_control_of_the_source(served, plain, tmp_path):
    import anysize

    src = tmp_path / "src.png"
    Image.fromarray(plain).save(src)
    kw = dict(scale=1, method="direct", strength=0.5, steps=2, seed=1)
    out = served.upscale(str(src), loras="sub/detail.safetensors:0.5", controls=[{"model": "edges", "scale": 0.5}], **kw)
    c = read_metadata(out.path)
    assert c["loras"][0]["file"] == "detail.safetensors" and c["controls"][0]["image"] == "(the source image)"
    ref = anysize.upscale(served.adapter, str(src), scale=1, method="direct", strength=0.5, steps=2, seed=1,
                          lora=[(str(served.lora_dirs[0] / "sub" / "detail.safetensors"), 0.5)], progress=False,
                          control=anysize.Control(served.controlnets["edges"].net, None, 0.5))
    assert (pixels(out.path) == api_pixels(ref)).all()


def test_upscale_with_regions_equals_the_api_and_checks_them_before_the_queue(served, plain, tmp_path, monkeypatch):
    import anysize
    from anysize.regions import parse_region

    src = tmp_path / "src.png"
    Image.fromarray(plain).save(src)
    kw = dict(method="fstd", strength=0.5, steps=2, seed=1, prompt=PROMPT)
    out = served.upscale(str(src), width=192, height=128, regions="0,0,96,128: a blue square", **kw)
    ref = anysize.upscale(served.adapter, str(src), size=(192, 128), progress=False,
                          regions=[parse_region("0,0,96,128: a blue square")], **kw)
    assert (pixels(out.path) == api_pixels(ref)).all()
    assert read_metadata(out.path)["regions"] == ref.config["regions"]
    def no_slot(*a, **k):
        raise AssertionError("bad regions reached the device queue")

    monkeypatch.setattr(served.queue, "slot", no_slot)
    for kwargs, message in [  # boxes in pixels of the enlarged image: 2x of 128 is 256
        (dict(scale=2, regions="0,0,64,300: x"), "box x=0, y=0, 64x300 reaches past the 256x256 canvas"),
        (dict(scale=1, method="direct", regions="0,0,64,64: x"), "method 'direct' takes no regional prompts"),
    ]:
        with pytest.raises(InvalidArgumentError) as e:
            served.upscale(str(src), **{**kw, **kwargs})
        assert message in str(e.value), str(e.value)


def test_compare_with_regions_says_which_methods_take_none(served):
    rows = served.compare(PROMPT, methods=["direct", "multidiffusion"], steps=2, seed=5,
                          regions="0,0,64,128: a blue square", loras=["style.safetensors"])
    assert rows[0].output is None and rows[0].error == (
        "method 'direct' takes no regional prompts; the methods that do: fstd, multidiffusion")
    c = read_metadata(rows[1].output.path)
    assert c["regions"][0]["prompt"] == "a blue square" and c["loras"][0]["scale"] == 1.0


def test_bad_loras_controls_and_regions_get_one_line_messages(served, toy, resources):
    from anysize.regions import parse_region

    image = str(resources / "edges.png")
    with pytest.raises(InvalidArgumentError) as cli_region:
        parse_region("0,0,64: x")  # what anysize generate --region '0,0,64: x' says
    cases = [
        (served, dict(loras=["nope.safetensors:1"]), "unknown LoRA 'nope.safetensors'; valid choices: style.safetensors, "
                                                     "sub/detail.safetensors"),
        (served, dict(loras=["style.safetensors:x"]), "unknown LoRA 'style.safetensors:x'"),
        (served, dict(loras=[{"path": "/etc"}]), "loras must be a list of 'name:scale' texts"),
        (served, dict(loras=[str(resources / "loras" / "style.safetensors")]), "unknown LoRA '/"),  # no paths
        (toy, dict(loras="style.safetensors"), "no LoRAs are offered here (start the app with --lora-dir DIR)"),
        (served, dict(regions="0,0,64,128: x", method="direct"),
         "method 'direct' takes no regional prompts; the methods that do: fstd, multidiffusion"),
        (served, dict(regions="0,0,64: x", method="fstd"), str(cli_region.value)),
        (served, dict(regions="0,0,200,128: x", method="fstd"), "reaches past the 128x128 canvas"),
        (served, dict(regions='[{"prompt": "x", "mask": "/etc/hosts"}]', method="fstd"),
         "a mask file is read only from a regions file on this machine"),
        (served, dict(regions='[{"prompt": "x", "box": [0, 0', method="fstd"), "the regions are not JSON"),
        (served, dict(controls=[{"model": "canny", "image": image}]), "unknown ControlNet 'canny'; valid choices: edges"),
        (toy, dict(controls=[{"model": "edges", "image": image}]), "no ControlNets are offered here (start the app with "
                                                                   "--controlnet [NAME=]PATH)"),
        (served, dict(controls=[{"model": "edges"}]), "ControlNet unit 1 (edges) has no control image: upload one"),
        (served, dict(controls=[{"model": "edges", "image": image, "start": 0.6, "end": 0.5}]),
         "control 1: start 0.6 must be below end 0.5"),
        (served, dict(controls=[{"model": "edges", "image": image, "scale": -1}]), "control 1 scale must be >= 0"),
        (served, dict(controls=[{"model": "edges", "image": image, "mode": "canny"}]),
         "a control mode goes with a Union ControlNet, not with ControlNetModel"),
        (served, dict(controls=[{"model": "edges", "image": image, "weight": 1}]), "unknown field 'weight'"),
        (served, dict(controls=[{"model": "edges", "image": str(resources / "loras" / "notes.txt")}]), "cannot read"),
        (served, dict(control_guess_mode=True), "guess mode goes with a ControlNet unit, and none is on"),
    ]
    for service, kwargs, message in cases:
        args = {"steps": 1, "method": "multidiffusion", **kwargs}
        with pytest.raises(AnysizeError) as e:
            service.generate(PROMPT, **args)
        assert message in str(e.value) and "\n" not in str(e.value), (kwargs, str(e.value))
    assert served.queue.stats() == {"running": 0, "waiting": 0, "room": 2}  # refused before the queue


def test_units_with_images_pair_the_apis_files_with_its_units():
    from anysize.app.handlers import units_with_images

    assert units_with_images([{"model": "a"}, {"model": "b"}], ["x.png"]) == [{"model": "a", "image": "x.png"},
                                                                               {"model": "b"}]
    assert units_with_images(None, None) == []
    with pytest.raises(InvalidArgumentError, match="its image goes in control_images"):
        units_with_images([{"model": "a", "image": "/etc/hosts"}], None)
    with pytest.raises(InvalidArgumentError, match="2 control_images for 1 ControlNet unit: give one image per unit"):
        units_with_images([{"model": "a"}], ["x.png", "y.png"])


def test_read_png_refills_loras_regions_and_controlnet_units(served, toy, resources):
    import json

    image = str(resources / "edges.png")
    out = served.generate(PROMPT, steps=2, seed=5, method="multidiffusion", loras="sub/detail.safetensors:0.5",
                          regions="0,0,64,128:a blue square",
                          controls=[{"model": "edges", "image": image, "scale": 0.25, "end": 0.5}])
    form = served.read_png(str(out.path))
    assert form["loras"] == ["sub/detail.safetensors:0.5"] and form["regions"] == "0,0,64,128:a blue square"
    assert form["controls"] == [{"model": "edges", "scale": 0.25, "start": 0.0, "end": 0.5, "mode": None}]
    assert form["control_guess_mode"] is False
    assert "the control image (edges.png) is not in the PNG: upload it again" in form["note"]
    # what the form then sends runs the same image
    again = served.generate(form["prompt"], steps=form["steps"], seed=form["seed"], method=form["method"],
                            loras=form["loras"], regions=form["regions"],
                            controls=[dict(form["controls"][0], image=image)])
    assert (pixels(again.path) == pixels(out.path)).all()
    # an app without those resources says what it cannot restore
    other = toy.read_png(str(out.path))
    assert other["loras"] == [] and other["controls"] == [] and other["regions"] == "0,0,64,128:a blue square"
    assert "LoRA detail.safetensors is in no --lora-dir folder of this app; left out" in other["note"]
    assert f"ControlNet {resources / 'edges'} is not one of this app's (--controlnet)" in other["note"]
    # regions with more than a box and a prompt come back as JSON, which the form reads as it is
    weighted = [{"prompt": "a blue square", "box": [0, 0, 64, 128], "weight": 2.0, "feather": 8, "bootstrap": 0.0}]
    c = read_metadata(out.path)
    c.update(regions=weighted, loras=[], controls=[])
    form = served._form_extras(c, [])
    assert json.loads(form["regions"]) == weighted
    assert [r.to_dict() for r in served.check_regions(form["regions"], "fstd", 128, 128)] == weighted


def test_a_lora_run_has_the_network_to_itself_through_the_queue(served, plain):
    """A LoRA run from the page waits for a plain run holding the network (a Python user of the same
    model outside the queue) instead of loading under it; the run queued behind it runs plain after."""
    done: dict[str, object] = {}

    def run(key, **kw):
        try:
            done[key] = served.generate(PROMPT, steps=2, seed=5, method="multidiffusion", **kw)
        except Exception as e:  # noqa: BLE001 - reported below
            done[key] = e

    lock = served.adapter.network_lock
    with lock.shared():
        with_lora = threading.Thread(target=run, args=("lora",), kwargs={"loras": ["style.safetensors:0.8"]})
        with_lora.start()
        deadline = time.monotonic() + 30
        while served.queue.stats()["running"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = threading.Thread(target=run, args=("plain",))
        after.start()
        while served.queue.stats()["waiting"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert served.queue.stats() == {"running": 1, "waiting": 1, "room": 2}
        assert with_lora.is_alive() and served.adapter.pipe.get_list_adapters() == {}  # not loaded under us
    with_lora.join(120)
    after.join(120)
    assert not isinstance(done["lora"], Exception) and not isinstance(done["plain"], Exception), done
    assert read_metadata(done["lora"].path)["loras"][0]["scale"] == 0.8
    assert (pixels(done["plain"].path) == plain).all()  # the LoRA was gone when the plain run ran
    assert lock.holders() == (0, False) and served.queue.stats()["running"] == 0
