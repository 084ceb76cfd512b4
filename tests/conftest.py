import os

# nothing in the tests may reach a model hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny():
    """Cached tiny pipelines by family (tests must not mutate them; use the adapter's fresh state)."""
    from anysize.testing import tiny_pipeline

    cache = {}

    def get(family, **kw):
        key = (family, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = tiny_pipeline(family, **kw)
        return cache[key]

    return get
