"""Reading what the user typed: sizes, ``--set`` method options, prompts."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from ..errors import InvalidArgumentError, InvalidSizeError
from ..prompts import check_prompt, decode_prompt_file

_SIZE_RE = re.compile(r"^\s*([^xX×*]+?)\s*[xX×*]\s*([^xX×*]+?)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (width, height), positive integers; InvalidSizeError otherwise."""
    m = _SIZE_RE.match(text or "")
    if not m:
        raise InvalidSizeError(f"size {text!r} is not WIDTHxHEIGHT (e.g. 1024x768)")
    out = []
    for name, part in zip(("width", "height"), m.groups()):
        if not re.fullmatch(r"-?[0-9]+", part):  # int() would also take '1_28', '+256' and other scripts' digits
            raise InvalidSizeError(
                f"size {text!r}: {name} {part!r} is not an integer; give WIDTHxHEIGHT in pixels, e.g. 1024x768")
        v = int(part)
        if v <= 0:
            raise InvalidSizeError(f"size {text!r}: {name} must be a positive number of pixels, got {v}")
        out.append(v)
    return out[0], out[1]


def fix_negative_sizes(argv: list[str]) -> list[str]:
    """``--size -8x128`` would read as an unknown option; pass it on as ``--size=-8x128`` for a clear error."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--size" and i + 1 < len(argv) and re.match(r"^-\d", argv[i + 1]):
            out.append(f"--size={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def check_multiple(width: int, height: int, factor: int, why: str) -> None:
    """Sizes must be multiples of the model's pixel factor; the message proposes the nearest ones."""
    for name, v in (("width", width), ("height", height)):
        if v % factor:
            lo, hi = (v // factor) * factor, (v // factor + 1) * factor
            valid = f"{lo} or {hi}" if lo > 0 else f"{hi}"
            raise InvalidSizeError(f"{name} {v} is not a multiple of {factor} ({why}); use {valid}")


def parse_set(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs -> method options; values are JSON when they parse, else strings."""
    options: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InvalidArgumentError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        options[key] = value
    return options


def read_prompts(positional: Sequence[str], prompts_file: str | None) -> list[str]:
    """Prompts from the command line, then one per non-empty line of ``prompts_file`` ('-': stdin),
    each checked to be valid UTF-8 text (:mod:`anysize.prompts`) before anything loads. A blank
    prompt on the command line is refused (a blank line of the file is no prompt); the Python API
    takes ``""`` and generates without text."""
    prompts = []
    for i, p in enumerate(positional or []):
        what = f"prompt {i + 1}" if len(positional) > 1 else "prompt"
        if not check_prompt(p, what).strip():  # e.g. "$PROMPT" of an unset variable; blank file lines are skipped too
            raise InvalidArgumentError(f"{what} is empty; give the text of the image to generate")
        prompts.append(p)
    if prompts_file is not None:
        name = "<stdin>" if prompts_file == "-" else prompts_file
        try:
            if prompts_file == "-":
                stream = getattr(sys.stdin, "buffer", None)  # bytes, decoded as a file is (not by the locale)
                text = decode_prompt_file(stream.read(), name) if stream is not None else sys.stdin.read()
            else:
                text = decode_prompt_file(Path(prompts_file).read_bytes(), name)
        except OSError as e:
            raise InvalidArgumentError(f"cannot read prompts file {prompts_file}: {e.strerror or e}") from None
        from_file = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                from_file.append(check_prompt(line.strip(), f"prompt on line {n} of prompts file {name}"))
        if not from_file:
            raise InvalidArgumentError(f"prompts file {prompts_file} has no prompts (one per non-empty line)")
        prompts += from_file
    if not prompts:
        raise InvalidArgumentError("no prompt given: pass one or more PROMPTs or --prompts-file FILE")
    return prompts


def check_text_option(value: str | None, option: str) -> str | None:
    """A text option (``--negative``, ``--prompt``) checked like a prompt; None stays None."""
    return None if value is None else check_prompt(value, option)
