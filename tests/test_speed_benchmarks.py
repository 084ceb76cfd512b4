"""The speed benchmarks of the GPU parts (benchmarks/gpu.sh: hidiffusion_*, elastic*, compile*, scalediff), run
whole on the CPU at the smallest widths: a script that breaks must break here, not in a GPU session's 15 minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(path: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / path), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_hidiffusion_speed_matches_the_official_package_on_both_architectures(tmp_path):
    out = tmp_path / "h.json"
    run_script("benchmarks/hidiffusion_speed/hidiffusion_speed.py", "--archs", "sd15", "sdxl", "--width-div", "16",
               "--steps", "1", "--repeats", "1", "--sd15-scale", "2", "--sdxl-scale", "2", "--json", str(out))
    results = json.loads(out.read_text())["results"]
    assert [r["architecture"] for r in results] == ["sd15", "sdxl"]
    for r in results:
        assert set(r["median_seconds"]) == {"direct", "anysize", "official"}
        assert all(s > 0 for s in r["median_seconds"].values())
        assert r["max_abs_diff_vs_official"] <= 1e-5, r


def test_elastic_speed_rows_and_agreement_with_the_official_loop(tmp_path):
    out = tmp_path / "e.json"
    run_script("benchmarks/elastic_speed/elastic_speed.py", "--archs", "sd2.1", "--width-div", "16", "--sd21-size",
               "128x64", "--steps", "1", "--repeats", "1", "--no-multidiffusion", "--official-vb", "1", "16",
               "--json", str(out))
    (result,) = json.loads(out.read_text())["results"]
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["direct", "elastic", "elastic (official loop, vb 1)", "elastic (official loop, vb 16)"]
    assert rows["direct"]["evals_per_step"] == 2
    # equal settings: the same evaluations per step in every elastic candidate, and the same latents
    assert len({r["evals_per_step"] for m, r in rows.items() if m != "direct"}) == 1
    assert result["max_abs_diff_elastic_vs_official_loop"] <= 1e-4


def test_compile_speed_rows_per_method_and_variant(tmp_path):
    # eager kernels only: a compiled variant takes minutes per shape on a CPU (tests/test_compile.py checks it)
    out = tmp_path / "c.json"
    run_script("benchmarks/compile_speed/compile_speed.py", "--arch", "toy", "--reduced", "--size", "native",
               "--methods", "direct", "fstd", "--steps", "1", "--repeats", "1", "--variants", "eager/math",
               "--out", str(out))
    rows = json.loads(out.read_text())["results"]
    # eager/auto is the reference every variant is compared with
    assert [(r["method"], r["variant"]) for r in rows] == [
        ("direct", "eager/auto"), ("direct", "eager/math"), ("fstd", "eager/auto"), ("fstd", "eager/math")]
    assert all(r["seconds"] > 0 and r["graphs"] == 0 for r in rows)
    assert all(r["max_abs_diff"] == 0 for r in rows if r["variant"] == "eager/auto")
    assert all(0 <= r["max_abs_diff"] <= 1e-3 for r in rows)


def test_scalediff_speed_rows_for_both_architectures(tmp_path):
    # gpu.sh's scalediff part times FLUX as a whole network too (the CPU profile does not by default)
    out = tmp_path / "s.md"
    run_script("benchmarks/scalediff_speed/scalediff_speed.py", "--archs", "sdxl", "flux", "--image-archs",
               "sdxl", "flux", "--scales", "2", "--native-attn", "8", "--native-image", "8", "--repeats", "1",
               "--out", str(out))
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith(("| sdxl", "| flux"))]
    assert [(r[0], r[3].split(" (")[0]) for r in rows] == [
        ("| sdxl", "attention layer"), ("| sdxl", "whole network, 1 step(s)"),
        ("| flux", "attention layer"), ("| flux", "whole network, 1 step(s)")]
    assert all(float(x) > 0 for r in rows for x in r[4:7]), rows
