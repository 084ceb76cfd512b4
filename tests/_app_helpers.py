"""Helpers shared by the web UI tests: optional dependencies that CI must not skip silently."""

from __future__ import annotations

import importlib
import os

import pytest

from anysize.app.server import offline_environment

# before anything imports Gradio: no analytics, no telemetry (as anysize app sets them)
offline_environment()


def require(module: str, why: str):
    """Import ``module`` or skip the test module; under CI (env ``CI`` set) a missing one fails
    instead, so the app's tests cannot pass there by being skipped."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"{module} is not installed ({why}): pip install -e '.[test,app]'"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)


def require_file(path: str, why: str) -> str:
    """``path`` if it exists; else skip, or fail under CI (``.ci/run`` installs it)."""
    if os.path.exists(path):
        return path
    message = f"{path} is missing ({why}); on Debian: apt-get install chromium chromium-driver"
    if os.environ.get("CI"):
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)
