"""`diffsolve bench --preset ...`: each preset runs on a tiny setting and prints its table (the shared MNIST DDPM
part of the diffusers preset is skipped: it is the slow one)."""
from __future__ import annotations

import pytest

from diffsolve.cli import main


def test_preset_diffusers_on_the_mixture(capsys):
    assert main(["bench", "--preset", "diffusers", "--skip-mnist", "--batch-size", "8", "--nfe", "3,5",
                 "--ref-steps", "100", "--solvers", "euler,dpmpp_2m"]) == 0
    out = capsys.readouterr().out
    assert "| diffsolve (mixture) | NFE 3 | NFE 5 |" in out
    rows = [line for line in out.splitlines() if line.startswith(("| euler |", "| dpmpp_2m |"))]
    assert len(rows) == 2 and all(len(r.split("|")) == 5 for r in rows)
    assert "MNIST" not in out


def test_preset_adaptive(capsys):
    assert main(["bench", "--preset", "adaptive", "--batch-size", "4", "--rtols", "1e-2"]) == 0
    out = capsys.readouterr().out
    assert "| solver | rtol | NFE | accepted | rejected | RMSE | seconds |" in out
    for label in ("reference dopri5", "DPM-Solver-12", "DPM-Solver-23", "dopri5", "bosh3", "DPM-Solver-23 defaults"):
        assert f"| {label} |" in out


def test_preset_sde(capsys):
    assert main(["bench", "--preset", "sde", "--batch-size", "32", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "| sampler | steps | NFE | sliced W1 | log-lik | seconds |" in out and "Noise floor" in out
    for label in ("euler_ancestral", "dpmpp_2m_sde", "torchsde_euler (log-SNR steps)"):
        assert f"| {label} | 3 |" in out


def test_preset_options_are_checked(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "--preset", "adaptive", "--rtols", "abc"])
    assert info.value.code == 2 and "--rtols" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "nope"])


@pytest.mark.parametrize("argv,flag", [
    (["--preset", "adaptive", "--solvers", "euler"], "--solvers"),
    (["--preset", "skip", "--steps", "3"], "--steps"),
    (["--preset", "sde", "--model", "gaussian"], "--model"),
    (["--preset", "learned", "--no-plots"], "--no-plots"),
    (["--preset", "overhead", "--no-progress"], "--progress/--no-progress"),
    (["--rtols", "1e-3"], "--rtols"),
    (["--quick"], "--quick"),
    (["--repeats", "3"], "--repeats"),
])
def test_an_option_the_run_does_not_read_is_refused_by_name(capsys, argv, flag):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert f"error: {flag} " in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["--preset", "skip", "--steps", "0"], ["--preset", "sde", "--steps", "0"],
                                  ["--preset", "overhead", "--repeats", "0"]])
def test_zero_is_refused_not_replaced(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["bench", *argv])
    assert info.value.code == 2 and f"argument {argv[2]}" in capsys.readouterr().err


def test_preset_settings_refuse_what_the_preset_does_not_read():
    from diffsolve.bench.presets import PresetSettings
    from diffsolve.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="solvers"):
        PresetSettings("adaptive", solvers=("euler",))
    with pytest.raises(InvalidArgument, match="steps"):
        PresetSettings("sde", steps=(0,))
    with pytest.raises(InvalidArgument, match="ref_steps"):
        PresetSettings("diffusers", ref_steps=1)
    assert PresetSettings("sde", steps=(3,), quick=True).steps == (3,)


@pytest.mark.slow
def test_preset_learned_lists_every_shipped_correction_with_its_training_cost(capsys):
    from diffsolve.corrections.report import shipped_learned
    assert main(["bench", "--preset", "learned", "--batch-size", "2", "--nfe", "3"]) == 0
    out = capsys.readouterr().out
    shipped = shipped_learned()
    assert len(shipped) >= 6 and all(f" {label} |" in out for label, *_ in shipped)
    cost = next(line for line in out.splitlines() if line.startswith("| training (s, wall) |"))
    assert "?" not in cost and len(cost.split("|")) == len(shipped) + 6
    assert next(line for line in out.splitlines() if line.startswith("| 3 |")).endswith("x |")


@pytest.mark.slow
def test_preset_skip_quick_on_one_solver(capsys, tmp_path):
    assert main(["bench", "--preset", "skip", "--quick", "--models", "mnist-unet", "--solvers", "euler",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| mnist-unet | euler | 5 |" in out and (tmp_path / "skip_tuning.json").is_file()
    assert (tmp_path / "skip_tuning_nfe5.png").is_file()
