"""Pictures of evaluation runs: a labelled sample grid per run, and quality vs time across runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from ..errors import InvalidArgumentError

__all__ = ["load_runs", "quality_time_scatter", "sample_grid"]

#: metrics where lower is better (the scatter's y axis says so)
LOWER_IS_BETTER = {"fid_r", "kid_r", "fid_c", "kid_c", "fid_b", "kid_b"}


def sample_grid(paths: Sequence[str | Path], labels: Sequence[str], *, cols: int = 4, cell: int = 192) -> Image.Image:
    """The images, each fitted into a ``cell`` px square (aspect kept), in rows of ``cols``, labelled."""
    if not paths:
        raise InvalidArgumentError("no images for the sample grid")
    cols = min(cols, len(paths))
    rows = math.ceil(len(paths) / cols)
    label_h = 14
    sheet = Image.new("RGB", (cols * cell, rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (p, label) in enumerate(zip(paths, labels)):
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        x, y = (i % cols) * cell, (i // cols) * (cell + label_h)
        sheet.paste(im, (x + (cell - im.width) // 2, y + label_h + (cell - im.height) // 2))
        draw.text((x + 3, y + 1), str(label)[:30], fill="black")
    return sheet


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """``metrics.json`` payloads from run folders or the files themselves."""
    runs = []
    for p in paths:
        p = Path(p)
        f = p / "metrics.json" if p.is_dir() else p
        try:
            runs.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise InvalidArgumentError(f"cannot read evaluation results {f}: {getattr(e, 'strerror', None) or e}") from None
    if not runs:
        raise InvalidArgumentError("no evaluation runs given")
    return runs


def quality_time_scatter(runs: Sequence[dict[str, Any]], metric: str):
    """A matplotlib figure: ``metric`` against seconds per image, one labelled point per run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidArgumentError("the scatter plot needs matplotlib: pip install 'anysize[eval]'") from None
    points = []
    for r in runs:
        y = r.get("metrics", {}).get(metric)
        x = r.get("speed", {}).get("seconds_per_image")
        if y is None or x is None:
            continue
        c = r.get("config", {})
        points.append((x, y, f"{c.get('method')} {c.get('width')}x{c.get('height')}"))
    if not points:
        have = sorted({k for r in runs for k in r.get("metrics", {})})
        raise InvalidArgumentError(
            f"no run has both {metric} and a generation time (runs scored with --from-dir have no time); "
            f"metrics present: {', '.join(have) or 'none'}"
        )
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    for x, y, label in points:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("seconds per image")
    better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    ax.set_ylabel(f"{metric} ({better})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
