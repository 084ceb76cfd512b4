"""Method options as form controls, read from the options metadata alone (no Gradio here).

Every registered method declares its options with :mod:`anysize.options`; :func:`control_for`
turns one :class:`~anysize.options.Spec` into a :class:`Control`, a plain description of a form
widget, which :mod:`anysize.app.ui` renders with Gradio. So a method added to the registry appears
in the web UI with its controls, and no UI code:

=========================  ==============================================================
spec                       widget
=========================  ==============================================================
bool                       checkbox (a dropdown unset / true / false when it may be unset)
choice                     dropdown of the valid choices (first entry "unset: ..." when nullable)
int / float, both bounds   slider over the range (open ends moved in by one step)
int / float, otherwise     number box
int / float, may be unset  text box holding the number (empty: unset)
str / path                 text box (empty: unset, where that is allowed)
strings                    text box, comma-separated
mapping                    text box holding a JSON object
=========================  ==============================================================

The label is the option's name (and unit), the info text its doc and what a valid value is. The
way back, :func:`to_option`, turns what a widget holds into the option's value; the options of a
method are then checked by the method itself (:meth:`~anysize.options.Options.from_kwargs`), so a
value out of range gets the same one-line message as ``anysize generate --set``.
:func:`options_from_widgets` passes on only the options that differ from their defaults, as the
command line does, so a preset (``elastic``'s) still fills the options left alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import InvalidArgumentError
from ..options import Spec

#: the widget value of "unset" in dropdowns (a string: Gradio keeps None for "nothing chosen")
UNSET = "(unset)"

WIDGETS = ("checkbox", "dropdown", "slider", "number", "textbox")


@dataclass(frozen=True)
class Control:
    """One form widget for one option: what :mod:`anysize.app.ui` needs to render it."""

    method: str
    spec: Spec
    widget: str
    label: str
    info: str
    value: Any
    choices: tuple[tuple[str, Any], ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    #: number boxes of int options round to whole numbers in the browser
    integer: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def elem_id(self, prefix: str) -> str:
        return f"{prefix}-opt-{self.method}-{self.spec.name}"


def _slider_step(spec: Spec) -> float:
    if spec.kind == "int":
        return 1
    span = float(spec.high) - float(spec.low)
    return 10 ** math.floor(math.log10(span / 100)) if span > 0 else 0.01


def control_for(method: str, spec: Spec) -> Control:
    """The widget of one option (module docstring has the table)."""
    label = f"{spec.name} ({spec.unit})" if spec.unit else spec.name
    info = f"{spec.doc}. Valid: {spec.requirement()}"
    default = None if spec.required else spec.default
    widget = _widget_kind(spec)
    if widget == "checkbox":
        return Control(method, spec, widget, label, spec.doc, bool(default))
    if widget == "dropdown":
        values = [True, False] if spec.kind == "bool" else spec.valid_choices()
        choices = [(_text(v), _text(v)) for v in values]
        if spec.nullable:
            choices.insert(0, (f"unset: {spec.unset}", UNSET))
        return Control(method, spec, widget, label, info, to_widget(spec, default), tuple(choices))
    if widget == "slider":
        step = _slider_step(spec)
        lo = spec.low + step if spec.low_open else spec.low
        hi = spec.high - step if spec.high_open else spec.high
        return Control(method, spec, widget, label, info, default, minimum=lo, maximum=hi, step=step)
    if spec.nullable:
        info += f"; empty: {spec.unset}"
    if widget == "number":
        return Control(method, spec, widget, label, info, default, integer=spec.kind == "int")
    if spec.kind == "mapping":
        info += " (as JSON)"
    elif spec.kind == "strings":
        info += " (comma-separated)"
    elif spec.pair:
        info += " (N, or H,W)"
    return Control(method, spec, widget, label, info, to_widget(spec, default))


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def to_widget(spec: Spec, value: Any) -> Any:
    """An option value as the value of its widget (the inverse of :func:`to_option`)."""
    widget = _widget_kind(spec)
    if widget == "checkbox":
        return bool(value)
    if widget == "dropdown":
        return UNSET if value is None else _text(value)
    if widget in ("slider", "number"):
        return value
    if value is None:
        return ""
    if spec.kind == "mapping":
        return json.dumps(dict(value), ensure_ascii=False)
    if spec.kind == "strings":
        return ", ".join(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return _text(value)


def _widget_kind(spec: Spec) -> str:
    if spec.kind == "bool":
        return "dropdown" if spec.nullable else "checkbox"
    if spec.kind == "choice":
        return "dropdown"
    if spec.kind in ("int", "float") and not spec.pair and not spec.nullable:
        # (a number box cannot be left empty: the browser sends 0, so an unset-able number is a text box)
        bounded = all(v is not None and math.isfinite(v) for v in (spec.low, spec.high))
        return "slider" if bounded else "number"
    return "textbox"


def to_option(method: str, spec: Spec, raw: Any) -> Any:
    """What a widget holds as the option's value (not yet range-checked: the method does that).

    Raises :class:`~anysize.errors.InvalidArgumentError` only for text that cannot be read as the
    option's kind at all (JSON that is not JSON, a number box holding text).
    """
    w = _widget_kind(spec)
    if w == "checkbox":
        return raw
    if w == "dropdown":
        if raw is None or raw == UNSET:
            return None
        if spec.kind == "bool":
            return {"true": True, "false": False}.get(raw, raw)
        return raw
    if w in ("slider", "number"):
        if raw is None or raw == "":
            return None
        if isinstance(raw, str):  # from an API caller: read the number
            raw = _number(method, spec, raw)
        if spec.kind == "int" and isinstance(raw, float) and raw.is_integer():
            return int(raw)
        return raw
    # text boxes
    if raw is None:
        return None
    if not isinstance(raw, str):
        return raw  # already a value (an API caller's list or dict)
    text = raw.strip()
    if not text:
        return None if spec.nullable else text
    if spec.kind == "mapping":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise InvalidArgumentError(
                f"{method} option {spec.name} must be a JSON object such as {{\"tile\": 64}}, got {text!r}"
            ) from None
    if spec.kind == "strings":
        return [part.strip() for part in text.split(",")]
    if spec.kind in ("int", "float"):
        parts = [p.strip() for p in text.split(",")] if spec.pair else [text]
        values = [_number(method, spec, p) for p in parts]
        return values[0] if len(values) == 1 else values
    return text


def _number(method: str, spec: Spec, text: str) -> int | float:
    try:
        v = float(text)
    except ValueError:
        raise InvalidArgumentError(f"{method} option {spec.name} must be {spec.requirement()}, got {text!r}") from None
    return int(v) if spec.kind == "int" and v.is_integer() else v


def options_from_widgets(method: str, specs: list[Spec], raw: Mapping[str, Any]) -> dict[str, Any]:
    """The options the widgets set away from their defaults (the method then checks them)."""
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.name not in raw:
            continue
        value = to_option(method, spec, raw[spec.name])
        if spec.required or not _same(value, spec.default):
            out[spec.name] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return list(a) == list(b)
    return type(a) is type(b) and a == b or (type(a) in (int, float) and type(b) in (int, float) and a == b)


def option_from_text(spec: Spec, text: str) -> Any:
    """An option's value as :func:`anysize.output.infotext` wrote it (``None``, ``True``, JSON...)."""
    if text == "None":
        return None
    if spec.kind == "bool":
        return {"True": True, "False": False, "true": True, "false": False}.get(text, text)
    if spec.kind in ("int", "float", "mapping", "strings"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


__all__ = ["Control", "UNSET", "WIDGETS", "control_for", "option_from_text", "options_from_widgets", "to_option",
           "to_widget"]
