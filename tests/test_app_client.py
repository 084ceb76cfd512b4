"""The web UI's named API endpoints through ``gradio_client``, against an app served on 127.0.0.1.

One app per module (the embedded toy model, 2 steps at small sizes), launched on a free port of
127.0.0.1 with every other connection refused (``loopback_module``, ``loopback_only``): the
launch, the page and the runs fetch nothing from the internet. Bad input gets the command line's
one-line message as the client's error, and the app keeps serving.
"""

import urllib.error
import urllib.request
from contextlib import closing

import pytest
from _app_helpers import require
from PIL import Image

require("gradio", "the web UI's tests")
from gradio_client import Client, handle_file  # noqa: E402

from anysize import methods  # noqa: E402
from anysize.app import server  # noqa: E402
from anysize.app.handlers import Service  # noqa: E402
from anysize.output import read_metadata, read_parameters  # noqa: E402

PROMPT = "a green circle on a grey background"


@pytest.fixture(scope="module")
def app(loopback_module):
    service = Service.load(None, queue=4)
    running = server.launch(service, host="127.0.0.1", port=server.free_port())
    yield running
    running.close()
    service.close()


@pytest.fixture
def client(app, loopback_only):
    c = Client(app.url, verbose=False, download_files=True)
    yield c
    c.close()  # its heartbeat thread would outlive the test's loopback permission


def still_serving(app, client):
    with urllib.request.urlopen(app.url, timeout=30) as r:
        assert r.status == 200 and b"anysize" in r.read()
    png, info = client.predict(PROMPT, steps=1, api_name="/generate")
    assert info["config"]["steps"] == 1


def test_named_endpoints(client):
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(named) == {"/generate", "/compare", "/upscale", "/read_png"}
    # every parameter but the prompt (the image) may be left out
    required = [p["parameter_name"] for p in named["/generate"]["parameters"] if not p["parameter_has_default"]]
    assert required == ["prompt"]


def test_generate(client):
    png, info = client.predict(PROMPT, "blurry", width=256, height=128, method="multidiffusion",
                               options={"weighting": "gaussian"}, seed=12, steps=2, api_name="/generate")
    assert Image.open(png).size == (256, 128)
    meta = read_metadata(png)
    assert (meta["prompt"], meta["negative_prompt"], meta["seed"], meta["method"]) == (PROMPT, "blurry", 12, "multidiffusion")
    assert meta["method_options"]["weighting"] == "gaussian" and meta == info["config"]
    assert read_parameters(png).startswith(f"{PROMPT}\nNegative prompt: blurry\nSteps: 2, ")
    assert info["network_calls"] > 0 and info["seconds"] > 0 and info["metrics"]["prompt_colour"] == "green"


def test_compare(client):
    pngs, records = client.predict(PROMPT, width=128, height=128, methods=["direct", "fstd"], seed=4, steps=2,
                                   api_name="/compare")
    assert [r["method"] for r in records] == ["direct", "fstd"] and len(pngs) == 2
    for png, r in zip(pngs, records):
        meta = read_metadata(png)
        assert (meta["method"], meta["seed"], meta["prompt"]) == (r["method"], 4, PROMPT)
        assert r["error"] is None and r["seconds"] > 0 and r["network_calls"] > 0 and "n_objects" in r["metrics"]


def test_upscale_and_read_png(client):
    png, _ = client.predict(PROMPT, seed=2, steps=2, api_name="/generate")
    up, info = client.predict(handle_file(png), scale=2, strength=0.5, steps=2, method="fstd", api_name="/upscale")
    assert Image.open(up).size == (256, 256)
    assert info["config"]["upscale"]["source_size"] == [128, 128] and info["config"]["strength"] == 0.5
    exact, _ = client.predict(handle_file(png), width=192, height=128, strength=0.5, steps=2, api_name="/upscale")
    assert Image.open(exact).size == (192, 128)
    form = client.predict(handle_file(png), api_name="/read_png")
    assert (form["prompt"], form["seed"], form["steps"], form["width"], form["method"]) == (PROMPT, 2, 2, 128, "direct")


BAD = [  # (endpoint, arguments, what the one-line message says)
    ("/generate", {"prompt": "   "}, "no prompt given"),
    ("/generate", {"prompt": PROMPT, "width": 130, "height": 128}, "width 130 is not a multiple of 4"),
    ("/generate", {"prompt": PROMPT, "width": -8}, "width must be a positive number of pixels"),
    ("/generate", {"prompt": PROMPT, "method": "magic"}, "unknown method 'magic'; valid choices: " + ", ".join(methods.names())),
    ("/generate", {"prompt": PROMPT, "method": "fstd", "options": {"tile": 0}}, "fstd option tile must be"),
    ("/generate", {"prompt": PROMPT, "options": {"nope": 1}}, "nope"),
    ("/generate", {"prompt": PROMPT, "options": "tile=64"}, "method_options must be a dict"),
    ("/generate", {"prompt": PROMPT, "seed": -5}, "seed must be an integer in [0, "),
    ("/generate", {"prompt": PROMPT, "steps": 0}, "steps must be an integer >= 1, got 0"),
    ("/generate", {"prompt": PROMPT, "steps": 2.5}, "steps must be an integer, got 2.5"),
    ("/generate", {"prompt": PROMPT, "guidance": -1}, "guidance must be a number >= 0"),
    ("/generate", {"prompt": PROMPT, "scheduler": "warp"}, "unknown scheduler 'warp'; valid choices: "),
    ("/generate", {"prompt": PROMPT, "tiled_vae": "maybe"}, "unknown tiled-vae mode 'maybe'"),
    ("/compare", {"prompt": PROMPT, "methods": []}, "choose at least one method to compare"),
    ("/compare", {"prompt": PROMPT, "methods": ["direct", "magic"]}, "unknown method 'magic'"),
    ("/upscale", {"image": "TEXT", "scale": 2}, "cannot read"),
    ("/upscale", {"image": "PNG", "method": "asd", "scale": 2}, "cannot upscale an image; use one of: "),
    ("/upscale", {"image": "PNG", "scale": 0}, "scale must be a number > 0"),
    ("/upscale", {"image": "PNG", "scale": 2, "strength": 3}, "strength"),
    ("/read_png", {"png": "TEXT"}, "cannot read"),
    ("/read_png", {"png": "PLAIN"}, "has no generation parameters"),
]


@pytest.mark.parametrize("endpoint, kwargs, message", BAD, ids=[f"{e}-{m[:30]}" for e, _, m in BAD])
def test_bad_input_is_one_line_and_the_app_keeps_serving(client, tmp_path, endpoint, kwargs, message):
    from gradio_client.exceptions import AppError

    files = {"TEXT": tmp_path / "text.png", "PNG": tmp_path / "ok.png", "PLAIN": tmp_path / "plain.png"}
    files["TEXT"].write_text("not an image")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(files["PNG"])
    Image.new("RGB", (8, 8)).save(files["PLAIN"])
    kwargs = {k: handle_file(str(files[v])) if k in ("image", "png") else v for k, v in kwargs.items()}
    with pytest.raises(AppError) as e:
        client.predict(**kwargs, api_name=endpoint)
    text = str(e.value)
    assert message in text and "\n" not in text and "Traceback" not in text, text


def test_still_serving_after_bad_input(app, client):
    still_serving(app, client)


def test_out_of_memory_is_one_line_in_the_page_spelling_and_the_app_keeps_serving(app, client, monkeypatch):
    import torch
    from gradio_client.exceptions import AppError

    from anysize.methods.direct import Direct

    def refused(self, ctx, x_in):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB")

    monkeypatch.setattr(Direct, "predict", refused)
    with pytest.raises(AppError) as e:
        client.predict(PROMPT, steps=1, method="direct", api_name="/generate")
    text = str(e.value)
    assert "out of memory on cpu generating 1 128x128 image with direct (CUDA out of memory. Tried to allocate 30.00 GiB)" \
        in text and "try tiled VAE: fast, method: fstd (its memory is one window batch at any size), a smaller size" in text
    assert "\n" not in text and "--" not in text and "Traceback" not in text
    # in a comparison the method that ran out is a row that says so, the others run
    pngs, records = client.predict(PROMPT, methods=["direct", "fstd"], steps=1, api_name="/compare")
    assert [r["method"] for r in records] == ["direct", "fstd"] and len(pngs) == 1
    assert records[0]["error"].startswith("out of memory on cpu generating 1 128x128 image with direct (CUDA")
    assert "method: fstd" in records[0]["error"] and records[1]["error"] is None
    monkeypatch.undo()
    still_serving(app, client)


def test_password(app, loopback_only):
    """--auth: the page and the API ask for the password."""
    from gradio_client.exceptions import AuthenticationError

    running = server.launch(app.service, port=server.free_port(), auth=("alice", "s3cret"))
    try:
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            Client(running.url, verbose=False)
        with pytest.raises(urllib.error.HTTPError) as e:  # the API route itself, not only the client's check
            urllib.request.urlopen(running.url + "gradio_api/info", timeout=30)
        assert e.value.code == 401
        with closing(Client(running.url, auth=("alice", "s3cret"), verbose=False)) as c:
            png, info = c.predict(PROMPT, steps=1, api_name="/generate")
        assert info["config"]["prompt"] == PROMPT
    finally:
        running.close()


def test_host_and_auth_checks():
    assert server.host_warning("127.0.0.1", False) is None and server.host_warning("::1", False) is None
    warning = server.host_warning("0.0.0.0", False)
    assert "without a password" in warning and "--auth USER:PASS" in warning and server.AUTH_ENV in warning
    assert "unencrypted" in server.host_warning("192.168.1.5", True)
    assert server.parse_auth("bob:pa:ss") == ("bob", "pa:ss")
    for bad in ("bob", ":x", "bob:"):
        with pytest.raises(ValueError, match="must be USER:PASS"):
            server.parse_auth(bad)


def test_cli_refuses_before_loading(capsys, app, monkeypatch):
    from anysize import cli

    taken = int(app.url.rsplit(":", 1)[1].strip("/"))
    for args, message in [
        (["--queue", "-1"], "--queue must be an integer >= 0"),
        (["--auth", "nocolon"], "--auth must be USER:PASS"),
        (["--port", "70000"], "--port must be between 1 and 65535"),
        (["--port", str(taken)], f"port {taken} on 127.0.0.1 is in use"),
    ]:
        assert cli.main(["app", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    for args, message in [
        (["--lora-dir", "/nonexistent/loras"], "--lora-dir /nonexistent/loras: no such folder"),
        (["--controlnet", "a=/x", "--controlnet", "a=/y"], "--controlnet: the name 'a' is given twice"),
        (["--controlnet", "none=/x"], "'none' is the form's word for no ControlNet"),
    ]:
        assert cli.main(["app", *args]) == 2  # before the model loads
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    monkeypatch.setenv(server.AUTH_ENV, "alice")  # the password may come from the environment instead
    assert cli.main(["app"]) == 2
    assert f"{server.AUTH_ENV} must be USER:PASS" in capsys.readouterr().err


def test_a_registered_method_gets_its_controls_on_the_page(app, monkeypatch):
    """The page is built from the registry and the options metadata: a new method needs no UI code."""
    import dataclasses

    from anysize.app.ui import build
    from anysize.methods import METHODS
    from anysize.methods.base import MethodOptions
    from anysize.methods.direct import Direct
    from anysize.options import option

    @dataclasses.dataclass
    class DialOptions(MethodOptions):
        gain: float = option(1.0, "how hard to push", low=0.0, high=4.0)
        look: str = option("soft", "the look", choices=("soft", "hard"))

    class Dial(Direct):
        name = "test-dial"
        summary = "direct with a dial (test only)"
        Options = DialOptions

    monkeypatch.setitem(METHODS, Dial.name, Dial)
    demo = build(app.service)
    props = {c["props"].get("elem_id"): (c["type"], c["props"]) for c in demo.config["components"]}
    kind, gain = props["gen-opt-test-dial-gain"]
    assert kind == "slider" and (gain["minimum"], gain["maximum"], gain["value"]) == (0.0, 4.0, 1.0)
    assert gain["info"].startswith("how hard to push")
    kind, look = props["gen-opt-test-dial-look"]
    assert kind == "dropdown" and [c[1] for c in look["choices"]] == ["soft", "hard"]
    assert "test-dial" in [c[1] for c in props["method"][1]["choices"]]
    assert "test-dial" in [c[1] for c in props["compare-methods"][1]["choices"]]


# ------------------------------------------------------------------------------------------ LoRA, ControlNet, regions


@pytest.fixture(scope="module")
def extras_app(app, tmp_path_factory):
    """The same model served with a --lora-dir holding a toy LoRA and a toy ControlNet named "edges"."""
    import numpy as np

    from anysize.builders.controlnet import tiny_controlnet
    from anysize.builders.lora import tiny_lora

    root = tmp_path_factory.mktemp("client-resources")
    (root / "loras").mkdir()
    tiny_lora(app.service.adapter.pipe, root / "loras", name="style.safetensors")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(root / "edges.png")
    service = Service.serving(app.service.adapter, None, queue=2, lora_dirs=[root / "loras"],
                              controlnets=[("edges", tiny_controlnet(app.service.adapter.pipe))])
    running = server.launch(service, host="127.0.0.1", port=server.free_port())
    running.root = root
    yield running
    running.close()
    service.close()


def test_generate_with_a_lora_regions_and_a_controlnet_unit(extras_app, loopback_only):
    import numpy as np
    from gradio_client.exceptions import AppError

    edges = str(extras_app.root / "edges.png")
    with closing(Client(extras_app.url, verbose=False, download_files=True)) as c:
        png, info = c.predict(PROMPT, method="multidiffusion", seed=3, steps=2, loras=["style.safetensors:0.8"],
                              regions=["0,0,64,128: a blue square"], controls=[{"model": "edges", "scale": 0.5}],
                              control_images=[handle_file(edges)], api_name="/generate")
        meta = read_metadata(png)
        assert meta["loras"][0]["file"] == "style.safetensors" and meta["loras"][0]["scale"] == 0.8
        assert meta["regions"][0]["prompt"] == "a blue square" and meta["controls"][0]["scale"] == 0.5
        assert info["config"]["loras"][0]["lora_path"] == meta["loras"][0]["path"]  # no {"path": ...} for the client
        # the same image as the handler makes with the same input (which equals anysize.generate: test_app_handlers)
        same = extras_app.service.generate(PROMPT, method="multidiffusion", seed=3, steps=2,
                                           loras=["style.safetensors:0.8"], regions="0,0,64,128: a blue square",
                                           controls=[{"model": "edges", "scale": 0.5, "image": edges}])
        assert (np.asarray(Image.open(png)) == np.asarray(Image.open(same.path))).all()
        form = c.predict(handle_file(png), api_name="/read_png")
        assert form["loras"] == ["style.safetensors:0.8"] and form["regions"] == "0,0,64,128:a blue square"
        assert form["controls"][0]["model"] == "edges" and "upload it again" in form["note"]
        for kwargs, message in [
            (dict(loras=["other.safetensors"]), "unknown LoRA 'other.safetensors'; valid choices: style.safetensors"),
            (dict(regions="0,0,64,128: x"), "method 'direct' takes no regional prompts; the methods that do: "),
            (dict(controls=[{"model": "edges", "image": "/etc/hosts"}]), "its image goes in control_images"),
            (dict(controls=[{"model": "edges"}]), "ControlNet unit 1 (edges) has no control image: upload one"),
        ]:
            with pytest.raises(AppError) as e:
                c.predict(PROMPT, steps=1, api_name="/generate", **kwargs)
            assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
        # upscale: the unit without an image gets the source (a tile ControlNet)
        up, info = c.predict(handle_file(png), scale=1, method="direct", strength=0.5, steps=2,
                             loras=["style.safetensors:0.5"], controls=[{"model": "edges"}], api_name="/upscale")
        assert read_metadata(up)["controls"][0]["image"] == "(the source image)"
        assert read_metadata(up)["loras"][0]["scale"] == 0.5
        with pytest.raises(AppError) as e:  # /upscale takes regions too, checked before the queue
            c.predict(handle_file(png), scale=1, method="fstd", regions=["0,0,64,300: x"], api_name="/upscale")
        assert "box x=0, y=0, 64x300 reaches past the 128x128 canvas" in str(e.value), str(e.value)


def test_the_page_offers_the_declared_resources(extras_app, app):
    from anysize.app.ui import build

    props = {c["props"].get("elem_id"): (c["type"], c["props"]) for c in build(extras_app.service).config["components"]}
    assert [c[1] for c in props["gen-lora-pick"][1]["choices"]] == ["style.safetensors"]
    assert props["gen-lora-pick"][1]["multiselect"] and props["up-lora-pick"][0] == "dropdown"
    for unit in ("gen-cn1-model", "gen-cn2-model", "up-cn1-model"):
        assert [c[1] for c in props[unit][1]["choices"]] == ["none", "edges"]
    assert props["gen-cn1-mode"][1]["visible"] is False  # no Union ControlNet declared
    assert props["gen-regions"][1]["interactive"] is False  # the default method, direct, takes no regions
    assert props["up-regions"][1]["interactive"] is True  # the default refining method, fstd, takes regions
    bare = {c["props"].get("elem_id"): c["props"] for c in build(app.service).config["components"]}
    assert "start the app with --lora-dir DIR" in bare["gen-lora-pick"]["info"]


def test_cli_app_says_which_controlnet_cannot_load(capsys, tmp_path, loopback_only):
    from anysize import cli

    assert cli.main(["app", "--quiet", "--port", str(server.free_port()), "--lora-dir", str(tmp_path),
                     "--controlnet", f"edges={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert f"--controlnet edges: cannot load the ControlNet {tmp_path / 'nowhere'}" in err and err.count("\n") == 1, err
