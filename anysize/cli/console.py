"""What the command line prints besides results: errors, notes, and the libraries' own output.

Every user error ends as one line ``anysize: error: <message>`` on stderr with exit code 2, so
argparse's usage errors are raised and reported like any other error.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings

PROG = "anysize"
#: 1: the work was valid but did not complete (out of memory; failed batch jobs or evaluation cells)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """An argparse usage error, reported like every other error."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401  (argparse API)
        raise UsageError(f"{message} (see '{self.prog} --help')")


def error(message: str, code: int = EXIT_USAGE) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


def note(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def library_output(quiet: bool):
    """Silence known-harmless warnings; with --quiet also diffusers/transformers logging and bars."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`torch_dtype` is deprecated", category=FutureWarning)
        if not quiet:
            yield
            return
        saved = []
        for lib in ("diffusers", "transformers"):
            try:
                logging = __import__(f"{lib}.utils.logging", fromlist=["logging"])
            except ImportError:  # pragma: no cover
                continue
            saved.append((logging, logging.get_verbosity(), logging.is_progress_bar_enabled()))
            logging.set_verbosity_error()
            logging.disable_progress_bar()
        try:
            yield
        finally:
            for logging, verbosity, bars in saved:
                logging.set_verbosity(verbosity)
                if bars:
                    logging.enable_progress_bar()
