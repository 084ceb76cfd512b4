"""``anysize methods``, and how every command's help presents the method registry."""

from __future__ import annotations

import argparse

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


def describe_method(name: str) -> list[str]:
    """A method's summary, families and every option with its doc, kind, unit, default and valid
    values, all from its options' declarations (:mod:`anysize.options`)."""
    from .. import methods

    cls = methods.get(name)
    families = getattr(cls, "families", None)
    lines = [f"{name}: {cls.summary}", f"  families: {', '.join(families) if families else 'all'}"]
    options = cls.Options.listing(indent="    ")
    lines += ["  options:", *options] if options else ["  options: none"]
    return lines


def describe_methods(names=None) -> str:
    """The registered methods (or ``names``), each as :func:`describe_method` lists it."""
    from .. import methods

    blocks = ["\n".join(describe_method(n)) for n in (methods.names() if names is None else names)]
    return "\n\n".join(blocks)


def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("List the registered methods, their summaries and every option with its meaning, kind, default "
                     "and valid values (use them with 'anysize generate --method NAME --set KEY=VALUE').")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these methods (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import methods
    from ..errors import check_choice

    for name in args.names:
        check_choice("method", name, methods.names())
    print(describe_methods(args.names or None))
    return EXIT_OK
