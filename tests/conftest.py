import os

# nothing in the tests may reach a model hub (read by huggingface_hub at import time)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import socket

import pytest
import torch

# The test models are tiny: intra-op threads gain nothing, and on a busy 2-core machine OpenMP's
# spin-waiting barriers can make a 2-thread forward pass far slower than a 1-thread one.
torch.set_num_threads(1)


_REAL_CONNECT = socket.socket.connect
_REAL_CREATE_CONNECTION = socket.create_connection


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Prove nothing is downloaded: any socket connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def is_loopback_address(address) -> bool:
    """A (host, port, ...) address on this machine: 127.0.0.0/8, ::1 or the name localhost."""
    import ipaddress

    if not isinstance(address, tuple) or not address:
        return False  # e.g. a Unix socket path is not the network, but nothing here needs one
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allow_loopback_only(monkeypatch) -> list:
    """Let sockets connect to 127.0.0.1 / ::1 / localhost only (a test talking to a server it
    started); every other connection fails and is listed in the returned list."""
    refused = []

    def connect(self, address):
        if is_loopback_address(address):
            return _REAL_CONNECT(self, address)
        refused.append(address)
        raise AssertionError(f"network access attempted: {address!r}")

    def create_connection(address, *args, **kwargs):
        if is_loopback_address(address):
            return _REAL_CREATE_CONNECTION(address, *args, **kwargs)
        refused.append(address)
        raise AssertionError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return refused


@pytest.fixture
def loopback_only(monkeypatch, _no_network):
    """:func:`allow_loopback_only` for one test (after ``_no_network``, which it relaxes)."""
    return allow_loopback_only(monkeypatch)


@pytest.fixture(scope="module")
def loopback_module():
    """:func:`allow_loopback_only` for a module's fixtures (a server launched once per module):
    the function-scoped guards do not cover module-scoped set-up. Fails at teardown if anything
    tried to reach another address."""
    with pytest.MonkeyPatch.context() as mp:
        refused = allow_loopback_only(mp)
        yield refused
    assert not refused, f"connections to other machines attempted: {refused}"


@pytest.fixture(scope="session")
def tiny():
    """Cached tiny pipelines by family (tests must not mutate them)."""
    from anysize.builders import tiny_pipeline

    cache = {}

    def get(family, **kw):
        key = (family, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = tiny_pipeline(family, **kw)
        return cache[key]

    return get
