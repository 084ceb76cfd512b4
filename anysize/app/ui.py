"""The page: a Gradio Blocks layout over :class:`anysize.app.handlers.Service`.

Above the tabs: the prompt, the sampling settings every tab shares (seed with a dice button, steps,
guidance, scheduler, tiled VAE), a status line and the Cancel button. Tabs:

* **Generate**: size presets and a custom W×H, the method and its options (one panel per method,
  built from its options metadata by :mod:`anysize.app.controls`), the image with live progress per
  stage, its PNG (the file the CLI writes) and its parameters; a PNG dropped on "load parameters"
  fills the form. The accordion "LoRA, ControlNet, regions" (:class:`_Extras`) picks LoRAs of the
  app's ``--lora-dir`` folders with a weight each, up to two ControlNet units of its
  ``--controlnet`` networks, and regional prompts (``X,Y,W,H: prompt`` lines or a JSON file).
* **Compare**: several methods on the same prompt, seed and size (each with the options its panel
  on the Generate tab holds), side by side with their seconds, network calls and, on the toy model,
  the composition figures; an image slider between any two. The Generate tab's LoRAs, ControlNet
  units and regions apply to every method.
* **Upscale**: an image in, a scale or an exact size, a method that refines, its options, the
  strength, and the noise level of an image-conditioned upscaler (sd-x4-upscaler); LoRAs,
  ControlNet units (a unit without an image gets the source image: a tile ControlNet) and regions
  (boxes in pixels of the enlarged image; not with the x4 upscaler).
* **History**: every image of this browser session.

Named API endpoints, for ``gradio_client`` and the "Use via API" page: ``/generate``,
``/compare``, ``/upscale``, ``/read_png``; the page's own events are private. Errors are the
library's one-line messages (the CLI's), shown as a notice; nothing shows a traceback.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

import gradio as gr

from .. import methods as registry
from ..errors import AnysizeError, Cancelled
from . import controls
from .handlers import (CONTROL_UNITS, HISTORY_LIMIT, NO_CONTROLNET, TILED_VAE_CHOICES, Busy, Service, metrics_text,
                       random_seed, units_with_images)

log = logging.getLogger("anysize.app")

CSS = """
#anysize-status { min-height: 1.6em; }
.anysize-options { border-left: 3px solid var(--color-accent-soft); padding-left: 8px; }
"""

#: what every heavy event shares: the device queue of the Service does the waiting and the busy
#: refusals, so Gradio starts every such event at once (concurrency_limit=None)
HEAVY = dict(concurrency_limit=None)
#: seconds the Cancel button waits for the runs it stopped before it says "cancelling…"
CANCEL_WAIT = 5.0


def _error(e: BaseException) -> gr.Error:
    """One line for the page: the library's message, or one line for an unexpected failure."""
    if isinstance(e, (AnysizeError, Busy)):  # out of memory: the ways out as the page names its controls
        text = e.for_app() if callable(getattr(e, "for_app", None)) else str(e)
        return gr.Error(text, title="anysize", print_exception=False)
    log.error("unexpected error in the app:\n%s", traceback.format_exc())
    first = (str(e).strip().splitlines() or [""])[0]
    return gr.Error(f"internal error: {type(e).__name__}: {first} (details in the server's log)", title="anysize",
                    print_exception=False)


def _json_safe(value):
    """``value`` for a JSON output: every object with a string ``path`` (a LoRA record of the config)
    has it as ``lora_path``, since gradio_client takes such an object for a file to download."""
    if isinstance(value, dict):
        return {("lora_path" if k == "path" and isinstance(v, str) else k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _cancelled(e: Cancelled) -> str:
    text = str(e)
    return text if text.startswith("cancelled") else f"cancelled: {text}"


def _progress_fn(progress: gr.Progress) -> Callable[[int | None, int | None, str], None]:
    def update(done, total, text):
        if done is None:
            progress(None, desc=text)
        else:
            progress((done, total), desc=text, unit="steps")

    return update


class _Panels:
    """One options panel per method (a column of its controls), from the options metadata."""

    def __init__(self, names: list[str], prefix: str, selected: str | None):
        self.names = names
        self.columns: dict[str, Any] = {}
        self.widgets: dict[str, dict[str, Any]] = {}
        self.specs = {n: registry.get(n).Options.specs() for n in names}
        for name in names:
            cls = registry.get(name)
            with gr.Column(visible=name == selected, elem_classes="anysize-options",
                           elem_id=f"{prefix}-options-{name}") as col:
                specs = self.specs[name]
                gr.Markdown(f"**{name}**: {cls.summary}" + ("" if specs else " · no options"))
                self.widgets[name] = {s.name: _render(controls.control_for(name, s), prefix) for s in specs}
            self.columns[name] = col

    @property
    def components(self) -> list[Any]:
        return [w for n in self.names for w in self.widgets[n].values()]

    def visibility(self, selected: str) -> list[Any]:
        return [gr.update(visible=n == selected) for n in self.names]

    def options(self, name: str, data: dict) -> dict[str, Any]:
        """The options of ``name`` its widgets set away from the defaults."""
        if name not in self.widgets:
            return {}
        raw = {k: data[w] for k, w in self.widgets[name].items()}
        return controls.options_from_widgets(name, self.specs[name], raw)

    def fill(self, name: str | None, options: dict[str, Any]) -> list[Any]:
        """Updates setting ``name``'s widgets to ``options`` (its defaults where absent); others unchanged."""
        out = []
        for n in self.names:
            for spec in self.specs[n]:
                if n != name:
                    out.append(gr.skip())
                else:
                    value = options.get(spec.name, None if spec.required else spec.default)
                    out.append(controls.to_widget(spec, value))
        return out


class _Extras:
    """The accordion "LoRA, ControlNet, regions" of a tab.

    LoRA: a multiselect of the files the ``--lora-dir`` folders hold (refreshed by its button and on
    page load) that writes ``name:weight`` lines into a textbox; the lines are what runs (edit a
    weight there). ControlNet: :data:`~anysize.app.handlers.CONTROL_UNITS` units, each a declared
    ControlNet (or none), its control image, scale, start and end (and a mode for Union
    ControlNets), and guess mode. Regions (not with the x4 upscaler): ``X,Y,W,H: prompt`` lines or JSON,
    and/or a JSON regions file, enabled for the methods that take regions.
    """

    def __init__(self, service: Service, prefix: str, *, regions: bool, method: str | None, upscale: bool = False):
        from ..models.control import UNION_MODES
        from ..regions import supporting_methods

        self.service, self.prefix, self.has_regions = service, prefix, regions
        self.supporting = supporting_methods()
        nets = service.controlnet_names()
        offered = service.loras()
        title = "LoRA, ControlNet, regions" if regions else "LoRA, ControlNet"
        with gr.Accordion(title, open=False, elem_id=f"{prefix}-extras"):
            with gr.Row(equal_height=True):
                self.lora_pick = gr.Dropdown(
                    offered, value=[], multiselect=True, label="add LoRAs", scale=4, elem_id=f"{prefix}-lora-pick",
                    info="the .safetensors files of the app's --lora-dir folders" if service.lora_dirs
                    else "none offered: start the app with --lora-dir DIR")
                self.lora_refresh = gr.Button("refresh", scale=0, min_width=90, elem_id=f"{prefix}-lora-refresh")
            self.lora_text = gr.Textbox(label="LoRAs: name:weight, one a line", lines=2, elem_id=f"{prefix}-loras",
                                        info="what runs; the weight after the last ':' (default 1)")
            self.units: list[dict[str, Any]] = []
            with gr.Group(visible=bool(nets)):
                for i in range(CONTROL_UNITS):
                    with gr.Row(equal_height=True):
                        unit = {
                            "model": gr.Dropdown([NO_CONTROLNET, *nets], value=NO_CONTROLNET, scale=2,
                                                 label=f"ControlNet unit {i + 1}", elem_id=f"{prefix}-cn{i + 1}-model"),
                            "image": gr.Image(type="filepath", sources=["upload"], height=140, scale=2,
                                              label="control image" + (" (empty: the source image)" if upscale else ""),
                                              elem_id=f"{prefix}-cn{i + 1}-image"),
                        }
                        with gr.Column(scale=3, min_width=200):
                            unit["scale"] = gr.Slider(0, 2, value=1, step=0.05, label="scale",
                                                      elem_id=f"{prefix}-cn{i + 1}-scale")
                            with gr.Row():
                                unit["start"] = gr.Slider(0, 1, value=0, step=0.01, label="start",
                                                          elem_id=f"{prefix}-cn{i + 1}-start")
                                unit["end"] = gr.Slider(0, 1, value=1, step=0.01, label="end",
                                                        elem_id=f"{prefix}-cn{i + 1}-end")
                            unit["mode"] = gr.Dropdown([NO_CONTROLNET, *UNION_MODES], value=NO_CONTROLNET,
                                                       label="control mode (Union ControlNets)",
                                                       visible=service.union_controlnets(),
                                                       elem_id=f"{prefix}-cn{i + 1}-mode")
                    self.units.append(unit)
                self.guess = gr.Checkbox(False, label="guess mode (diffusers' guess_mode)", elem_id=f"{prefix}-cn-guess")
            if not nets:
                gr.Markdown("No ControlNets offered: start the app with `--controlnet [NAME=]PATH_OR_HUB_ID`.")
            if regions:
                on = method in self.supporting
                self.region_text = gr.Textbox(label="regions: X,Y,W,H: prompt (px), one a line; or JSON", lines=3,
                                              elem_id=f"{prefix}-regions", interactive=on, info=self._region_info(on))
                self.region_file = gr.File(label="regions file (.json; masks inline as mask_png)", file_types=[".json"],
                                           type="filepath", elem_id=f"{prefix}-regions-file", interactive=on)

    def _region_info(self, on: bool) -> str:
        methods = ", ".join(self.supporting)
        return (f"the main prompt is the background; {methods} take regions" if on
                else f"regional prompts need one of: {methods}")

    @property
    def components(self) -> list[Any]:
        out = [self.lora_text, self.guess] + [w for u in self.units for w in u.values()]
        return out + ([self.region_text, self.region_file] if self.has_regions else [])

    def kwargs(self, data: dict) -> dict[str, Any]:
        """The handler's keywords of these widgets."""
        units = [{k: data[w] for k, w in u.items()} for u in self.units]
        out = dict(loras=data[self.lora_text], controls=units, control_guess_mode=bool(data[self.guess]))
        if self.has_regions:
            out.update(regions=data[self.region_text], regions_file=data[self.region_file])
        return out

    # ---------------------------------------------------------------- small events
    def _lines(self, text) -> list[tuple[str, str]]:
        """(LoRA name, line) of each line of the LoRA textbox."""
        from ..lora import parse_lora

        out = []
        for line in (text or "").splitlines():
            if line.strip():
                out.append((parse_lora(line.strip(), "LoRA").path, line.strip()))
        return out

    def wire(self, method=None) -> None:
        listed = lambda: self.service.loras()  # noqa: E731

        def picked(names, text):
            names, known = list(names or []), set(listed())
            lines = [(n, line) for n, line in self._lines(text) if n in names or n not in known]
            have = {n for n, _ in lines}
            return "\n".join([line for _, line in lines] + [f"{n}:1" for n in names if n not in have])

        def typed(text):
            known = listed()
            names = [n for n, _ in self._lines(text) if n in known]
            return gr.update(choices=known, value=list(dict.fromkeys(names)))

        self.lora_pick.input(picked, [self.lora_pick, self.lora_text], self.lora_text, queue=False,
                             api_visibility="private")
        self.lora_text.blur(typed, self.lora_text, self.lora_pick, queue=False, api_visibility="private")
        self.lora_refresh.click(self.refresh, self.lora_pick, self.lora_pick, queue=False, api_visibility="private")
        if method is not None and self.has_regions:
            def regions_for(name):
                on = name in self.supporting
                return gr.update(interactive=on, info=self._region_info(on)), gr.update(interactive=on)

            method.change(regions_for, method, [self.region_text, self.region_file], queue=False,
                          api_visibility="private")

    def refresh(self, current):
        known = self.service.loras()
        return gr.update(choices=known, value=[n for n in (current or []) if n in known])

    # ---------------------------------------------------------------- PNG in
    @property
    def fill_outputs(self) -> list[Any]:
        out = [self.lora_pick, self.lora_text, self.guess]
        out += [u[k] for u in self.units for k in ("model", "image", "scale", "start", "end", "mode")]
        return out + ([self.region_text] if self.has_regions else [])

    def fill(self, form: dict) -> list[Any]:
        """Updates of :attr:`fill_outputs` from a read PNG (unchanged where it says nothing: an A1111 PNG)."""
        keep = gr.skip()
        if "loras" not in form:
            return [keep] * len(self.fill_outputs)
        lines = form.get("loras") or []
        names = [n for n, _ in self._lines("\n".join(lines))]
        out = [gr.update(choices=self.service.loras(), value=list(dict.fromkeys(names))), "\n".join(lines),
               bool(form.get("control_guess_mode"))]
        units = list(form.get("controls") or [])
        for i in range(CONTROL_UNITS):
            u = units[i] if i < len(units) else None
            if u is None:
                out += [NO_CONTROLNET, keep, keep, keep, keep, keep]
            else:  # the control image is not in the PNG: cleared, to be uploaded again (the status says so)
                out += [u["model"], None, u.get("scale", 1.0), u.get("start", 0.0), u.get("end", 1.0),
                        u.get("mode") or NO_CONTROLNET]
        if self.has_regions:
            out.append(form.get("regions") or "")
        return out


def _render(c: controls.Control, prefix: str):
    common = dict(label=c.label, elem_id=c.elem_id(prefix))
    if c.widget == "checkbox":
        return gr.Checkbox(value=c.value, info=c.info, **common)
    if c.widget == "dropdown":
        return gr.Dropdown(choices=list(c.choices), value=c.value, info=c.info, **common)
    if c.widget == "slider":
        return gr.Slider(minimum=c.minimum, maximum=c.maximum, step=c.step, value=c.value, info=c.info, **common)
    if c.widget == "number":
        # no minimum/maximum here: the method's own check gives the message (the CLI's), not Gradio's
        return gr.Number(value=c.value, info=c.info, step=1 if c.integer else None, **common)
    return gr.Textbox(value=c.value, info=c.info, **common)


def build(service: Service) -> gr.Blocks:
    """The page and its endpoints for ``service``."""
    nh, nw = service.adapter.native_size
    presets = service.size_presets()
    methods = service.methods()
    refining = service.refining_methods()
    conditioned = not service.generates
    default_method = "direct" if "direct" in methods else methods[0]

    with gr.Blocks(title="anysize", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(f"## anysize — any size, any method\n{service.description()}", elem_id="anysize-header")
        job = gr.State(None)
        history = gr.State([])
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(label="prompt", lines=2, scale=4, elem_id="prompt",
                                value="a red triangle on a blue background" if service.toy else "")
            negative = gr.Textbox(label="negative prompt", lines=2, scale=3, elem_id="negative")
        with gr.Row(equal_height=True):
            seed = gr.Number(label="seed", value=0, scale=2, elem_id="seed", step=1)
            dice = gr.Button("random", scale=0, min_width=90, elem_id="dice")
            steps = gr.Number(label="steps", value=service.adapter.default_steps, scale=1, elem_id="steps", step=1)
            guidance = gr.Number(label="guidance", value=service.adapter.default_guidance, scale=1, elem_id="guidance")
            scheduler = gr.Dropdown(service.schedulers(), value="default", label="scheduler", scale=2,
                                    elem_id="scheduler")
            tiled = gr.Dropdown(list(TILED_VAE_CHOICES), value="auto", label="tiled VAE", scale=1, elem_id="tiled-vae",
                                info="auto: tiled above 2048×2048 px")
        with gr.Row(equal_height=True):
            status = gr.Markdown("ready", elem_id="anysize-status")
            cancel = gr.Button("Cancel", variant="stop", scale=0, min_width=120, elem_id="cancel")

        with gr.Tabs():
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        preset = gr.Dropdown([p.label for p in presets] + ["custom"], value=presets[0].label,
                                             label="size", elem_id="size-preset")
                        with gr.Row():
                            width = gr.Number(label="width (px)", value=nw, step=service.factor, elem_id="width",
                                              info=f"a multiple of {service.factor}")
                            height = gr.Number(label="height (px)", value=nh, step=service.factor, elem_id="height",
                                               info=f"a multiple of {service.factor}")
                        method = gr.Dropdown(methods, value=default_method, label="method", elem_id="method")
                        panels = _Panels(methods, "gen", default_method)
                        extras = _Extras(service, "gen", regions=True, method=default_method)
                        png_in = gr.File(label="load parameters: drop a PNG made by anysize (or with A1111 parameters)",
                                         file_types=[".png"], type="filepath", elem_id="png-in")
                    with gr.Column(scale=1):
                        generate = gr.Button("Generate", variant="primary", elem_id="generate",
                                             interactive=not conditioned)
                        image = gr.Image(label="image", type="filepath", format="png", interactive=False,
                                         elem_id="image")
                        png_out = gr.File(label="PNG (with its parameters, as the CLI writes it)", interactive=False,
                                          elem_id="png-out")
                        with gr.Accordion("parameters", open=False):
                            info = gr.JSON(label="parameters", elem_id="info")

            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                gr.Markdown("The same prompt, seed, size and sampling settings for every method; each with the options "
                            "its panel on the Generate tab holds, and the LoRAs, ControlNet units and regions set there "
                            "(a method that takes no regions gets a row saying so).")
                choose = gr.CheckboxGroup(methods, value=[m for m in ("direct", "multidiffusion") if m in methods],
                                          label="methods", elem_id="compare-methods")
                compare = gr.Button("Compare", variant="primary", elem_id="compare", interactive=not conditioned)
                gallery = gr.Gallery(label="results", columns=4, object_fit="contain", height="auto",
                                     elem_id="compare-gallery")
                table = gr.Dataframe(headers=["method", "seconds", "network calls", "toy metrics", "note"],
                                     interactive=False, elem_id="compare-table")
                with gr.Row():
                    left = gr.Dropdown([], label="slider: left", elem_id="slider-left")
                    right = gr.Dropdown([], label="slider: right", elem_id="slider-right")
                slider = gr.ImageSlider(label="left vs right", type="filepath", elem_id="compare-slider")
                compared = gr.State({})

            with gr.Tab("Upscale", id="upscale", elem_id="tab-upscale"):
                with gr.Row():
                    with gr.Column(scale=1):
                        up_in = gr.File(label="image to enlarge", type="filepath", elem_id="upscale-in")
                        up_preview = gr.Image(label="input", type="filepath", interactive=False, height=200)
                        target = gr.Radio(["scale", "size"], value="scale", label="target", elem_id="upscale-target")
                        with gr.Row():
                            up_scale = gr.Number(label="scale", value=2, elem_id="upscale-scale")
                            up_w = gr.Number(label="width (px)", value=2 * nw, step=service.factor, elem_id="upscale-w")
                            up_h = gr.Number(label="height (px)", value=2 * nh, step=service.factor, elem_id="upscale-h")
                        up_method = gr.Dropdown(refining, value="fstd" if "fstd" in refining else refining[0],
                                                label="method", elem_id="upscale-method")
                        up_panels = _Panels(refining, "up", up_method.value)
                        up_extras = _Extras(service, "up", regions=not conditioned, method=up_method.value, upscale=True)
                        strength = gr.Slider(0.01, 1.0, value=1.0 if conditioned else 0.4, step=0.01,
                                             label="strength", elem_id="upscale-strength",
                                             info="the fraction of the schedule re-run: low keeps the image")
                        max_noise = int(getattr(service.adapter, "max_noise_level", 350))
                        noise = gr.Slider(0, max_noise, value=getattr(service.adapter, "default_noise_level", 20),
                                          step=1, label="noise level (x4 upscaler)", visible=conditioned,
                                          elem_id="upscale-noise")
                        up_prompt = gr.Textbox(label="upscale prompt", elem_id="upscale-prompt",
                                               info="best generic (\"high quality, detailed\"): object words repeat "
                                                    "in every tile")
                    with gr.Column(scale=1):
                        upscale = gr.Button("Upscale", variant="primary", elem_id="upscale")
                        up_image = gr.Image(label="enlarged", type="filepath", format="png", interactive=False,
                                            elem_id="upscale-image")
                        up_png = gr.File(label="PNG (with its parameters)", interactive=False, elem_id="upscale-png")
                        with gr.Accordion("parameters", open=False):
                            up_info = gr.JSON(label="parameters")

            with gr.Tab("History", id="history", elem_id="tab-history"):
                history_gallery = gr.Gallery(label="this session's images", columns=6, height="auto",
                                             elem_id="history")

        # ------------------------------------------------------------------ small events (no queue)
        dice.click(random_seed, None, seed, queue=False, api_visibility="private")
        method.change(panels.visibility, method, list(panels.columns.values()), queue=False,
                      api_visibility="private")
        up_method.change(up_panels.visibility, up_method, list(up_panels.columns.values()), queue=False,
                         api_visibility="private")
        extras.wire(method)
        up_extras.wire(up_method)

        def listed(a, b):  # the LoRA lists as the folders hold them now, whenever the page loads
            return extras.refresh(a), up_extras.refresh(b)

        demo.load(listed, [extras.lora_pick, up_extras.lora_pick], [extras.lora_pick, up_extras.lora_pick],
                  queue=False, api_visibility="private")

        sizes = {p.label: (p.width, p.height) for p in presets}

        def pick_size(label):
            if label not in sizes:
                return gr.skip(), gr.skip()
            return sizes[label]

        preset.input(pick_size, preset, [width, height], queue=False, api_visibility="private")

        def typed_size(w, h):
            try:
                return service.preset_for(int(w), int(h))
            except (TypeError, ValueError):
                return "custom"

        width.input(typed_size, [width, height], preset, queue=False, api_visibility="private")
        height.input(typed_size, [width, height], preset, queue=False, api_visibility="private")
        up_in.change(lambda p: p, up_in, up_preview, queue=False, api_visibility="private")

        def start(request: gr.Request):
            return service.jobs.start(request.session_hash if request else "")

        def stop(request: gr.Request):
            session = request.session_hash if request else ""
            if not service.jobs.cancel(session):
                return "nothing to cancel"
            # stopped within a step or so: the run's own status ("cancelled before step k/n") stands
            return gr.skip() if service.jobs.wait_finished(session, CANCEL_WAIT) else "cancelling…"

        cancel.click(stop, None, status, queue=False, api_visibility="private")
        def closed(request: gr.Request):  # the tab was closed: stop its runs
            if request is not None:
                service.jobs.cancel(request.session_hash)

        demo.unload(closed)

        # ------------------------------------------------------------------ the runs
        def remember(hist, outputs):
            hist = list(hist or []) + [(str(o.path), o.caption) for o in outputs]
            return hist[-HISTORY_LIMIT:]

        def sampling(data):
            return dict(seed=data[seed], steps=data[steps], guidance=data[guidance], scheduler=data[scheduler],
                        tiled_vae=data[tiled])

        def run(job_id, work):
            """``work(cancel_event)`` inside the page's conventions: errors as notices, Cancel as status."""
            event = service.jobs.event(job_id)
            try:
                return work(event)
            except Cancelled as e:
                return None, f"{_cancelled(e)} · ready"  # the device is free for the next run
            except Exception as e:  # noqa: BLE001 - every failure is one line in the page
                raise _error(e) from None
            finally:
                service.jobs.finish(job_id)

        gen_inputs = {job, history, prompt, negative, width, height, method, seed, steps, guidance, scheduler, tiled,
                      *panels.components, *extras.components}

        def on_generate(data, progress=gr.Progress()):
            def work(event):
                out = service.generate(
                    data[prompt], data[negative], width=data[width], height=data[height], method=data[method],
                    options=panels.options(data[method], data), progress=_progress_fn(progress), cancel=event,
                    **sampling(data), **extras.kwargs(data))
                return out, f"done: {out.caption}"

            out, text = run(data[job], work)
            if out is None:
                return gr.skip(), gr.skip(), gr.skip(), text, gr.skip(), gr.skip()
            hist = remember(data[history], [out])
            return str(out.path), str(out.path), _json_safe(out.summary()), text, hist, hist

        generate.click(start, None, job, queue=False, api_visibility="private").then(
            on_generate, gen_inputs, [image, png_out, info, status, history, history_gallery],
            api_visibility="private", **HEAVY)

        cmp_inputs = {job, history, choose, prompt, negative, width, height, seed, steps, guidance, scheduler, tiled,
                      *panels.components, *extras.components}

        def on_compare(data, progress=gr.Progress()):
            def work(event):
                chosen = list(data[choose] or [])
                opts = {m: panels.options(m, data) for m in chosen}
                rows = service.compare(data[prompt], data[negative], methods=chosen, width=data[width],
                                       height=data[height], options=opts, progress=_progress_fn(progress),
                                       cancel=event, **sampling(data), **extras.kwargs(data))
                return rows, f"compared {len(rows)} method{'s' if len(rows) != 1 else ''}"

            rows, text = run(data[job], work)
            if rows is None:
                return (gr.skip(),) * 5 + (text,) + (gr.skip(),) * 3
            done = [r for r in rows if r.output is not None]
            pics = [(str(r.output.path), r.output.caption) for r in done]
            table_rows = [[r.method, round(r.output.seconds, 2) if r.output else None,
                           r.output.network_calls if r.output else None,
                           metrics_text(r.output.metrics) if r.output else "", r.error or ""] for r in rows]
            paths = {r.method: str(r.output.path) for r in done}
            names = list(paths)
            a, b = (names + names)[:2] if names else (None, None)
            hist = remember(data[history], [r.output for r in done])
            return (pics, table_rows, gr.update(choices=names, value=a), gr.update(choices=names, value=b),
                    paths, text, (paths[a], paths[b]) if names else None, hist, hist)

        compare.click(start, None, job, queue=False, api_visibility="private").then(
            on_compare, cmp_inputs,
            [gallery, table, left, right, compared, status, slider, history, history_gallery],
            api_visibility="private", **HEAVY)

        def slide(paths, a, b):
            if not paths or a not in paths or b not in paths:
                return gr.skip()
            return paths[a], paths[b]

        left.input(slide, [compared, left, right], slider, queue=False, api_visibility="private")
        right.input(slide, [compared, left, right], slider, queue=False, api_visibility="private")

        up_inputs = {job, history, up_in, target, up_scale, up_w, up_h, up_method, strength, noise, up_prompt, negative,
                     seed, steps, guidance, scheduler, tiled, *up_panels.components, *up_extras.components}

        def on_upscale(data, progress=gr.Progress()):
            def work(event):
                by_scale = data[target] == "scale"
                out = service.upscale(
                    data[up_in], scale=data[up_scale] if by_scale else None,
                    width=None if by_scale else data[up_w], height=None if by_scale else data[up_h],
                    method=data[up_method], options=up_panels.options(data[up_method], data),
                    strength=data[strength], noise_level=data[noise] if conditioned else None,
                    prompt=data[up_prompt], negative_prompt=data[negative] or None,
                    progress=_progress_fn(progress), cancel=event, **sampling(data), **up_extras.kwargs(data))
                return out, f"done: {out.caption}"

            out, text = run(data[job], work)
            if out is None:
                return gr.skip(), gr.skip(), gr.skip(), text, gr.skip(), gr.skip()
            hist = remember(data[history], [out])
            return str(out.path), str(out.path), _json_safe(out.summary()), text, hist, hist

        upscale.click(start, None, job, queue=False, api_visibility="private").then(
            on_upscale, up_inputs, [up_image, up_png, up_info, status, history, history_gallery],
            api_visibility="private", **HEAVY)

        # ------------------------------------------------------------------ PNG in: fill the form
        fill_outputs = [prompt, negative, preset, width, height, seed, steps, guidance, scheduler, method,
                        *panels.components, *extras.fill_outputs, status]

        def on_png(path):
            if not path:
                return (gr.skip(),) * (len(fill_outputs) - 1) + ("ready",)
            try:
                form = service.read_png(path)
            except Exception as e:  # noqa: BLE001
                raise _error(e) from None
            keep = gr.skip()
            w, h = form.get("width"), form.get("height")
            name = form.get("method")
            values = [form.get("prompt", keep), form.get("negative_prompt", keep),
                      service.preset_for(w, h) if w and h else keep, w or keep, h or keep]
            values += [form[k] if form.get(k) is not None else keep for k in ("seed", "steps", "guidance", "scheduler")]
            values.append(name if name else keep)
            values += panels.fill(name, form.get("options") or {}) if name else [keep] * len(panels.components)
            values += extras.fill(form)
            values.append(form["note"])
            return tuple(values)

        png_in.upload(on_png, png_in, fill_outputs, queue=False, api_visibility="private")

        # ------------------------------------------------------------------ named API endpoints
        with gr.Column(visible=False):
            a_prompt = gr.Textbox(label="prompt")
            a_negative = gr.Textbox(label="negative_prompt")
            a_width = gr.Number(label="width", value=None)
            a_height = gr.Number(label="height", value=None)
            a_method = gr.Textbox(label="method", value=default_method)
            a_methods = gr.JSON(label="methods", value=None)
            a_options = gr.JSON(label="options", value=None)
            a_seed = gr.Number(label="seed", value=0)
            a_steps = gr.Number(label="steps", value=None)
            a_guidance = gr.Number(label="guidance", value=None)
            a_scheduler = gr.Textbox(label="scheduler", value="default")
            a_tiled = gr.Textbox(label="tiled_vae", value="auto")
            a_image = gr.File(label="image", type="filepath")
            a_scale = gr.Number(label="scale", value=None)
            a_strength = gr.Number(label="strength", value=None)
            a_noise = gr.Number(label="noise_level", value=None)
            a_png = gr.File(label="png", interactive=False)
            a_pngs = gr.File(label="pngs", file_count="multiple", interactive=False)
            a_info = gr.JSON(label="info")
            a_up_method = gr.Textbox(label="method", value="fstd" if "fstd" in refining else refining[0])
            a_loras = gr.JSON(label="loras", value=None)
            a_regions = gr.JSON(label="regions", value=None)
            a_controls = gr.JSON(label="controls", value=None)
            a_control_images = gr.File(label="control_images", file_count="multiple", type="filepath")
            a_guess = gr.Checkbox(label="control_guess_mode", value=False)
            a_buttons = [gr.Button(visible=False) for _ in range(4)]

        def api_call(work):
            try:
                return work()
            except Cancelled as e:
                raise gr.Error(_cancelled(e), title="anysize", print_exception=False) from None
            except Exception as e:  # noqa: BLE001
                raise _error(e) from None

        # every parameter but the prompt (the image) may be left out: None is "the model's" / "none"
        # loras: "name:scale" texts (the --lora-dir files' names); regions: "X,Y,W,H:prompt" texts or JSON region
        # objects (masks inline as mask_png); controls: ControlNet units {"model": NAME, "scale", "start", "end",
        # "mode"}, the i-th file of control_images the i-th unit's image
        def api_generate(prompt, negative_prompt=None, width=None, height=None, method="direct", options=None, seed=0,
                         steps=None, guidance=None, scheduler="default", tiled_vae="auto", loras=None, regions=None,
                         controls=None, control_images=None, control_guess_mode=False, progress=gr.Progress()):
            """One image; returns its PNG (A1111 parameters + anysize JSON) and its figures."""
            def work():
                out = service.generate(prompt, negative_prompt or None, width=width, height=height, method=method,
                                       options=options, seed=seed, steps=steps, guidance=guidance,
                                       scheduler=scheduler, tiled_vae=tiled_vae, progress=_progress_fn(progress),
                                       loras=loras, regions=regions, controls=units_with_images(controls, control_images),
                                       control_guess_mode=control_guess_mode)
                return str(out.path), _json_safe(out.summary())
            return api_call(work)

        extra_inputs = [a_loras, a_regions, a_controls, a_control_images, a_guess]
        a_buttons[0].click(api_generate, [a_prompt, a_negative, a_width, a_height, a_method, a_options, a_seed,
                                          a_steps, a_guidance, a_scheduler, a_tiled, *extra_inputs], [a_png, a_info],
                           api_name="generate", **HEAVY)

        def api_compare(prompt, negative_prompt=None, width=None, height=None, methods=None, options=None, seed=0,
                        steps=None, guidance=None, scheduler="default", tiled_vae="auto", loras=None, regions=None,
                        controls=None, control_images=None, control_guess_mode=False, progress=gr.Progress()):
            """Several methods on the same prompt, seed and size; returns their PNGs and one record each."""
            def work():
                rows = service.compare(prompt, negative_prompt or None, methods=methods, width=width, height=height,
                                       options=options, seed=seed, steps=steps, guidance=guidance,
                                       scheduler=scheduler, tiled_vae=tiled_vae, progress=_progress_fn(progress),
                                       loras=loras, regions=regions, controls=units_with_images(controls, control_images),
                                       control_guess_mode=control_guess_mode)
                return [str(r.output.path) for r in rows if r.output], _json_safe([r.record() for r in rows])
            return api_call(work)

        a_buttons[1].click(api_compare, [a_prompt, a_negative, a_width, a_height, a_methods, a_options, a_seed,
                                         a_steps, a_guidance, a_scheduler, a_tiled, *extra_inputs], [a_pngs, a_info],
                           api_name="compare", **HEAVY)

        def api_upscale(image, scale=None, width=None, height=None, method="fstd", options=None, strength=None,
                        noise_level=None, prompt=None, negative_prompt=None, seed=0, steps=None, guidance=None,
                        scheduler="default", tiled_vae="auto", loras=None, regions=None, controls=None,
                        control_images=None, control_guess_mode=False, progress=gr.Progress()):
            """Enlarge an image by a scale or to width x height; returns the PNG and its figures."""
            def work():
                out = service.upscale(image, scale=scale, width=width, height=height, method=method or "fstd",
                                      options=options, strength=strength, noise_level=noise_level,
                                      prompt=prompt or "", negative_prompt=negative_prompt or None, seed=seed,
                                      steps=steps, guidance=guidance, scheduler=scheduler, tiled_vae=tiled_vae,
                                      progress=_progress_fn(progress), loras=loras, regions=regions,
                                      controls=units_with_images(controls, control_images),
                                      control_guess_mode=control_guess_mode)
                return str(out.path), _json_safe(out.summary())
            return api_call(work)

        a_buttons[2].click(api_upscale, [a_image, a_scale, a_width, a_height, a_up_method, a_options, a_strength,
                                         a_noise, a_prompt, a_negative, a_seed, a_steps, a_guidance, a_scheduler,
                                         a_tiled, *extra_inputs], [a_png, a_info],
                           api_name="upscale", **HEAVY)

        def api_read_png(png):
            """The generation parameters a PNG carries, as the form fields they fill."""
            return api_call(lambda: service.read_png(png))

        a_buttons[3].click(api_read_png, [a_image], [a_info], api_name="read_png", concurrency_limit=None)
    return demo


__all__ = ["build"]
