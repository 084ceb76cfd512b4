"""``anysize methods``, and how every command's help presents the method registry."""

from __future__ import annotations

import argparse
import dataclasses

from .console import EXIT_OK

HELP = "list the registered methods and their options"


def method_lines(names=None) -> list[str]:
    """One ``  name  summary`` line per registered method (or per name in ``names``), for help texts."""
    from .. import methods

    return [f"  {name:<14} {methods.get(name).summary}" for name in (methods.names() if names is None else names)]


def refining_methods() -> list[str]:
    """The methods that can refine a given image (``anysize upscale``), in registry order."""
    from .. import methods

    return [n for n in methods.names() if methods.get(n).refines]


def _type_name(t) -> str:
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", None) or str(t)


def describe_methods() -> str:
    """The registered methods, their summaries and their options (name, type, default)."""
    from .. import methods

    lines = []
    for name in methods.names():
        cls = methods.get(name)
        lines.append(f"{name}: {cls.summary}")
        families = getattr(cls, "families", None)
        lines.append(f"  families: {', '.join(families) if families else 'all'}")
        fields = dataclasses.fields(cls.Options)
        if not fields:
            lines.append("  options: none")
        else:
            lines.append("  options:")
            for f in fields:
                if f.default is not dataclasses.MISSING:
                    default = repr(f.default)
                elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                    default = repr(f.default_factory())  # type: ignore[misc]
                else:
                    default = "required"
                lines.append(f"    {f.name} ({_type_name(f.type)}, default {default})")
    return "\n".join(lines)


def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("List the registered methods, their summaries and their options (use them with "
                     "'anysize generate --method NAME --set KEY=VALUE').")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(describe_methods())
    return EXIT_OK
