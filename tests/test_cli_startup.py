"""The command line starts without torch: ``--help``, ``--version`` and ``methods`` import none of the heavy libraries.

Each check runs in a fresh interpreter, since this test process has long imported torch. Whether
that makes ``anysize --help`` fast is measured, not asserted: no timed assertions in tests.
"""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import anysize
from anysize import cli

ROOT = Path(anysize.__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "gradio")


def fresh(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter that imports this checkout of anysize."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def run_main(argv: list[str]) -> tuple[int, str, str, list[str]]:
    """``cli.main(argv)`` in a fresh interpreter: exit code, stdout, stderr, heavy modules imported."""
    code = f"""
import contextlib, io, json, sys
from anysize import cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = cli.main({argv!r})
print(json.dumps({{"rc": rc, "out": out.getvalue(), "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    proc = fresh(code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    return result["rc"], result["out"], proc.stderr, result["heavy"]


def test_help_imports_no_torch_and_prints_no_warnings():
    rc, out, err, heavy = run_main(["--help"])
    assert rc == 0 and "commands:" in out and "generate" in out
    assert heavy == []
    assert err == ""


#: every command's --help needs nothing heavy (the tables that eval, bench and train-arad print live in
#: torch-free modules: anysize.eval.protocol, anysize.bench's lazy torch, anysize.train.config)
LIGHT_HELP = ["generate", "upscale", "batch", "demo", "app", "methods", "eval", "eval composition", "eval metrics",
              "eval plot", "eval manifest", "bench", "train-arad"]


@pytest.mark.parametrize("command", LIGHT_HELP)
def test_command_help_imports_no_torch(command):
    rc, out, err, heavy = run_main([*command.split(), "--help"])
    assert rc == 0 and f"usage: anysize {command}" in out
    assert heavy == []


def test_every_command_is_checked_for_a_light_help():
    assert set(cli.COMMANDS) == {c.split()[0] for c in LIGHT_HELP}


def test_methods_lists_every_option_without_importing_torch():
    """The registry and the option declarations import torch lazily (:mod:`anysize.lazy`)."""
    rc, out, err, heavy = run_main(["methods"])
    assert rc == 0 and err == "" and heavy == []
    assert "elastic: " in out and "resampling_steps (int)" in out
    rc, out, err, heavy = run_main(["methods", "scalediff"])
    assert rc == 0 and heavy == [] and out.startswith("scalediff: ")


def test_version_reads_package_metadata_without_importing_them():
    rc, out, err, heavy = run_main(["--version"])
    assert rc == 0 and err == "" and heavy == []
    assert out.strip() == (f"anysize {anysize.__version__} (diffusers {metadata.version('diffusers')}, "
                           f"torch {metadata.version('torch')})")


def test_import_anysize_is_lazy():
    proc = fresh(
        "import sys, anysize\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
        "print(sorted(set(anysize.__all__) - set(dir(anysize))))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[]", "[]"]
    assert proc.stderr == ""


def test_lazy_names_are_the_real_objects():
    from anysize import api, methods

    assert anysize.generate is api.generate and anysize.load is api.load and anysize.upscale is api.upscale
    assert anysize.GenerationResult is api.GenerationResult
    assert anysize.METHODS is methods.METHODS and anysize.patch is api.patch
    from anysize import AnysizeError, errors

    assert AnysizeError is errors.AnysizeError
    # submodules stay reachable as attributes, as when this package imported them eagerly
    assert anysize.tiling_grids.__name__ == "anysize.tiling_grids"
    with pytest.raises(AttributeError):
        anysize.no_such_name  # noqa: B018


def test_methods_prints_no_warnings():
    proc = fresh("from anysize import cli; raise SystemExit(cli.main(['methods']))")
    assert proc.returncode == 0
    assert proc.stdout.startswith("asd: ") and "direct: " in proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_a_command_configured_alone_has_the_same_help(command, capsys):
    """main() configures only the chosen command; its help must not depend on the others."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    every = capsys.readouterr().out
    assert cli.main([command, "--help"]) == 0
    assert capsys.readouterr().out == every
    assert "options:" in every


def test_unknown_command(capsys):
    assert cli.main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'nope'" in err and "generate" in err


def test_size_factor_stays_importable_from_the_cli():
    from anysize.cli import size_factor
    from anysize.models.config_files import size_factor as in_models

    assert size_factor is in_models


def test_config_files_module_imports_no_torch():
    """The module the CLI reads config files with imports nothing heavy (loaded alone: anysize.models'
    own __init__ imports torch for the adapters)."""
    module_file = str(ROOT / "anysize" / "models" / "config_files.py")
    proc = fresh(
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('config_files', {module_file!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        f"print(module.config_file({str(ROOT / 'anysize/toy/model')!r}, 'model_index.json') is not None)\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["True", "[]"]


def test_a_lazy_module_reads_its_version_but_refuses_other_dunders():
    # machine descriptions read torch.__version__ through the stand-in (anysize.eval.timing imports torch lazily)
    proc = fresh(
        "import sys\n"
        "from anysize.eval.timing import machine\n"
        "assert 'torch' not in sys.modules\n"
        "from anysize.lazy import LazyModule\n"
        "m = LazyModule('json')\n"
        "import json\n"
        "assert m.__version__ == json.__version__\n"
        "try:\n"
        "    m.__deepcopy__\n"
        "except AttributeError:\n"
        "    print('refused')\n"
        "import torch\n"
        "print(machine()['torch'] == torch.__version__)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["refused", "True"]
