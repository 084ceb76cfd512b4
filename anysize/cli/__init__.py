"""The ``anysize`` command line: a thin layer over :func:`anysize.load` and :func:`anysize.generate`.

One module per subcommand, each with its one-line ``HELP``, a ``configure(parser)`` that adds its
description and options, and the ``run(args)`` that ``configure`` sets as ``func``; :data:`COMMANDS`
lists them. Only the chosen subcommand's parser is configured: the others' help texts enumerate the
method registry, the schedulers and the model families, whose modules import torch, so
``anysize --help`` answers at once. Everything that can be checked is checked before a model is
loaded; every user error ends as one line ``anysize: error: <message>`` on stderr with exit code
2, a run the device's memory cannot hold as one such line (with the ways out) and exit code 1,
Ctrl-C as exit code 130, and none leaves a file behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from types import ModuleType
from typing import Iterable, Sequence

from .. import __version__
from ..errors import AnysizeError, Cancelled, RunFailedError
from . import app, batch, bench, demo, generate, methods, train_arad, upscale
from . import eval as eval_
from .console import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, Parser, UsageError, error
from .inputs import fix_negative_sizes, parse_set, parse_size  # noqa: F401  (parse_*: part of anysize.cli)

#: subcommand name -> its module (HELP, configure(parser), run(args))
COMMANDS: dict[str, ModuleType] = {
    "generate": generate,
    "upscale": upscale,
    "methods": methods,
    "batch": batch,
    "demo": demo,
    "eval": eval_,
    "bench": bench,
    "train-arad": train_arad,
    "app": app,
}

TOP_EPILOG = """\
examples:
  # the embedded default model: anysize's own toy model (one coloured shape on a background)
  anysize generate "a red triangle on a blue background" --size 256x128 --steps 20

  # SDXL at 4096x2048 on a GPU
  anysize generate "a castle on a cliff" --model stabilityai/stable-diffusion-xl-base-1.0 \\
      --size 4096x2048 --dtype fp16 --device cuda --method direct --seed 7 --out castle.png

  # several prompts: one PNG each in a directory (image i uses seed + i)
  anysize generate "a cat" "a dog" --seed 7 --out pets/
  anysize generate --prompts-file prompts.txt --out batch/

  anysize methods             # the registered methods and their options
  anysize app                 # the web UI at http://127.0.0.1:7860 (pip install 'anysize[app]')
  anysize generate --help     # every generate option, with the valid choices
"""


def version_line() -> str:
    """``anysize X (diffusers Y, torch Z)``, read from the installed packages' metadata, not their imports."""
    from importlib import metadata

    try:
        return f"{PROG} {__version__} (diffusers {metadata.version('diffusers')}, torch {metadata.version('torch')})"
    except metadata.PackageNotFoundError:  # pragma: no cover
        return f"{PROG} {__version__}"


class _VersionAction(argparse.Action):
    """``--version``, with the version line made only when asked for (it reads package metadata)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show program's version number and exit"):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; only ``commands`` (default: all) get their options and full help."""
    configured = set(COMMANDS if commands is None else commands)
    parser = Parser(
        prog=PROG,
        description="Make any pretrained text-to-image diffusion model (SD 1.x/2.x, SDXL, SD3, FLUX) "
        "generate at any size and aspect ratio.",
        epilog=TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.HELP)
        if name in configured:
            command.configure(p)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand in ``argv``: the top-level options take no values, so it is the first word."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return argv[i + 1] if i + 1 < len(argv) else None
        if not arg.startswith("-"):
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failed: out of memory, failed jobs; 2 bad
    input, 130 interrupted)."""
    argv = fix_negative_sizes(list(sys.argv[1:] if argv is None else argv))
    chosen = _chosen_command(argv)
    try:
        parser = build_parser([chosen] if chosen is not None else [])
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            return error(f"no command given; choose one of: {', '.join(COMMANDS)} (see '{PROG} --help')")
        return args.func(args)
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else (0 if e.code is None else error(str(e.code)))
    except UsageError as e:
        message = str(e)
        if chosen in COMMANDS:  # the top parser reports a command's unknown options: point at that command's help
            message = message.replace(f"(see '{PROG} --help')", f"(see '{PROG} {chosen} --help')")
        return error(message)
    except RunFailedError as e:  # valid input that did not complete (out of memory): not a usage error
        return error(e.for_cli() if callable(getattr(e, "for_cli", None)) else str(e), EXIT_FAILED)
    except AnysizeError as e:  # errors that name a way out (force=True, family=...) say it in the CLI's spelling
        return error(e.for_cli() if callable(getattr(e, "for_cli", None)) else str(e))
    except (KeyboardInterrupt, Cancelled):
        print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `anysize methods | head`
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def __getattr__(name: str):
    # size_factor moved to the models layer; importing it eagerly would import anysize.models,
    # whose __init__ imports torch, and `anysize --help` would wait seconds for it
    if name == "size_factor":
        from ..models.config_files import size_factor

        return size_factor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "PROG", "build_parser", "main", "parse_set",
           "parse_size", "size_factor", "version_line"]
