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


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Prove nothing is downloaded: any socket connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


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
