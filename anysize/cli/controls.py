"""``--controlnet`` and its companions, shared by ``anysize generate`` and ``anysize upscale``.

Each flag is repeatable; the i-th ``--control-image`` / ``--control-scale`` / ``--control-start`` /
``--control-end`` / ``--control-mode`` belongs to the i-th ``--controlnet``. A companion flag is
given for every ControlNet or for none (then the default holds for all).
"""

from __future__ import annotations

import argparse
import os

from ..errors import InvalidArgumentError


def add_control_options(p: argparse.ArgumentParser, *, upscale: bool = False) -> None:
    g = p.add_argument_group("ControlNet (repeatable: the i-th of each flag belongs to the i-th --controlnet)")
    g.add_argument("--controlnet", metavar="PATH", action="append", default=[],
                   help="a diffusers ControlNet folder or hub id of the model's family")
    image_help = ("its control image (default: the source image, e.g. for a tile ControlNet)" if upscale
                  else "its control image (one per --controlnet)")
    g.add_argument("--control-image", metavar="IMG", action="append", default=[], help=image_help)
    g.add_argument("--control-scale", metavar="S", type=float, action="append", default=[],
                   help="its conditioning scale, >= 0 (default: 1)")
    g.add_argument("--control-start", metavar="A", type=float, action="append", default=[],
                   help="the fraction of the steps where it starts acting (default: 0)")
    g.add_argument("--control-end", metavar="B", type=float, action="append", default=[],
                   help="the fraction of the steps where it stops acting (default: 1)")
    g.add_argument("--control-mode", metavar="MODE", action="append", default=[],
                   help="a Union ControlNet's control mode (an index or a name such as canny, depth, tile)")
    g.add_argument("--control-guess-mode", action="store_true", help="diffusers' guess mode for every ControlNet")


def parse_mode(text) -> int | str | None:
    """A control mode as typed (``--control-mode``, the web UI's mode box): an index ("3") or a name
    ("canny", checked by the ControlNet later); empty text or "none" is no mode."""
    if text is None:
        return None
    if not isinstance(text, str):
        return text  # an index given as a number (the API)
    text = text.strip()
    if not text or text == "none":
        return None
    return int(text) if text.isdigit() else text


def parse_controls(args: argparse.Namespace, *, upscale: bool = False) -> list:
    """The ``anysize.Control`` list of the flags (models still as paths), checked without the model."""
    from ..models.control import Control

    n = len(args.controlnet)
    per = {"--control-image": args.control_image, "--control-scale": args.control_scale,
           "--control-start": args.control_start, "--control-end": args.control_end,
           "--control-mode": args.control_mode}
    if not n:
        given = [k for k, v in per.items() if v] + (["--control-guess-mode"] if args.control_guess_mode else [])
        if given:
            raise InvalidArgumentError(f"{given[0]} goes with --controlnet PATH, and none was given")
        return []
    for flag, values in per.items():
        allowed_none = flag != "--control-image" or upscale
        if len(values) != n and not (allowed_none and not values):
            need = f"{n} (one per --controlnet)" + (" or none" if allowed_none else "")
            raise InvalidArgumentError(f"{len(values)} {flag} for {n} --controlnet: give {need}")
    for image in args.control_image:
        if not os.path.isfile(image):
            raise InvalidArgumentError(f"--control-image {image}: no such file")
    out = []
    for i, model in enumerate(args.controlnet):
        mode = parse_mode(args.control_mode[i]) if args.control_mode else None
        out.append(Control(
            model, args.control_image[i] if args.control_image else None,
            args.control_scale[i] if args.control_scale else 1.0,
            args.control_start[i] if args.control_start else 0.0,
            args.control_end[i] if args.control_end else 1.0, mode,
        ))
    # ranges and start < end before the model loads (the model checks the rest)
    for i, c in enumerate(out):
        what = f"--controlnet {i + 1}"
        if not c.scale >= 0:
            raise InvalidArgumentError(f"{what}: --control-scale must be >= 0, got {c.scale}")
        for flag, v in (("--control-start", c.start), ("--control-end", c.end)):
            if not 0 <= v <= 1:
                raise InvalidArgumentError(f"{what}: {flag} must be in [0, 1], got {v}")
        if c.start >= c.end:
            raise InvalidArgumentError(f"{what}: --control-start {c.start} must be below --control-end {c.end}")
    return out
