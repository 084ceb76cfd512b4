"""``--region`` and ``--regions``, shared by ``anysize generate`` and ``anysize upscale``."""

from __future__ import annotations

import argparse


def add_region_options(p: argparse.ArgumentParser, *, upscale: bool = False) -> None:
    canvas = "the enlarged image" if upscale else "the image"
    p.add_argument("--region", metavar="X,Y,W,H:PROMPT", action="append", default=[], dest="region",
                   help=f"a regional prompt in a box of {canvas} (pixels; repeatable): the window methods "
                   "(multidiffusion, fstd) fuse it, the main prompt covering the rest")
    p.add_argument("--regions", metavar="FILE.json", default=None,
                   help="regional prompts from a JSON list of {prompt, box: [x, y, w, h] | mask: IMAGE, negative, "
                   "weight, feather, bootstrap} (mask images relative to the file)")


def read_regions(args: argparse.Namespace, method, size: tuple[int, int] | None):
    """--region and --regions as Regions (None without either), checked before the model loads
    (against ``size`` = (width, height) when it is known)."""
    from ..regions import check_method, check_regions, load_regions_file, parse_region

    regions = [parse_region(text) for text in args.region]
    if args.regions is not None:
        regions += load_regions_file(args.regions)
    if not regions:
        return None
    check_method(method)
    if size is not None:
        check_regions(regions, *size)
    return regions
