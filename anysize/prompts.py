"""Prompt text: the one check that every prompt, from every front end, passes before any work.

A prompt is a ``str`` of valid Unicode text. Text that came from bytes that are not UTF-8 is
refused with one clear error naming the first bad byte and where it sits, before a model loads
(command line) or a prompt is encoded (Python API). It is not replaced (by U+FFFD or by dropping
the bytes): a prompt that silently says something other than what was typed is a silently wrong
image, and the bytes are almost always a wrong encoding (a Latin-1 or UTF-16 file, a mangled
terminal) that the user can fix once they know.

On POSIX, Python decodes command-line arguments that are not UTF-8 into lone surrogates
(``b"\\xff"`` becomes ``"\\udcff"``, PEP 383), and a locale-less stdin does the same, so the check is
on the ``str``: any surrogate code point (U+D800-U+DFFF) is refused, since no UTF-8 text holds one
and no tokenizer can encode it. ``bytes`` are refused too: decode them first.

This module imports neither torch nor diffusers (the command line uses it before a model loads).
"""

from __future__ import annotations

from .errors import InvalidArgumentError

__all__ = ["check_prompt", "check_prompts", "decode_prompt_file"]

_SNIPPET = 40


def _shown(text: str) -> str:
    """The text for a message: bad bytes as ``\\xNN`` (other surrogates as ``\\udNNN``), cut to a snippet."""
    out = []
    for c in text[:_SNIPPET]:
        o = ord(c)
        if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8, escaped by the surrogateescape decoder
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF or not c.isprintable():
            out.append(c.encode("unicode_escape").decode("ascii"))
        else:
            out.append(c)
    return "".join(out) + ("..." if len(text) > _SNIPPET else "")


def check_prompt(text, what: str = "prompt") -> str:
    """``text`` if it is a ``str`` of valid Unicode; else an :class:`InvalidArgumentError` naming ``what``."""
    if isinstance(text, (bytes, bytearray)):
        raise InvalidArgumentError(f"{what} must be text (str), got {type(text).__name__}; decode it first, "
                                   "e.g. data.decode('utf-8')")
    if not isinstance(text, str):
        raise InvalidArgumentError(f"{what} must be a string, got {type(text).__name__}")
    for i, c in enumerate(text):
        o = ord(c)
        if 0xD800 <= o <= 0xDFFF:
            bad = f"byte 0x{o - 0xDC00:02x}" if 0xDC80 <= o <= 0xDCFF else f"a lone surrogate U+{o:04X}"
            raise InvalidArgumentError(
                f"{what} is not valid UTF-8 text: {bad} at character {i + 1} ('{_shown(text)}'); "
                "give the prompt as UTF-8 (re-save the file or fix the terminal's encoding)"
            )
    return text


def check_prompts(prompts, what: str = "prompt") -> list[str] | None:
    """One prompt or a non-empty sequence of them -> a list of checked prompts; None stays None."""
    if prompts is None:
        return None
    if isinstance(prompts, (str, bytes, bytearray)):
        return [check_prompt(prompts, what)]
    try:
        prompts = list(prompts)
    except TypeError:
        raise InvalidArgumentError(f"{what} must be a string or a list of strings, got {type(prompts).__name__}") from None
    if not prompts:
        raise InvalidArgumentError(f"empty {what} list: give at least one {what}")
    if len(prompts) == 1:
        return [check_prompt(prompts[0], what)]
    return [check_prompt(p, f"{what} {i + 1} of {len(prompts)}") for i, p in enumerate(prompts)]


def decode_prompt_file(data: bytes, name: str) -> str:
    """The text of a prompts file (UTF-8, an optional BOM dropped); bytes that are not UTF-8 are an
    error naming the line and the byte, like :func:`check_prompt`'s."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InvalidArgumentError(
            f"prompts file {name} is not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} cannot be decoded; "
            "re-save it as UTF-8"
        ) from None
