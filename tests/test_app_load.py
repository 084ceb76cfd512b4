"""The web UI under load: ``anysize app`` started as a process on 127.0.0.1, driven by ``gradio_client``.

* memory: the peak resident set (``VmHWM``) of the server after 50 sequential requests stays
  within 10 % of the peak after the first 5 (nothing a request leaves behind accumulates);
* concurrency: 20 requests at once, with the default waiting room (8): each either completes with
  the image it asked for (its PNG's prompt and seed are the request's) or gets the "busy, try
  again" message at once; none is lost, none gets another's image.

The figures are printed (``pytest -s``) and, with ``ANYSIZE_APP_LOAD_REPORT=FILE``, written as JSON.
"""

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _app_helpers import require

require("gradio", "the web UI's tests")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from anysize.app.handlers import DEFAULT_QUEUE  # noqa: E402
from anysize.app.server import free_port  # noqa: E402
from anysize.output import read_metadata  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle", "star")
REPORT: dict = {}

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status (Linux)")


@pytest.fixture(scope="module")
def app():
    """``anysize app`` on the toy model with the default waiting room, as a user starts it."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "anysize", "app", "--port", str(port), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    url = []
    reader = threading.Thread(target=lambda: url.append(proc.stdout.readline().strip()), daemon=True)
    reader.start()
    reader.join(180)
    if not url or not url[0].startswith("http://127.0.0.1:"):
        proc.kill()
        pytest.fail(f"anysize app did not start: {proc.stderr.read()[-2000:] if proc.poll() is not None else 'no URL'}")
    yield proc, url[0]
    proc.terminate()
    try:
        assert proc.wait(30) == 0, "anysize app did not stop cleanly on SIGTERM"
    finally:
        proc.kill()
    if os.environ.get("ANYSIZE_APP_LOAD_REPORT"):
        Path(os.environ["ANYSIZE_APP_LOAD_REPORT"]).write_text(json.dumps(REPORT, indent=2) + "\n")


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def request(i: int) -> dict:
    """The i-th request: its own prompt and seed, so a mixed-up answer shows."""
    return {"prompt": f"a {COLOURS[i % 5]} {SHAPES[i % 4]} on a grey background, #{i}", "seed": 1000 + i}


def test_peak_memory_does_not_grow_over_50_requests(app, loopback_only):
    proc, url = app
    with closing(Client(url, verbose=False)) as client:
        memory_run(proc, client)


def memory_run(proc, client):
    """50 requests one after another; VmHWM read after the 5th and the 50th."""
    seconds = []
    for i in range(50):
        if i == 5:
            after_5 = memory_kib(proc.pid)
        start = time.perf_counter()
        png, info = client.predict(**request(i), steps=2, api_name="/generate")
        seconds.append(time.perf_counter() - start)
        assert info["config"]["seed"] == 1000 + i
    after_50 = memory_kib(proc.pid)
    REPORT["sequential"] = {"requests": 50, "peak_rss_mib_after_5": round(after_5["VmHWM"] / 1024, 1),
                            "peak_rss_mib_after_50": round(after_50["VmHWM"] / 1024, 1),
                            "rss_mib_after_50": round(after_50["VmRSS"] / 1024, 1),
                            "growth": round(after_50["VmHWM"] / after_5["VmHWM"] - 1, 4),
                            "seconds_per_request": round(sum(seconds[5:]) / 45, 3)}
    print("\nsequential:", REPORT["sequential"])
    assert after_50["VmHWM"] <= 1.10 * after_5["VmHWM"], REPORT["sequential"]


def test_20_concurrent_requests_complete_or_are_told_busy(app, loopback_only):
    proc, url = app
    with closing(Client(url, verbose=False)) as client:
        concurrent_run(client)


def concurrent_run(client):
    """20 requests at once from 20 threads; each outcome checked against its own request."""
    start = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        jobs = [pool.submit(client.predict, **request(i), steps=6, api_name="/generate") for i in range(20)]
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result(timeout=600))
            except AppError as e:
                outcomes.append(str(e))
    wall = time.perf_counter() - start
    done, busy = [], []
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, str):
            assert outcome.startswith("busy: ") and "try again" in outcome and "\n" not in outcome, outcome
            busy.append(i)
            continue
        png, info = outcome
        meta = read_metadata(png)  # the PNG itself, not only the record beside it
        assert (meta["prompt"], meta["seed"]) == (request(i)["prompt"], request(i)["seed"]), i
        assert info["config"] == meta
        done.append(i)
    REPORT["concurrent"] = {"requests": 20, "waiting_room": DEFAULT_QUEUE, "completed": len(done),
                            "busy": len(busy), "wall_seconds": round(wall, 1)}
    print("\nconcurrent:", REPORT["concurrent"])
    assert len(done) + len(busy) == 20  # none lost
    assert len(done) >= 1 + DEFAULT_QUEUE  # the one running and a full waiting room all complete
    assert busy, "20 requests at once should overflow a waiting room of 8"
    # still serving afterwards
    png, info = client.predict(**request(99), steps=1, api_name="/generate")
    assert read_metadata(png)["seed"] == 1099
