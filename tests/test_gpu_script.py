"""benchmarks/gpu.sh, checked on the CPU: device minutes are scarce (15 a task, when one is lent),
so a part that dies on a misspelt flag or a set that names a missing part must fail here first."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs every part's command up to its own argument parser, in one process: the real parser of the
# real entry point (the anysize CLI, or the benchmark script), stopped right after it accepts the
# arguments, before any model or device is touched. Prints "<part> ok" or "<part> <what failed>".
PARSE_ONLY = r"""
import argparse, runpy, shlex, sys

class Parsed(Exception):
    pass

real = argparse.ArgumentParser.parse_args
def parse_then_stop(self, args=None, namespace=None):
    real(self, args, namespace)
    raise Parsed
argparse.ArgumentParser.parse_args = parse_then_stop

for line in sys.stdin.read().splitlines():
    name, command = line.split(" ", 1)
    for one in command.split(" && "):
        argv = shlex.split(one.replace("$RES", "/nonexistent/res").replace("$ARAD_WORK", "/nonexistent/arad"))
        if argv[0] != "python3" or len(argv) < 2:
            print(name, "not a python3 command:", one)
            break
        module = argv[2] if argv[1] == "-m" else None
        sys.argv = ([module] + argv[3:]) if module else argv[1:]
        try:
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(argv[1], run_name="__main__")
            print(name, "ran without parsing arguments:", one)
            break
        except Parsed:
            pass
        except SystemExit as e:
            print(name, "refused its arguments (exit", e.code, "):", one)
            break
        except BaseException as e:
            print(name, "failed before parsing:", type(e).__name__, e)
            break
    else:
        print(name, "ok")
"""


def gpu_list() -> tuple[dict[str, tuple[int, str]], dict[str, list[str]]]:
    out = subprocess.run(["bash", str(ROOT / "benchmarks/gpu.sh"), "--list"], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    parts, sets = {}, {}
    for line in out.splitlines():
        if m := re.fullmatch(r"(\w+) \(limit (\d+) s\): (.+)", line):
            parts[m[1]] = (int(m[2]), m[3])
        elif m := re.fullmatch(r"(\w+) \(limits (\d+) s\): (.+)", line):
            sets[m[1]] = m[3].split()
            assert int(m[2]) == sum(parts[p][0] for p in sets[m[1]]), line
    return parts, sets


def test_every_part_has_a_limit_and_every_set_names_parts():
    parts, sets = gpu_list()
    assert len(parts) >= 20 and all(limit > 0 and command for limit, command in parts.values())
    assert {"next", "field", "perf", "compile"} <= set(sets)
    for name, members in sets.items():
        assert members and set(members) <= set(parts), (name, set(members) - set(parts))
        # one set is one device call, and the device stops a command at 600 s
        assert sum(parts[p][0] for p in members) <= 600, (name, sum(parts[p][0] for p in members))
    # the default set measures what issue 22 still lacks: the field at 4x the side (512²), n = 64
    assert "field_4x" in sets["field"] and "--size 512x512 --n 64" in parts["field_4x"][1]


def test_every_part_command_passes_its_own_argument_parser():
    parts, _ = gpu_list()
    stdin = "\n".join(f"{name} {command}" for name, (_, command) in parts.items())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PARSE_ONLY], input=stdin, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    verdicts = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.split(" ", 1)[0] in parts)
    assert set(verdicts) == set(parts), (done.stdout, done.stderr[-2000:])
    bad = {name: v for name, v in verdicts.items() if v != "ok"}
    assert not bad, (bad, done.stderr[-2000:])


def test_the_parse_check_catches_a_misspelt_flag():
    # the check above can fail: the same runner with one flag misspelt
    stdin = "bad python3 -m anysize bench --arch toy --sizes 2x\nbad2 python3 benchmarks/network_share/network_share.py --archh toy"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PARSE_ONLY], input=stdin, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("refused its arguments (exit 2 )" in line for line in lines), done.stdout


@pytest.mark.parametrize("args", [["bogus"], ["next", "bogus"]])
def test_an_unknown_part_or_set_is_refused_before_any_setup(tmp_path, args):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu.sh"), str(out), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "RES": str(tmp_path / "res")})
    assert done.returncode == 2 and "unknown part or set 'bogus'" in done.stderr and "sets: run followup" in done.stderr
    assert not out.exists() and not (tmp_path / "res").exists()


def test_resume_brings_an_earlier_runs_tables_and_the_field_parts_go_on_from_them(tmp_path):
    # python3 and nvidia-smi are stand-ins that record their arguments: the driver itself runs as on the GPU
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("python3", "nvidia-smi"):
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "$CALLS"\n')
        (stubs / name).chmod(0o755)
    earlier = tmp_path / "earlier"  # an earlier session's unpacked results.tgz
    earlier.mkdir()
    (earlier / "field_4x_n64.json").write_text('{"results": []}\n')
    (earlier / "field_4x.log").write_text("not a result\n")
    res, out, calls = tmp_path / "res", tmp_path / "out", tmp_path / "calls"
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "RES": str(res), "RESUME": str(earlier),
           "CALLS": str(calls)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu.sh"), str(out), "field_4x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from {earlier}: field_4x_n64.json" in done.stdout
    assert (res / "field_4x_n64.json").read_text() == '{"results": []}\n'
    assert (res / "field_4x.log").read_text() == ""  # the part's own (empty) log: only the results are brought
    (run,) = [line for line in calls.read_text().splitlines() if "eval composition" in line]
    assert run.endswith(f"--out {res}/field_4x_n64.json --resume -q")
    import tarfile

    with tarfile.open(out / "results.tgz") as packed:
        assert "./field_4x_n64.json" in packed.getnames()
    # without RESUME the results folder starts empty
    env.pop("RESUME")
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu.sh"), str(out), "field_4x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and not (res / "field_4x_n64.json").exists()
