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
    assert main(["bench", "--preset", "adaptive", "--rtols", "abc"]) == 2
    assert "--rtols" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "nope"])
