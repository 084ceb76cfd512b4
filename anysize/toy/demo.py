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

import re
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


#: vertical distance between the lines of a text on the sheet (the default font is about 11 px tall)
LINE_H = 14


def _text_width(draw, text: str, font) -> float:
    """How far ``text`` reaches right of where it is drawn (the advance, or the ink where it overhangs)."""
    if not text:
        return 0.0
    return max(draw.textlength(text, font=font), draw.textbbox((0, 0), text, font=font)[2])


def _ellipsis(draw, font) -> str:
    try:
        draw.textlength("\u2026", font=font)
    except UnicodeEncodeError:  # Pillow's bitmap fallback font is latin-1 only
        return "..."
    return "\u2026"


def _cut(draw, word: str, font, max_width: float) -> str:
    """``word`` shortened with an ellipsis until it fits ``max_width`` (as much of the ellipsis as fits)."""
    if _text_width(draw, word, font) <= max_width:
        return word
    dots = _ellipsis(draw, font)
    for n in range(len(word) - 1, -1, -1):
        if _text_width(draw, word[:n] + dots, font) <= max_width:
            return word[:n] + dots
    while dots and _text_width(draw, dots, font) > max_width:
        dots = dots[:-1]
    return dots


def wrap_text(draw, text: str, font, max_width: float) -> list[str]:
    """``text`` in lines no wider than ``max_width`` pixels, broken between words; a word too wide
    for a line on its own is cut with an ellipsis. Every line, drawn at the same x, stays within
    ``max_width`` of it."""
    lines: list[str] = []
    line = space = ""
    for word in re.findall(r"\S+|\s+", text):
        if word.isspace():  # kept within a line (the title's double spaces), dropped at a break
            space = word
            continue
        joined = f"{line}{space}{word}" if line else word
        space = ""
        if _text_width(draw, joined, font) <= max_width:
            line = joined
            continue
        if line:
            lines.append(line)
        line = _cut(draw, word, font, max_width)
    if line:
        lines.append(line)
    return lines


def _draw_lines(draw, xy: tuple[int, int], lines: Sequence[str], **kwargs) -> None:
    x, y = xy
    for k, line in enumerate(lines):
        draw.text((x, y + LINE_H * k), line, **kwargs)


def render_sheet(result: DemoResult, *, title: str | None = None):
    """The labelled comparison sheet as a PIL image (images at their true pixel size).

    Every text is wrapped to the room it has (a caption to its column, a row's label and settings
    to the left margin, the title to the sheet) and the rows and headers are as tall as their
    tallest text needs, so no text runs into another or into an image."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    methods = list(dict.fromkeys(c.method for c in result.cells))
    columns = list(dict.fromkeys(c.column for c in result.cells))
    grid = {(c.method, c.column): c for c in result.cells}
    col_w = {col: max(grid[m, col].width for m in methods) for col in columns}
    row_h = {m: max(grid[m, col].height for col in columns) for m in methods}
    pad, label_w, head_h, text_h = 8, 110, 36, 18
    width = label_w + sum(col_w[c] + pad for c in columns) + pad
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def wrap(text: str, max_width: float) -> list[str]:
        return wrap_text(measure, text, font, max_width)

    title_lines = wrap(title, width - 2 * pad) if title else []
    title_h = 10 + LINE_H * len(title_lines) if title else 0
    heads = {}
    for col in columns:
        any_cell = grid[methods[0], col]
        heads[col] = (wrap(col, col_w[col]), wrap(f"{any_cell.width}x{any_cell.height}", col_w[col]))
    head_h = max([head_h] + [8 + LINE_H * (len(a) + len(b)) for a, b in heads.values()])
    shown_options = result.config.get("method_options", {})
    labels, captions, row_total = {}, {}, {}
    for m in methods:
        labels[m] = (wrap(m, label_w - 2 * pad),
                     [line for key, value in shown_options.get(m, {}).items()  # non-default settings
                      for line in wrap(f"{key}={value}", label_w - 2 * pad)])
        captions[m] = {col: wrap(_cell_caption(grid[m, col]), col_w[col]) for col in columns}
        need = max(grid[m, col].height + 3 + LINE_H * len(captions[m][col]) for col in columns)
        label_bottom = row_h[m] // 2 + LINE_H * (len(labels[m][0]) + len(labels[m][1]))
        row_total[m] = max(row_h[m] + text_h, need + 1, label_bottom)
    height = title_h + head_h + sum(row_total[m] + pad for m in methods) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        _draw_lines(draw, (pad, 6), title_lines, fill=(0, 0, 0), font=font)
    x = label_w
    for col in columns:
        name, size = heads[col]
        _draw_lines(draw, (x, title_h + 6), name, fill=(0, 0, 0), font=font)
        _draw_lines(draw, (x, title_h + 6 + LINE_H * len(name)), size, fill=(90, 90, 90), font=font)
        x += col_w[col] + pad
    y = title_h + head_h
    for m in methods:
        name, settings = labels[m]
        _draw_lines(draw, (pad, y + row_h[m] // 2), name, fill=(0, 0, 0), font=font)
        _draw_lines(draw, (pad, y + row_h[m] // 2 + LINE_H * len(name)), settings, fill=(90, 90, 90), font=font)
        x = label_w
        for col in columns:
            cell = grid[m, col]
            if cell.image is not None:
                sheet.paste(cell.image.convert("RGB"), (x, y))
            else:
                draw.rectangle([x, y, x + cell.width - 1, y + cell.height - 1], outline=(200, 200, 200))
                _draw_lines(draw, (x + 4, y + 4), wrap("cannot run at this size", cell.width - 8),
                            fill=(150, 0, 0), font=font)
            ok = cell.analysis.get("fidelity", False)
            _draw_lines(draw, (x, y + cell.height + 3), captions[m][col],
                        fill=(0, 110, 0) if ok else (170, 0, 0), font=font)
            x += col_w[col] + pad
        y += row_total[m] + pad
    return sheet
