"""``anysize batch`` / ``anysize.batch``: checks, plan, resume, run-time failures, and the engines.

A tiny random-weight SD 1.x pipeline saved to a folder, at its native 128x128 px and 2 steps.
The multi-process runs (torchrun, kill -9, Ray) are subprocesses of ``python -m anysize``; every
one binds only 127.0.0.1 and is compared byte for byte with an in-process run of the same jobs.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import anysize
from anysize import cli
from anysize.batching import InvalidJobsError
from anysize.batching.jobs import Job
from anysize.batching.plan import make_chunks, shard, world_from_env

ROOT = Path(anysize.__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from anysize.builders import save_tiny_pipeline

    return save_tiny_pipeline("sd1", tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="module")
def model(model_dir):
    return anysize.load(str(model_dir))


def write_jobs(path, n, **extra):
    rows = [{"prompt": f"a shape number {i}", "steps": 2, **extra} for i in range(n)]
    rows[1]["id"] = "second"
    rows[2]["size"] = "64x128"  # another configuration: its own chunk
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def outputs(folder):
    """The job files (name -> bytes); the summary and logs hold times and ranks, so they differ by run."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())
            if p.suffix in (".png", ".json") and not p.name.startswith("summary")}


def summary(folder):
    return [json.loads(line) for line in (Path(folder) / "summary.jsonl").read_text().splitlines()]


def env():
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)


def anysize_cmd(*args):
    return [sys.executable, "-m", "anysize", "batch", *map(str, args)]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """An uninterrupted in-process run of 12 jobs, batch 2: the bytes every other run must match."""
    tmp = tmp_path_factory.mktemp("ref")
    jobs = write_jobs(tmp / "jobs.jsonl", 12)
    result = anysize.batch(model, jobs, tmp / "out", batch_size=2, progress=False)
    assert result.done == 12 and result.failed == 0
    return jobs, outputs(tmp / "out")


# ------------------------------------------------------------------------------------------ plan


def _job(row, **kw):
    base = dict(row=row, line=row, prompt=f"p{row}", negative=None, seed=row, width=128, height=128, method="direct",
                options={}, steps=2, guidance=7.5, scheduler="default", id=f"j{row}")
    return Job(**{**base, **kw})


def test_chunks_group_configurations_and_do_not_depend_on_the_world_size():
    jobs = [_job(1), _job(2, width=64), _job(3), _job(4), _job(5, width=64), _job(6)]
    chunks = make_chunks(jobs, 2)
    assert [[j.row for j in c.jobs] for c in chunks] == [[1, 3], [4, 6], [2, 5]]
    for world in (1, 2, 3, 5):
        shares = [shard(chunks, r, world) for r in range(world)]
        assert sorted(c.index for s in shares for c in s) == [c.index for c in chunks]
        assert all(c.jobs == chunks[c.index].jobs for s in shares for c in s)


def test_world_from_the_launchers_environment():
    assert world_from_env({}).size == 1
    w = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank) == (3, 4, 1)
    w = world_from_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"})
    assert (w.rank, w.size) == (1, 2)
    with pytest.raises(anysize.AnysizeError, match="need 0 <= rank < size"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})


# ------------------------------------------------------------------------------------------ checks

BAD_ROWS = [
    ({"negative": "x"}, "no prompt"),
    ({"prompt": "   "}, "prompt is empty"),
    ({"prompt": 5}, "prompt must be text"),
    ({"prompt": "a", "size": "12xq"}, "height 'q' is not an integer"),
    ({"prompt": "a", "size": "130x128"}, "width 130 is not a multiple of 8"),
    ({"prompt": "a", "width": 128}, "height missing"),
    ({"prompt": "a", "size": "128x128", "width": 128, "height": 128}, "size or width/height, not both"),
    ({"prompt": "a", "method": "nope"}, "unknown method 'nope'; valid choices"),
    ({"prompt": "a", "method": "multidiffusion", "options": {"window": -1}}, "window"),
    ({"prompt": "a", "options": {"tile": 64}}, "method 'direct' has no option tile"),
    ({"prompt": "a", "seed": -1}, "seed"),
    ({"prompt": "a", "steps": 0}, "steps"),
    ({"prompt": "a", "guidance": -2}, "guidance"),
    ({"prompt": "a", "scheduler": "nope"}, "unknown scheduler 'nope'"),
    ({"prompt": "a", "scheduler": "flow_euler"}, "does not fit a sd1 model"),
    ({"prompt": "a", "lora": "x.safetensors:0.5"}, "LoRA x.safetensors does not exist"),
    ({"prompt": "a", "id": "../x"}, "is not a file name"),
    ({"prompt": "a", "colour": "red"}, "unknown field 'colour'; the fields: id, prompt"),
    ({"prompt": "a", "method": "multidiffusion", "options": {"window": 256}}, "larger than the 16x16 latent canvas"),
    ({"prompt": "dup", "id": "same"}, None),
    ({"prompt": "dup2", "id": "same"}, "id 'same' is also row"),
]


def bad_jobs_file(path):
    lines = ['{"prompt": "fine one"}'] + [json.dumps(r) for r, _ in BAD_ROWS] + ["not json", '["a list"]']
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_bad_row_is_reported_at_once_with_its_row_number(model, tmp_path):
    jobs = bad_jobs_file(tmp_path / "jobs.jsonl")
    with pytest.raises(InvalidJobsError) as e:
        anysize.batch(model, jobs, tmp_path / "out", progress=False)
    errors = {err.row: err.message for err in e.value.errors}
    expected = {i + 2: msg for i, (_, msg) in enumerate(BAD_ROWS) if msg}
    expected[len(BAD_ROWS) + 2] = "not JSON"
    expected[len(BAD_ROWS) + 3] = "a job is a JSON object"
    assert sorted(errors) == sorted(expected), str(e.value)
    for row, msg in expected.items():
        assert msg in errors[row], (row, errors[row])
    assert f"row {len(BAD_ROWS) + 2} (line {len(BAD_ROWS) + 2}): not JSON" in str(e.value)
    assert not [p for p in (tmp_path / "out").iterdir()]  # nothing run, nothing written


def test_cli_reports_bad_rows_and_skip_invalid_runs_the_rest(capsys, model_dir, tmp_path):
    jobs = bad_jobs_file(tmp_path / "jobs.jsonl")
    rc = cli.main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--model", str(model_dir), "--steps", "2", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("anysize: error: ") and "are invalid" in err and "Traceback" not in err
    assert "row 9 (line 9): unknown method 'nope'" in err
    rc = cli.main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--model", str(model_dir), "--steps", "2", "-q",
                   "--skip-invalid"])
    assert rc == 1, capsys.readouterr().err
    records = summary(tmp_path / "out")
    done = [r for r in records if r["status"] == "done"]
    assert [r["row"] for r in done] == [1, len(BAD_ROWS)]  # the fine one and the first "same"
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == len(BAD_ROWS) + 1 and all(r["stage"] == "validation" and r["error"] for r in failed)


def test_cli_draws_the_bars_final_line_once(capsys, model_dir, tmp_path):
    from _progress_helpers import bar_lines

    (tmp_path / "p.txt").write_text("a cat\na dog\n")
    rc = cli.main(["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "out"), "--model", str(model_dir),
                   "--steps", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = [ln for ln in bar_lines(err) if ln["desc"] == "batch"]
    assert lines and [ln["n"] for ln in lines].count(2) == 1, err
    assert len(bar_lines(err)) == len(lines)  # its jobs' runs show no bars of their own


def test_csv_and_prompt_files_with_flag_defaults(capsys, model, model_dir, tmp_path):
    (tmp_path / "jobs.csv").write_text('id,prompt,seed,size,options\nfirst,"a cat, red",4,,\n,a dog,,64x64,{}\n')
    rc = cli.main(["batch", str(tmp_path / "jobs.csv"), "--out", str(tmp_path / "csv"), "--model", str(model_dir),
                   "--steps", "2", "--seed", "10", "-q"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "csv" / "first.json").read_text())
    assert meta["config"]["prompt"] == "a cat, red" and meta["config"]["seed"] == 4
    dog = [r for r in summary(tmp_path / "csv") if r["row"] == 2][0]
    dog_meta = json.loads((tmp_path / "csv" / f"{dog['id']}.json").read_text())["config"]
    assert (dog_meta["seed"], dog_meta["width"]) == (11, 64)  # --seed + row index
    (tmp_path / "prompts.txt").write_text("a cat, red\n\n")
    rc = cli.main(["batch", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "txt"), "--model", str(model_dir),
                   "--steps", "2", "--seed", "4", "-q"])
    assert rc == 0
    (png,) = (tmp_path / "txt").glob("*.png")
    assert png.read_bytes() == (tmp_path / "csv" / "first.png").read_bytes()  # same job, same bytes


def test_a_json_file_is_an_array_of_jobs_or_one_job(tmp_path):
    from anysize.batching.jobs import read_rows
    from anysize.errors import InvalidArgumentError

    (tmp_path / "jobs.json").write_text('[\n  {"id": "a", "prompt": "x"},\n  {"prompt": "y", "seed": 2},\n  3\n]\n')
    rows, errors = read_rows(tmp_path / "jobs.json")
    assert [(r.number, r.line, dict(r.values)) for r in rows] == [(1, 2, {"id": "a", "prompt": "x"}),
                                                                 (2, 3, {"prompt": "y", "seed": 2})]
    assert [(e.row, e.line) for e in errors] == [(3, 4)] and "a job is a JSON object" in errors[0].message
    (tmp_path / "one.json").write_text('{"id": "z", "prompt": "x"}')
    rows, errors = read_rows(tmp_path / "one.json")
    assert [dict(r.values) for r in rows] == [{"id": "z", "prompt": "x"}] and not errors
    for text, message in [('[{"prompt": "x"}', "not closed"), ('[{"prompt": "x"}] []', "followed by more"),
                          ('[{"prompt": "x"} {"prompt": "y"}]', "expected ',' or ']' at line 1"),
                          ('"a cat"', "holds a JSON str"), ('{"prompt": "x"}\n{"prompt": "y"}', ".jsonl"),
                          ('{"prompt": x}', "not JSON"), ("[]", "has no jobs")]:
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(InvalidArgumentError, match=re.escape(message)):
            read_rows(tmp_path / "bad.json")


def test_a_prompt_file_line_that_is_a_json_job_is_refused(capsys, tmp_path):
    # it would otherwise run with the JSON text as its prompt
    (tmp_path / "jobs.txt").write_text('a cat\n{"id": "z", "prompt": "x"}\n')
    rc = cli.main(["batch", str(tmp_path / "jobs.txt"), "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "line 2 is a JSON object" in err and ".jsonl" in err and not (tmp_path / "o").exists()
    (tmp_path / "braces.txt").write_text("{a cat}\n")  # not JSON: an ordinary prompt
    from anysize.batching.jobs import read_rows

    assert [dict(r.values) for r in read_rows(tmp_path / "braces.txt")[0]] == [{"prompt": "{a cat}"}]


def test_a_batch_of_one_writes_what_generate_writes(capsys, model_dir, tmp_path):
    (tmp_path / "p.txt").write_text("a red square\n")
    assert cli.main(["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "b"), "--model", str(model_dir),
                     "--steps", "2", "--seed", "3", "-q"]) == 0
    assert cli.main(["generate", "a red square", "--model", str(model_dir), "--steps", "2", "--seed", "3",
                     "--out", str(tmp_path / "g.png"), "-q"]) == 0
    (png,) = (tmp_path / "b").glob("*.png")
    assert png.read_bytes() == (tmp_path / "g.png").read_bytes()


# ------------------------------------------------------------------------------------------ run time


def test_a_job_failing_at_run_time_is_recorded_and_the_others_finish(model, tmp_path, monkeypatch):
    from anysize import api

    real = api.generate

    def flaky(adapter, prompt, **kw):
        if "boom" in prompt[0]:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(adapter, prompt, **kw)

    monkeypatch.setattr(api, "generate", flaky)
    jobs = [{"prompt": "one", "steps": 2}, {"prompt": "boom", "steps": 2, "id": "bad"}, {"prompt": "three", "steps": 2}]
    result = anysize.batch(model, jobs, tmp_path / "out", progress=False)
    assert (result.done, result.failed) == (2, 1)
    bad = [r for r in result.records if r["id"] == "bad"][0]
    assert bad["status"] == "failed" and "out of memory (simulated)" in bad["error"] and bad["stage"] == "run"
    assert not (tmp_path / "out" / "bad.png").exists()
    stopped = anysize.batch(model, jobs, tmp_path / "ff", progress=False, fail_fast=True)
    assert stopped.stopped and (stopped.done, stopped.failed, stopped.pending) == (1, 1, 1)
    monkeypatch.setattr(api, "generate", real)  # the failure is gone: a rerun does the rest only
    again = anysize.batch(model, jobs, tmp_path / "out", progress=False)
    assert (again.ran, again.skipped, again.done) == (1, 2, 3)


def test_resume_redoes_only_what_is_missing_and_removes_temps(model, reference, tmp_path):
    jobs, expected = reference
    out = tmp_path / "out"
    first = anysize.batch(model, jobs, out, batch_size=2, progress=False)
    assert first.ran == 12
    (out / "second.png").unlink()  # a chunk half done: rerun whole, only the missing file written
    (out / ".second.png.0123abcd.tmp").write_bytes(b"half a png")  # what a kill -9 mid-write leaves
    kept = (out / "second.json").stat().st_mtime_ns
    again = anysize.batch(model, jobs, out, batch_size=2, progress=False)
    assert (again.ran, again.skipped) == (1, 11)
    assert outputs(out) == expected
    assert not list(out.glob(".*.tmp")) and (out / "second.json").stat().st_mtime_ns != kept
    records = summary(out)
    assert len(records) == 12 and all(r["status"] == "done" for r in records)
    (out / "second.json").write_text(json.dumps({"id": "second", "job": {"prompt": "other"}}))
    with pytest.raises(InvalidJobsError, match="was made by a different job"):
        anysize.batch(model, jobs, out, batch_size=2, progress=False)


# ------------------------------------------------------------------------------------------ processes


@pytest.mark.timeout(600)
def test_two_torchrun_ranks_write_the_same_bytes_as_one_process(model_dir, reference, tmp_path):
    jobs, expected = reference
    out = tmp_path / "out"
    cmd = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
           str(free_port()), "-m", "anysize", "batch", str(jobs), "--out", str(out), "--model", str(model_dir),
           "--batch", "2", "--quiet"]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=500, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert outputs(out) == expected
    records = summary(out)
    assert len(records) == 12 and {r["chunk"] for r in records} == set(range(7))  # 6 of 128x128, 1 of 64x128
    assert all(r["rank"] == r["chunk"] % 2 for r in records)  # chunks round-robin over the ranks
    assert {r["world_size"] for r in records} == {2}


@pytest.mark.timeout(600)
def test_kill_9_mid_run_then_rerun_gives_the_uninterrupted_files(model_dir, reference, tmp_path):
    jobs, expected = reference
    out = tmp_path / "out"
    cmd = anysize_cmd(jobs, "--out", out, "--model", model_dir, "--batch", "2", "--quiet")
    proc = subprocess.Popen(cmd, env=env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.is_dir() and len(list(out.glob("*.png"))) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(out.glob("*.json"))) < 12
    rerun = subprocess.run(cmd, env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert outputs(out) == expected
    assert not list(out.glob(".*.tmp"))
    records = summary(out)
    assert len(records) == 12 and all(r["status"] == "done" for r in records)


def _have_ray():
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.timeout(600)
@pytest.mark.skipif(not _have_ray() and not os.environ.get("CI"), reason="ray not installed (pip install anysize[ray])")
def test_ray_pool_of_two_workers_writes_the_same_files(model_dir, reference, tmp_path):
    jobs, expected = reference
    out = tmp_path / "out"
    e = env()
    e.pop("RAY_ADDRESS", None)
    proc = subprocess.run(anysize_cmd(jobs, "--out", out, "--model", model_dir, "--batch", "2", "--quiet",
                                      "--engine", "ray", "--workers", "2", "--worker-cpus", "1"),
                          env=e, cwd=tmp_path, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert outputs(out) == expected
    records = summary(out)
    assert len(records) == 12 and all(r["status"] == "done" and r["engine"] == "ray" for r in records)
    assert {r["worker"] for r in records} <= {0, 1}


# ------------------------------------------------------------------------------------------ eval metrics


def test_an_interrupted_eval_resumes_through_the_runner(model, tmp_path, monkeypatch):
    from anysize import api
    from anysize.eval.run import run_eval
    from anysize.testing.eval import TinyFeatureNet

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"a red triangle {i}", "seed": 10 + i}) + "\n"
                                for i in range(4)))
    kw = dict(adapter=model, manifest=manifest, steps=2, metrics=["is"], extractor=TinyFeatureNet(), warmup=0,
              progress=False)
    whole = run_eval(tmp_path / "whole", **kw)
    real, made = api.generate, []

    def interrupted(adapter, prompt, **k):
        if len(made) == 2:
            raise KeyboardInterrupt
        made.append(prompt)
        return real(adapter, prompt, **k)

    monkeypatch.setattr(api, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_eval(tmp_path / "cut", **kw)
    assert sorted(p.name for p in (tmp_path / "cut" / "images").glob("*.png")) == ["p0.png", "p1.png"]
    monkeypatch.setattr(api, "generate", real)
    resumed = run_eval(tmp_path / "cut", **kw)
    assert outputs(tmp_path / "cut" / "images") == outputs(tmp_path / "whole" / "images")
    assert resumed["metrics"] == pytest.approx(whole["metrics"])
    assert resumed["speed"]["resumed_images"] == 2 and resumed["speed"]["seconds_per_image"] > 0


def test_engine_errors_are_one_line_before_any_work(capsys, model_dir, tmp_path, monkeypatch):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 3)
    base = ["batch", str(jobs), "--out", str(tmp_path / "out"), "--model", str(model_dir)]
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    cases = [(["--engine", "ray"], "--engine ray needs Ray: pip install 'anysize[ray]'"),
             (["--engine", "spark"], "unknown engine 'spark'; valid choices: local, ray"),
             (["--workers", "2"], "--workers, --worker-gpus and --ray-address go with --engine ray"),
             (["--batch", "0"], "--batch must be a positive integer")]
    for extra, message in cases:
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delitem(sys.modules, "ray")
    assert cli.main(base + ["--engine", "ray"]) == 2
    assert "launch it once" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
