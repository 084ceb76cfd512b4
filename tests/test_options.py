"""anysize.options: declared options check themselves, name every valid value, and round-trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

import anysize.methods as methods
from anysize.errors import InvalidArgumentError, UnknownChoiceError
from anysize.options import Options, Spec, option, require
from anysize.patches.hidiffusion import HiDiffusionSettings
from anysize.patches.npa import NPASettings
from anysize.train.arad import AradConfig

DECLARED = [methods.get(n).Options for n in methods.names()] + [HiDiffusionSettings, NPASettings]


@dataclasses.dataclass
class Demo(Options):
    PRESETS = {"fast": {"steps": 2, "mode": "b"}}

    preset: str | None = option(None, "named settings", choices=("fast",), unset="none")
    steps: int = option(10, "steps", low=1, unit="steps")
    ratio: float | None = option(None, "a fraction", kind="float", low=0.0, high=1.0, low_open=True, unset="auto")
    mode: str = option("a", "a mode", choices=("c", "a", "b"))
    flag: bool = option(False, "a switch")
    extra: dict = option({}, "nested", kind="mapping")

    def validate_together(self):
        if self.flag and self.mode == "c":
            raise InvalidArgumentError("flag does not go with mode c")


def test_unknown_names_are_refused_with_every_valid_name():
    with pytest.raises(InvalidArgumentError, match="thing 'x' has no option bogus, zz; its options: extra, flag, mode, preset, ratio, steps"):
        Demo.from_kwargs({"zz": 1, "bogus": 2}, owner="thing 'x'")


@pytest.mark.parametrize("values,match", [
    ({"steps": 0}, r"^x option steps must be an integer >= 1, got 0$"),
    ({"steps": 2.0}, "steps must be an integer >= 1"),
    ({"steps": True}, "steps must be an integer"),
    ({"ratio": 0}, r"ratio must be in \(0, 1\] or unset, got 0"),
    ({"ratio": float("nan")}, "ratio"),
    ({"mode": "d"}, r"^unknown x option mode 'd'; valid choices: c, a, b$"),  # all of them, in their own order
    ({"flag": 1}, "flag must be true or false, got 1"),
    ({"extra": [1]}, "extra must be a dict"),
    ({"flag": True, "mode": "c"}, "flag does not go with mode c"),
    ({"preset": "slow"}, "valid choices: fast"),
])
def test_bad_values_get_one_clear_error(values, match):
    with pytest.raises(InvalidArgumentError, match=match):
        Demo.from_kwargs(values, owner="thing 'x'")


def test_choice_errors_are_unknown_choice_errors_and_name_the_unset_option():
    with pytest.raises(UnknownChoiceError) as e:
        Demo.from_kwargs({"preset": "slow"}, owner="thing 'x'")
    assert e.value.choices == ["fast"] and str(e.value).endswith("(or unset)")


def test_presets_fill_what_was_left_out_and_explicit_values_win():
    d = Demo.from_kwargs({"preset": "fast", "mode": "c"}, owner="thing 'x'")
    assert (d.steps, d.mode) == (2, "c")
    assert Demo.from_kwargs({}, owner="thing 'x'").steps == 10


def test_mutable_defaults_are_not_shared():
    a, b = Demo(), Demo()
    a.extra["k"] = 1
    assert b.extra == {}


def test_declarations_must_be_complete():
    with pytest.raises(TypeError, match="doc"):
        option(1)
    with pytest.raises(TypeError, match="unset"):
        option(None, "no meaning for unset", kind="int")
    with pytest.raises(TypeError, match="choices"):
        option("a", "choices without the kind", kind="str", choices=("a",))
    with pytest.raises(TypeError, match="kind"):
        option(None, "unknown kind", kind="colour", unset="x")

    @dataclasses.dataclass
    class Bare(Options):
        n: int = 1

    with pytest.raises(TypeError, match="not declared"):
        Bare.specs()


def test_require_checks_loose_values_like_options():
    assert require("steps", 3, kind="int", low=1) == 3
    with pytest.raises(InvalidArgumentError, match=r"^steps must be an integer >= 1, got 0$"):
        require("steps", 0, kind="int", low=1)
    with pytest.raises(InvalidArgumentError, match="a number in"):
        require("w", 11, kind="float", low=0, high=10)


@pytest.mark.parametrize("cls", DECLARED, ids=lambda c: c.__name__)
def test_every_declared_option_describes_itself(cls):
    specs = cls.specs()
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(cls)]
    listing = "\n".join(cls.listing())
    for s in specs:
        assert isinstance(s, Spec) and s.doc and s.kind
        d = s.describe()
        json.dumps(d)  # a UI can ship it as it is
        assert s.name in listing
        if s.kind == "choice":
            assert s.valid_choices() and all(str(c) in listing for c in s.valid_choices())
        if s.default is not None and not s.required:
            s.validate(s.default, "default")  # every default is valid
    assert cls.from_kwargs({}, owner="x").as_dict() == cls().as_dict()


@pytest.mark.parametrize("name", methods.names())
def test_method_options_round_trip_through_their_metadata(name):
    cls = methods.get(name)
    m = cls()
    again = cls(**json.loads(json.dumps(m.describe())))
    assert again.describe() == m.describe()


def test_arad_config_uses_the_same_checks():
    with pytest.raises(InvalidArgumentError, match="train-arad option steps must be an integer >= 1"):
        AradConfig(data="d", out="o", steps=0).validate()
    assert "caption_dropout" in "\n".join(AradConfig.listing())
