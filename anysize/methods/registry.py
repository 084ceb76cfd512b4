"""The one registry of methods: the CLI, API, benchmarks and evaluation all enumerate it."""

from __future__ import annotations

from ..errors import UnknownChoiceError

METHODS: dict[str, type] = {}


def register(cls):
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise TypeError(f"method name {cls.name!r} is taken by {METHODS[cls.name].__name__}")
    METHODS[cls.name] = cls
    return cls


def get(name: str) -> type:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownChoiceError("method", name, METHODS) from None


def create(name: str, **options):
    return get(name)(**options)


def names() -> list[str]:
    return sorted(METHODS)
