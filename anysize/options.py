"""Options that describe themselves: one declaration gives the checks, the errors and the listings.

A set of options is a dataclass deriving from :class:`Options` whose fields are declared with
:func:`option`: the default, a one-line doc, the kind (bool, int, float, a choice, a string, a
path, a nested mapping), the range or the choices, the unit, and what leaving it unset means::

    @dataclasses.dataclass
    class FSTDOptions(Options):
        tile: int | None = option(None, "tile side", kind="int", low=1, unit="latent px",
                                  unset="the model's native latent size")
        placement: str = option("improved", "tile placement", choices=("asd", "improved"))

        def validate_together(self):        # rules between fields, in one place
            ...

    FSTDOptions.from_kwargs({"tile": 64}, owner="method 'fstd'")

:meth:`Options.from_kwargs` refuses unknown names (listing the valid ones), applies a named
preset, checks every field against its declaration and then the cross-field rules. The CLI
(``anysize methods NAME``, ``--set``), the web UI, the batch runner and the PNG metadata all read
:meth:`Options.specs`. This module imports nothing heavy, so listing options is instant.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from .errors import InvalidArgumentError, UnknownChoiceError

#: where a field's :class:`Spec` lives in ``dataclasses.field(metadata=...)``
_SPEC_KEY = "anysize.option"

KINDS = ("bool", "int", "float", "choice", "str", "path", "strings", "mapping")

#: a field with no default (the caller must give it)
REQUIRED = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Spec:
    """What one option is: everything a check, an error message, a listing or a UI control needs."""

    name: str
    kind: str
    default: Any
    doc: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    #: the valid values of a choice (or a callable giving them, for sets known only at run time)
    choices: tuple | Callable[[], Sequence] | None = None
    #: what None means; None here means the option cannot be unset
    unset: str | None = None
    #: an int option may also be a (height, width) pair of such ints
    pair: bool = False
    #: a choice option may also be a callable (a scripted source for tests and parity drivers)
    callable_ok: bool = False
    #: a path option must exist
    must_exist: bool = False
    #: a further check of a valid-looking value (e.g. a nested method's options); raises itself
    check: Callable[[Any], None] | None = None

    # ------------------------------------------------------------------ reading
    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def nullable(self) -> bool:
        return self.unset is not None

    def valid_choices(self) -> list:
        c = self.choices() if callable(self.choices) else self.choices
        return list(c or ())

    def requirement(self) -> str:
        """What a valid value is, in words ("an integer >= 1", "in (0, 1]", "one of a, b")."""
        k = self.kind
        if k == "bool":
            text = "true, false" if self.nullable else "true or false"
        elif k == "choice":
            text = ("one of " if len(self.valid_choices()) > 1 else "") + ", ".join(str(c) for c in self.valid_choices())
        elif k in ("int", "float"):
            text = self._range_words()
            if self.pair:
                text += " (or a pair of them)"
        elif k == "str":
            text = "a non-empty string"
        elif k == "path":
            text = "an existing file or folder" if self.must_exist else "a path"
        elif k == "strings":
            text = "a non-empty list of non-empty strings"
        else:
            text = "a dict of option names to values"
        return text + (" or unset" if self.nullable else "")

    def _range_words(self) -> str:
        noun = "an integer" if self.kind == "int" else "a number"
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            interval = f"{'(' if self.low_open else '['}{_num(lo)}, {_num(hi)}{')' if self.high_open else ']'}"
            # a fraction or probability reads best as its interval alone
            return f"in {interval}" if self.kind == "float" and lo >= 0 and hi <= 1 else f"{noun} in {interval}"
        if lo is not None:
            return f"{noun} {'>' if self.low_open else '>='} {_num(lo)}"
        if hi is not None:
            return f"{noun} {'<' if self.high_open else '<='} {_num(hi)}"
        return noun

    def describe(self) -> dict[str, Any]:
        """A plain, JSON-ready description (for a UI, ``--help`` generators and tests)."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "doc": self.doc}
        out["default"] = None if self.required else _plain(self.default)
        out["required"] = self.required
        for key in ("unit", "unset"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.kind in ("int", "float"):
            out.update(low=self.low, high=self.high, low_open=self.low_open, high_open=self.high_open)
        if self.kind == "choice":
            out["choices"] = self.valid_choices()
        out["requirement"] = self.requirement()
        return out

    def default_text(self) -> str:
        if self.required:
            return "required"
        if self.default is None:
            return f"unset ({self.unset})" if self.unset else "unset"
        return _value_text(self.default)

    def lines(self, indent: str = "    ") -> list[str]:
        """Listing lines: ``name (kind[, unit]): doc`` then default and valid values."""
        head = f"{self.kind}, {self.unit}" if self.unit else self.kind
        return [
            f"{indent}{self.name} ({head}): {self.doc}",
            f"{indent}    default: {self.default_text()}; valid: {self.requirement()}",
        ]

    # ------------------------------------------------------------------ checking
    def validate(self, value: Any, owner: str) -> None:
        """Raise InvalidArgumentError (UnknownChoiceError for choices) unless ``value`` is valid."""
        if value is None and self.nullable:
            return
        if self.kind == "choice":
            if self.callable_ok and callable(value):
                return
            choices = self.valid_choices()
            if value not in choices:
                what = f"{owner} option {self.name}"
                extra = " (or unset)" if self.nullable else ""
                raise UnknownChoiceError(what, value, choices, ordered=True, extra=extra)
        elif not self._valid(value):
            raise InvalidArgumentError(f"{owner} option {self.name} must be {self.requirement()}, got {value!r}")
        if self.kind == "path" and self.must_exist and not os.path.exists(os.fspath(value)):
            raise InvalidArgumentError(f"{owner} option {self.name}: {os.fspath(value)} does not exist")
        if self.check is not None:
            self.check(value)

    def _valid(self, v: Any) -> bool:
        k = self.kind
        if k == "bool":
            return isinstance(v, bool)
        if k in ("int", "float"):
            if self.pair and isinstance(v, (tuple, list)):
                return len(v) == 2 and all(self._number(x) for x in v)
            return self._number(v)
        if k == "str":
            return isinstance(v, str) and bool(v)
        if k == "path":
            return isinstance(v, (str, os.PathLike)) and bool(os.fspath(v))
        if k == "strings":
            return (isinstance(v, (tuple, list)) and bool(v)
                    and all(isinstance(s, str) and s for s in v))
        if k == "mapping":
            return isinstance(v, Mapping)
        raise AssertionError(f"unknown option kind {k!r}")  # pragma: no cover - refused at declaration

    def _number(self, v: Any) -> bool:
        if isinstance(v, bool):
            return False
        if self.kind == "int":
            if not isinstance(v, int):
                return False
        elif not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        if self.high is not None and (v >= self.high if self.high_open else v > self.high):
            return False
        return True


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, Mapping):
        return dict(v)
    return v


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return ",".join(_value_text(x) for x in v)
    return repr(v)


def option(
    default: Any = REQUIRED,
    doc: str = "",
    *,
    kind: str | None = None,
    unit: str = "",
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: Iterable | Callable[[], Sequence] | None = None,
    unset: str | None = None,
    pair: bool = False,
    callable_ok: bool = False,
    must_exist: bool = False,
    check: Callable[[Any], None] | None = None,
) -> Any:
    """A dataclass field with its :class:`Spec` (the name is filled in from the field).

    ``kind`` is inferred from ``choices`` or from a bool/int/float/str default; give it when the
    default is None or a container. A mutable default (dict, list) is copied per instance.
    """
    if not doc:
        raise TypeError("every option needs a one-line doc")
    if kind is None:
        kind = _infer_kind(default, choices)
    if kind not in KINDS:
        raise TypeError(f"unknown option kind {kind!r}; kinds: {', '.join(KINDS)}")
    if (kind == "choice") != (choices is not None):
        raise TypeError("choices go with kind 'choice' and only with it")
    if default is None and unset is None:
        raise TypeError("an option that defaults to unset must say what unset means (unset=...)")
    if choices is not None and not callable(choices):
        choices = tuple(choices)
    spec = Spec("", kind, default, doc, unit, low, high, low_open, high_open, choices, unset, pair,
                callable_ok, must_exist, check)
    metadata = {_SPEC_KEY: spec}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _infer_kind(default: Any, choices) -> str:
    if choices is not None:
        return "choice"
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(default, types):
            return kind
    raise TypeError(f"cannot infer the kind of an option with default {default!r}: give kind=...")


class Options:
    """Base of every declared set of options (method options, patch settings, training configs).

    Subclasses are dataclasses whose fields all come from :func:`option`. ``PRESETS`` maps a
    preset name to values that fill the options the caller left out, when the options have a
    ``preset`` field.
    """

    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: what value errors call the owner when no label is given (default: the class name)
    LABEL: ClassVar[str] = ""

    @classmethod
    def specs(cls) -> list[Spec]:
        """The declared options, in declaration order."""
        out = []
        for f in dataclasses.fields(cls):
            spec = f.metadata.get(_SPEC_KEY)
            if spec is None:
                raise TypeError(f"{cls.__name__}.{f.name} is not declared with anysize.options.option()")
            out.append(dataclasses.replace(spec, name=f.name))
        return out

    @classmethod
    def spec(cls, name: str) -> Spec:
        for s in cls.specs():
            if s.name == name:
                return s
        raise KeyError(name)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_kwargs(cls, values: Mapping[str, Any] | None = None, *, owner: str, label: str | None = None,
                    also: Iterable[str] = ()):
        """Validated options from ``values``.

        ``owner`` names the options' owner in the unknown-name error ("method 'fstd'");
        ``label`` prefixes value errors (default: the name inside the owner's quotes, "fstd").
        ``also`` are further names the caller accepts besides the options (listed as valid).
        """
        values = dict(values or {})
        names = cls.names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            valid = ", ".join(sorted(set(names) | set(also))) or "none"
            raise InvalidArgumentError(f"{owner} has no option {', '.join(unknown)}; its options: {valid}")
        label = label or _label(owner)
        preset = values.get("preset")
        if cls.PRESETS and preset is not None:
            cls.spec("preset").validate(preset, label)
            values = {**cls.PRESETS[preset], **values}
        obj = cls(**values)
        obj.validate(label)
        return obj

    def validate(self, label: str | None = None) -> None:
        """Check every field against its declaration, then :meth:`validate_together`."""
        label = label or self.LABEL or type(self).__name__
        for s in self.specs():
            s.validate(getattr(self, s.name), label)
        self.validate_together()

    def validate_together(self) -> None:
        """Rules that involve several fields (raise InvalidArgumentError); none by default."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def listing(cls, indent: str = "    ") -> list[str]:
        """Every option with its doc, kind, unit, default and valid values, for ``--help`` pages."""
        lines: list[str] = []
        for s in cls.specs():
            lines += s.lines(indent)
        if cls.PRESETS:
            lines.append(f"{indent}presets (unset options take their values; explicit ones win):")
            for name, values in cls.PRESETS.items():
                body = ", ".join(f"{k}={_value_text(v) if v is not None else 'by size'}" for k, v in values.items())
                lines.append(f"{indent}    {name}: {body or 'the defaults'}")
        return lines


def _label(owner: str) -> str:
    """"method 'fstd'" -> "fstd"; anything without quotes stays as it is."""
    if "'" in owner:
        return owner.split("'")[1]
    return owner


def require(name: str, value: Any, *, kind: str, owner: str = "", **limits: Any) -> Any:
    """Check one loose value (a front-end argument, a tensor-code parameter) like a declared option.

    ``require("steps", steps, kind="int", low=1)`` raises "steps must be an integer >= 1, got 0".
    Returns the value.
    """
    if kind == "choice":
        raise TypeError("check a loose choice with anysize.errors.check_choice")
    spec = Spec(name, kind, REQUIRED, name, **limits)
    if value is None and spec.nullable:
        return value
    if not spec._valid(value):
        prefix = f"{owner} option " if owner else ""
        raise InvalidArgumentError(f"{prefix}{name} must be {spec.requirement()}, got {value!r}")
    return value


__all__ = ["KINDS", "Options", "REQUIRED", "Spec", "option", "require"]
