"""Where the images of ``generate`` go, decided (and checked) before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError


def default_filename(method: str, width: int, height: int, seed: int) -> str:
    return f"anysize-{method}-{width}x{height}-s{seed}.png"


def check_out_given(out: str | None) -> None:
    """``--out ""`` (an unset variable, say) is refused, not read as the current directory."""
    if out is not None and not out.strip():
        raise OutputError("--out is empty; give a .png file or a directory (or leave --out out for the default name)")


def plan_outputs(out: str | None, n: int, method: str, size: tuple[int, int] | None, seed: int) -> list[Path] | None:
    """The file of each image, or None when the name needs the model's native size (known after loading)."""
    check_out_given(out)
    if n > 1:
        folder = Path(out) if out is not None else Path("anysize-out")
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--out {folder} is a file; with {n} prompts --out must be a directory")
        if not folder.exists() and folder.suffix.lower() == ".png":
            raise OutputError(f"with {n} prompts --out is a directory, not a .png file (got {folder})")
        width = max(3, len(str(n - 1)))
        return [folder / f"{i:0{width}d}-s{seed + i}.png" for i in range(n)]
    if out is not None and not (Path(out).is_dir() or out.endswith(("/", os.sep))):
        path = Path(out)
        if path.suffix.lower() != ".png":
            raise OutputError(f"--out {out} must end in .png (anysize writes PNG files with their parameters)")
        return [path]
    if size is None:
        return None
    name = default_filename(method, size[0], size[1], seed)
    return [Path(out) / name if out is not None else Path(name)]
