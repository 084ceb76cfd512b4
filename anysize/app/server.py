"""Launching the page: on 127.0.0.1 unless told otherwise, behind a password when asked, offline.

Nothing here reaches the internet: Gradio's analytics and version check are off
(``GRADIO_ANALYTICS_ENABLED=False``, ``analytics_enabled=False``), there is no share link, no
server-side rendering (it would start a Node server), no MCP server, and the page's fonts are the
theme's local ones. ``tests/test_app_browser.py`` records every request a real Chromium makes for the
page and finds only the app's own address.

The waiting room is the :class:`~anysize.app.handlers.DeviceQueue` of the service (one run at a
time, ``--queue`` waiting, a "busy" message past it), so Gradio's own queue is left unbounded and
starts every event at once; threads are sized to hold the waiting room.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError

#: the environment variable holding USER:PASS when --auth is not given
AUTH_ENV = "ANYSIZE_APP_AUTH"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def offline_environment() -> None:
    """What Gradio and the Hugging Face libraries read at import: no analytics, no telemetry."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("GRADIO_SSR_MODE", "False")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(text: str | None, *, source: str = "--auth") -> tuple[str, str] | None:
    """``USER:PASS`` -> (user, password); None stays None."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise InvalidArgumentError(f"{source} must be USER:PASS (a user name and a password, both non-empty)")
    return user, password


def host_warning(host: str, auth: bool) -> str | None:
    """What to tell the user about serving on ``host`` (None on loopback)."""
    if is_loopback(host):
        return None
    if auth:
        return (f"serving on {host}: other machines can reach the app; it asks for the password, which travels "
                "unencrypted over plain HTTP")
    return (f"serving on {host} without a password: anyone who can reach this machine can run the model; "
            f"protect it with --auth USER:PASS (or {AUTH_ENV}=USER:PASS)")


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken, before the model loads."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidArgumentError(f"--port must be between 1 and 65535, got {port!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closed port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                raise InvalidArgumentError(f"port {port} on {host} is in use (another app?); choose another with --port")
            raise InvalidArgumentError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nothing listens on now (for tests and ``--port 0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Running:
    """A launched app: its Gradio Blocks, its URL; :meth:`close` stops the server."""

    demo: Any
    url: str
    service: Any

    def close(self) -> None:
        self.demo.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def launch(service, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, auth: tuple[str, str] | None = None,
           quiet: bool = True) -> Running:
    """Build the page for ``service`` and serve it in background threads; returns at once."""
    offline_environment()
    import gradio as gr

    from .ui import CSS, build

    demo = build(service)
    # the device queue of the service is the waiting room: Gradio starts every event at once
    demo.queue(max_size=None, default_concurrency_limit=None)
    threads = max(40, service.queue.waiting + 16)
    demo.launch(
        server_name=host, server_port=port, auth=auth, share=False, prevent_thread_lock=True, quiet=quiet,
        show_error=True, max_threads=threads, ssr_mode=False, mcp_server=False, pwa=False, enable_monitoring=False,
        footer_links=["api"], allowed_paths=[str(service.out_dir)], theme=gr.themes.Default(), css=CSS,
        auth_message="anysize: this app asks for a user name and password" if auth else None,
    )
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    return Running(demo, url, service)


__all__ = ["AUTH_ENV", "DEFAULT_HOST", "DEFAULT_PORT", "Running", "check_port", "free_port", "host_warning",
           "is_loopback", "launch", "offline_environment", "parse_auth"]
