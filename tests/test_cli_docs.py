"""Help texts and the README's lists of choices say what the code does.

Every list of valid choices a user reads (schedulers, methods, families, dtypes, offload and
tiled-VAE modes, ...) is either generated from the code that defines it or compared with it here.
"""

import re
from pathlib import Path

import pytest

from anysize import cli, methods
from anysize.cli.bench import DEPTHS
from anysize.cli.methods import refining_methods
from anysize.cli.model_options import TILED_VAE_MODES
from anysize.models import DTYPES, FAMILIES, OFFLOADS
from anysize.models.config_files import LAYOUTS, size_factor
from anysize.schedulers import scheduler_names

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def help_of(capsys, *command: str) -> str:
    assert cli.main([*command, "--help"]) == 0
    return capsys.readouterr().out


def ticked(text: str) -> list[str]:
    """The `backticked` words of ``text``, in order."""
    return re.findall(r"`([^`]+)`", text)


def readme_bullet(start: str) -> str:
    """The README bullet that begins with ``start``, up to the next bullet or blank line."""
    m = re.search(rf"^\* {re.escape(start)}.*?(?=^\* |^$)", README, re.M | re.S)
    assert m, f"no README bullet starting with {start!r}"
    return m.group(0)


def readme_table(header: str) -> list[list[str]]:
    """The cells of the README table whose header row starts with ``header``."""
    m = re.search(rf"^\| {re.escape(header)} \|.*\n\|[-| ]+\|\n((?:\|.*\|\n)+)", README, re.M)
    assert m, f"no README table with header {header!r}"
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in m.group(1).splitlines()]


# ------------------------------------------------------------------------------------------ help texts


def test_top_help_describes_the_default_model_truthfully(capsys):
    out = help_of(capsys)
    assert "noise-like" not in out and "stand-in" not in out
    assert "the embedded default model: anysize's own toy model" in out
    # and generate --help says the same
    assert "anysize's own toy model" in help_of(capsys, "generate")


def test_generate_help_choices_come_from_the_code(capsys):
    from anysize.toy.data import OBJECT_COLOURS, SHAPES

    out = " ".join(help_of(capsys, "generate").split())  # argparse rewraps option help
    for name in methods.names():
        assert f"  {name} " in help_of(capsys, "generate")
    assert f"U-Net models (SD 1.x/2.x, SDXL): {', '.join(scheduler_names('diffusion'))}" in out
    assert f"flow models (SD3, FLUX): {', '.join(scheduler_names('flow'))}" in out
    assert f"generation method: {', '.join(methods.names())} (default: direct)" in out
    assert f"override the detected model family: {', '.join(FAMILIES)}" in out
    assert f"{', '.join(DTYPES)} (default: fp32)" in out
    assert f"{', '.join(OFFLOADS)}: move weights" in out
    assert f"{', '.join(TILED_VAE_MODES)}: decode in tiles" in out
    assert f"objects {', '.join(OBJECT_COLOURS[:-1])} or {OBJECT_COLOURS[-1]}; shapes {', '.join(SHAPES)})" in out
    # the pixel factor it states for the default model is the one its config files give
    factor = size_factor(None, None)[0]
    assert f"{factor} for the embedded toy model" in out


def test_other_help_choices_come_from_the_code(capsys):
    from anysize.buckets import RULES
    from anysize.bench import ARCHITECTURES
    from anysize.eval.metrics import METRICS
    from anysize.train.arad import MIXED_PRECISION

    out = " ".join(help_of(capsys, "upscale").split())
    assert f"tiled method: {', '.join(refining_methods())} (default: fstd)" in out
    out = " ".join(help_of(capsys, "bench").split())
    assert f"{', '.join(DTYPES)} (default: fp32)" in out
    assert f"{', '.join(DEPTHS[:-1])} or {DEPTHS[-1]} (default: auto)" in out
    assert all(f" {arch} " in out for arch in ARCHITECTURES)
    out = " ".join(help_of(capsys, "eval", "metrics").split())
    assert f"subset of {','.join(METRICS)}" in out
    out = " ".join(help_of(capsys, "train-arad").split())
    assert f"{', '.join(MIXED_PRECISION)} (default:" in out and f"{', '.join(RULES)}: nearest" in out


def test_default_device_help_says_what_default_device_picks(capsys, monkeypatch):
    import torch

    from anysize.cli.model_options import default_device

    for command in (["generate"], ["bench"]):
        assert "(default: cuda if available, else mps if available, else cpu)" in " ".join(
            help_of(capsys, *command).split())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert default_device() == "mps"


def test_train_arad_help_states_the_real_defaults(capsys):
    from anysize.train.arad import AradConfig

    d = AradConfig(data="", out="")
    m = re.search(r"\(Adam, lr (\S+), batch (\d+), (\d+) steps, constant LR\) with LoRA rank (\d+)",
                  " ".join(help_of(capsys, "train-arad").split()))
    assert m, "the defaults sentence of train-arad --help changed"
    assert (float(m[1]), int(m[2]), int(m[3]), int(m[4])) == (d.lr, d.batch, d.steps, d.rank)


def test_demo_help_states_the_demo_steps(capsys):
    from anysize.toy.demo import DEMO_STEPS

    assert f"(default: {DEMO_STEPS}, or the model's default if lower" in " ".join(help_of(capsys, "demo").split())


def test_family_layouts_cover_every_family():
    assert set(LAYOUTS) == set(FAMILIES)


# ------------------------------------------------------------------------------------------ README


def test_readme_scheduler_list_is_the_registry():
    diffusion, flow = readme_bullet("`--scheduler`").split("(U-Nets)")
    assert ticked(diffusion)[1:] == scheduler_names("diffusion")  # [0] is `--scheduler` itself
    assert ticked(flow) == scheduler_names("flow")


def test_readme_offload_choices():
    assert readme_bullet("`--set key=value`").count(f"`--offload {'|'.join(OFFLOADS[1:])}`") == 1
    m = re.search(r"`offload`\s+\(([^)]*)\)", README)
    assert m and ticked(m.group(1)) == list(OFFLOADS)


def test_readme_dtype_and_tiled_vae_choices():
    m = re.search(r"`dtype` \(([^)]*)\)", README)
    assert m and ticked(m.group(1)) == list(DTYPES)
    m = re.search(r"`tiled_vae` \(([^)]*)\)", README)
    assert m and ticked(m.group(1)) == [repr(v).replace("'", '"') for v in TILED_VAE_MODES.values()]


def test_readme_family_table_is_every_family():
    rows = readme_table("family")
    assert [ticked(row[0])[0] for row in rows] == list(FAMILIES)


def test_readme_methods_table_is_the_registry():
    rows = {ticked(row[0])[0]: row[2] for row in readme_table("method | what it does")}
    rows.pop("anysize upscale")  # the command, listed among the methods
    assert sorted(rows) == methods.names()
    for name, status in rows.items():
        families = getattr(methods.get(name), "families", None)
        if families:
            assert status == f"✅ {', '.join(families)}", name
        else:
            assert status == "✅ all five families", name


@pytest.mark.parametrize("start, end", [("| `anysize upscale` |", ";"), ("denoised by a method that refines a", ")")])
def test_readme_upscale_methods_are_the_refining_methods(start, end):
    i = README.index(start)
    listed = [n for n in ticked(README[i:README.index(end, i)]) if n != "anysize upscale"]
    assert sorted(listed) == sorted(refining_methods())


def test_sdpa_choices_in_the_readme_and_help_are_the_code(capsys):
    from anysize.models import SDPA_BACKENDS

    assert readme_bullet("`--compile`").count(f"`--sdpa {'|'.join(SDPA_BACKENDS)}`") == 1
    m = re.search(r"and `sdpa`\s+\(([^)]*)\)", README)
    assert m and ticked(m.group(1)) == list(SDPA_BACKENDS)
    for command in (["generate"], ["upscale"], ["batch"], ["app"], ["bench"]):
        out = " ".join(help_of(capsys, *command).split())
        assert f"--sdpa BACKEND attention kernel of every network call: {', '.join(SDPA_BACKENDS)} (default: auto" in out
        assert "--compile torch.compile the denoiser (opt-in): the first network call of each input shape" in out
