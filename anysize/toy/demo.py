"""``anysize demo``: every registered method at native size and beyond, on one labelled sheet.

Rows are the registered methods (a new method appears automatically), columns the sizes where the
seeds' failure shows: native, 2x wide, 2x tall and 4x area (2x each side, where direct generation
already duplicates the object). Each cell is analysed with :mod:`anysize.toy.composition` (how many
prompted objects, do colour and shape match), and the figures go under the image and into a JSON
file next to the sheet.

The sheet is the README's first command, so it must be quick: under a minute on 2 CPU cores
(``benchmarks/demo_time``). It uses :data:`DEMO_STEPS` steps; a method whose defaults are far
costlier than one whole-canvas call per step declares lighter settings
(:meth:`~anysize.methods.base.Method.demo_options`), which the sheet uses and prints under the row
name. One progress bar counts the cells (the runs inside it show none).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import AnysizeError, InvalidArgumentError

#: (label, height multiple, width multiple) of the native size
COLUMNS: tuple[tuple[str, int, int], ...] = (
    ("native", 1, 1),
    ("2x wide", 1, 2),
    ("2x tall", 2, 1),
    ("4x area", 2, 2),
)
DEFAULT_PROMPT = "a red triangle on a blue background"
#: steps of every cell unless asked otherwise (fewer if the model's default is lower): the sheet has
#: to fit in a minute on 2 CPU cores with every method's row (nine since rectifiedhr), and the toy
#: model loses little at 8 steps (native fidelity 97 % at 8 and at 10, 98 % at 20; 64 samples each)
DEMO_STEPS = 8


@dataclass
class DemoCell:
    method: str
    column: str
    width: int
    height: int
    image: Any = None  # PIL image, or None when the method cannot run at this size
    error: str | None = None
    seconds: float = 0.0
    network_calls: int = 0
    analysis: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "image"}


@dataclass
class DemoResult:
    cells: list[DemoCell]
    config: dict

    def records(self) -> dict:
        return {"config": self.config, "cells": [c.record() for c in self.cells]}


def demo_methods(adapter, methods: Sequence[str] | None = None) -> list[str]:
    """The registered methods that support the model's family (all of them by default)."""
    from .. import methods as registry

    names = registry.names()
    if methods:
        for m in methods:
            registry.get(m)  # unknown name -> error with the valid choices
        names = list(methods)
    fits = [n for n in names if not registry.get(n).families or adapter.family in registry.get(n).families]
    unfit = [n for n in names if n not in fits]
    if methods and unfit:  # a method asked for by name is refused, not left off the sheet unsaid
        need = "; ".join(f"method {n!r} supports {', '.join(registry.get(n).families)}" for n in unfit)
        raise InvalidArgumentError(f"{need}, not {adapter.family} (the demo's model)")
    return fits


def run_demo(
    adapter,
    *,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    methods: Sequence[str] | None = None,
    columns: Sequence[tuple[str, int, int]] = COLUMNS,
    progress: bool = True,
) -> DemoResult:
    """Generate every (method, size) cell of the sheet and analyse it.

    ``progress`` shows one bar over the cells (done / total, time left, the cell running)."""
    from tqdm.auto import tqdm

    from .. import api
    from .composition import analyse
    from ..methods import get as registry_get

    names = demo_methods(adapter, methods)
    steps = steps or min(adapter.default_steps, DEMO_STEPS)
    if not names:
        raise InvalidArgumentError(f"no registered method supports the {adapter.family} family")
    nh, nw = adapter.native_size
    cells = []
    options = {m: registry_get(m).demo_options(adapter) for m in names}
    plan = [(method, column) for method in names for column in columns]
    bar = tqdm(plan, desc="anysize demo", unit="cell", disable=not progress)
    for method, (label, mh, mw) in bar:
        cell = DemoCell(method, label, nw * mw, nh * mh)
        bar.set_postfix_str(f"{method} {cell.width}x{cell.height}")
        t = time.perf_counter()
        try:
            result = api.generate(adapter, prompt, width=cell.width, height=cell.height, method=method,
                                  steps=steps, guidance=guidance, seed=seed, progress=False,
                                  method_options=options[method] or None)
        except AnysizeError as e:  # e.g. a method that needs a larger canvas: shown, not fatal
            cell.error = str(e)
        else:
            cell.image = result.image
            cell.network_calls = result.network_calls
            cell.analysis = analyse(result.image, prompt, native_size=nh).to_dict()
        cell.seconds = round(time.perf_counter() - t, 2)
        cells.append(cell)
    config = {
        "prompt": prompt, "seed": seed, "steps": steps,
        "guidance": adapter.default_guidance if guidance is None else guidance,
        "model": getattr(adapter, "source", ""), "native_size": [nw, nh], "methods": names,
        "method_options": {m: o for m, o in options.items() if o},
        "columns": [list(c) for c in columns],
    }
    return DemoResult(cells, config)


def _cell_caption(cell: DemoCell) -> str:
    if cell.error is not None:
        return "n/a"
    a = cell.analysis
    n, others = a.get("n_objects", 0), a.get("n_other_objects", 0)
    if a.get("fidelity"):
        verdict = "ok"
    elif n > 1:
        verdict = "duplicated"
    elif n == 0:
        verdict = f"wrong colour ({others} other)" if others else "missing"
    else:
        verdict = "wrong shape"
    return f"{n} object{'s' if n != 1 else ''} - {verdict}, {cell.seconds:.0f}s"


def render_sheet(result: DemoResult, *, title: str | None = None):
    """The labelled comparison sheet as a PIL image (images at their true pixel size)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    methods = list(dict.fromkeys(c.method for c in result.cells))
    columns = list(dict.fromkeys(c.column for c in result.cells))
    grid = {(c.method, c.column): c for c in result.cells}
    col_w = {col: max(grid[m, col].width for m in methods) for col in columns}
    row_h = {m: max(grid[m, col].height for col in columns) for m in methods}
    pad, label_w, head_h, text_h = 8, 110, 36, 18
    title_h = 24 if title else 0
    width = label_w + sum(col_w[c] + pad for c in columns) + pad
    height = title_h + head_h + sum(row_h[m] + text_h + pad for m in methods) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 6), title, fill=(0, 0, 0), font=font)
    x = label_w
    for col in columns:
        any_cell = grid[methods[0], col]
        draw.text((x, title_h + 6), col, fill=(0, 0, 0), font=font)
        draw.text((x, title_h + 20), f"{any_cell.width}x{any_cell.height}", fill=(90, 90, 90), font=font)
        x += col_w[col] + pad
    y = title_h + head_h
    shown_options = result.config.get("method_options", {})
    for m in methods:
        draw.text((pad, y + row_h[m] // 2), m, fill=(0, 0, 0), font=font)
        for k, (key, value) in enumerate(shown_options.get(m, {}).items()):  # non-default settings
            draw.text((pad, y + row_h[m] // 2 + 14 * (k + 1)), f"{key}={value}", fill=(90, 90, 90), font=font)
        x = label_w
        for col in columns:
            cell = grid[m, col]
            if cell.image is not None:
                sheet.paste(cell.image.convert("RGB"), (x, y))
            else:
                draw.rectangle([x, y, x + cell.width - 1, y + cell.height - 1], outline=(200, 200, 200))
                draw.text((x + 4, y + 4), "cannot run at this size", fill=(150, 0, 0), font=font)
            ok = cell.analysis.get("fidelity", False)
            draw.text((x, y + cell.height + 3), _cell_caption(cell), fill=(0, 110, 0) if ok else (170, 0, 0), font=font)
            x += col_w[col] + pad
        y += row_h[m] + text_h + pad
    return sheet
