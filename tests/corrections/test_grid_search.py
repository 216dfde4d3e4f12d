"""GITS and learned grids: the dynamic programme against closed forms and exhaustive search, the cost matrix against
the exact Gaussian solution, each method beating its base solver on held-out noise, `diffsolve tune`, and the
corrections shipped for the built-in MNIST UNet."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from diffsolve import Sampler
from diffsolve.problems import GaussianProblem
from diffsolve.corrections import (gits_cost_matrix, gits_dynamic_programming, gits_grid, learn_grid,
                                   load_correction)
from diffsolve.corrections.grid_search import differentiable_run
from diffsolve.corrections.io import SHIPPED
from diffsolve.corrections.teacher import noise_for
from diffsolve.field import as_field
from diffsolve.grids import karras







def rmse(sampler, noise, ref, **run):
    out = sampler.run(noise=noise, **run)
    return float((out.samples - ref).pow(2).mean(dim=1).sqrt().mean())


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6])
def test_dynamic_programme_finds_equal_spacing_for_a_squared_gap_cost(steps):
    """With C[i, j] = (u_j - u_i)^2 and no weighting the optimum spaces the jumps equally (by convexity)."""
    K = 13
    u = torch.linspace(0, 1, K, dtype=torch.float64)
    C = (u[None, :] - u[:, None]) ** 2
    C = torch.where(torch.arange(K)[None, :] > torch.arange(K)[:, None], C, torch.full_like(C, math.inf))
    path, cost = gits_dynamic_programming(C, steps, weight=1.0)
    assert path == [round(k * (K - 1) / steps) for k in range(steps + 1)]
    assert cost == pytest.approx(1.0 / steps)


def _gaussian_states(gp: GaussianProblem, times: torch.Tensor, n: int) -> torch.Tensor:
    z = torch.randn(n, gp.mean.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x0 = z * float(times[0])
    return torch.stack([gp.ode_solution(x0, float(times[0]), float(t)) for t in times])


def test_cost_matrix_is_the_exact_euler_jump_error_on_a_gaussian():
    gp = GaussianProblem.default(dim=4)
    t = karras(8, gp.schedule, final="zero")
    states = _gaussian_states(gp, t, 32)
    C = gits_cost_matrix(as_field(gp), t, states)
    v, m = gp.var, gp.mean
    i, j = 2, 5
    si, sj = float(t[i]), float(t[j])
    # x_s = m + sqrt(v + s^2) z, D = m + v / (v + s^2) (x - m): one Euler jump misses by z times this factor
    g = lambda s: torch.sqrt(v + s * s)  # noqa: E731
    factor = g(si) + (sj - si) * si / g(si) - g(sj)
    z = (states[i] - m) / g(si)
    expect = (z * factor).pow(2).mean(1).sqrt().mean()
    assert float(C[i, j]) == pytest.approx(float(expect), rel=1e-9)
    assert math.isinf(float(C[j, i])) and math.isinf(float(C[i, i]))


def test_dynamic_programme_matches_exhaustive_search_with_the_gits_weight():
    gp = GaussianProblem.default(dim=4)
    t = karras(9, gp.schedule, final="zero")
    C = gits_cost_matrix(as_field(gp), t, _gaussian_states(gp, t, 16))
    K, steps, w = t.numel(), 3, 1.15
    best = None
    for inner in itertools.combinations(range(1, K - 1), steps - 1):
        path = [0, *inner, K - 1]
        cost = sum(w ** (k - 1) * float(C[path[k - 1], path[k]]) for k in range(1, steps + 1))
        if best is None or cost < best[0]:
            best = (cost, path)
    path, cost = gits_dynamic_programming(C, steps, weight=w)
    assert path == best[1] and cost == pytest.approx(best[0])


@pytest.mark.parametrize("steps", [5, 16])      # DEIS lowers its order on the last steps below 15 steps
def test_differentiable_run_is_the_library_solver(gmm, steps):
    from diffsolve.corrections.grid_search import DIFFERENTIABLE_BASES
    noise = noise_for(as_field(gmm), range(6), dtype=torch.float64)
    t = karras(steps, gmm.schedule)
    for base in DIFFERENTIABLE_BASES:
        a = Sampler(gmm, base, grid=t, progress=False).run(noise=noise).samples
        s = [torch.tensor(float(v), dtype=torch.float64) for v in t[:-1]] + [0.0]
        b = differentiable_run(as_field(gmm), noise * float(t[0]), s, base)
        assert torch.allclose(a, b, atol=1e-9), base


@pytest.mark.parametrize("base,nfe", [("ipndm", 3), ("euler", 5)])
def test_gits_grid_beats_the_default_grid(gmm, held_out, base, nfe):
    noise, ref = held_out
    g = gits_grid(gmm, base=base, nfe=(nfe,), n=64, teacher="fine", dtype=torch.float64, log=None)
    (steps, grid), = g.grids.items()
    assert grid[0] == gmm.schedule.t_max and grid[-1] == 0.0 and len(grid) == steps + 1
    tuned = rmse(Sampler(gmm, base, grid=list(grid), progress=False), noise, ref)
    plain = rmse(Sampler(gmm, base, progress=False), noise, ref, nfe=nfe)
    assert tuned < 0.9 * plain, (tuned, plain)


def test_learned_grid_beats_the_default_grid(gmm, held_out, tmp_path):
    noise, ref = held_out
    g = learn_grid(gmm, base="ipndm", nfe=(3, 5), n=64, epochs=8, teacher="fine", dtype=torch.float64, log=None)
    for steps, grid in g.grids.items():
        tuned = rmse(Sampler(gmm, "ipndm", grid=list(grid), progress=False), noise, ref)
        plain = rmse(Sampler(gmm, "ipndm", progress=False), noise, ref, nfe=steps)
        assert tuned < 0.8 * plain, (steps, tuned, plain)
    path = g.save(tmp_path / "learned.safetensors")
    back = load_correction(path, field=as_field(gmm))
    assert back.kind == "learned" and back.grids == g.grids


def test_learned_grid_keeps_the_best_of_several_starts(gmm):
    one = learn_grid(gmm, base="deis", nfe=(3,), n=32, epochs=2, teacher="fine", dtype=torch.float64, log=None)
    many = learn_grid(gmm, base="deis", nfe=(3,), n=32, epochs=2, teacher="fine", dtype=torch.float64, log=None,
                      starts=("karras", "time_uniform"))
    # the first fit of `many` is `one` (same generator state), so the kept one is never worse on the training loss
    assert min(many.meta["loss_history"]["3"]) <= min(one.meta["loss_history"]["3"])
    assert many.meta["starts"] == ["karras", "time_uniform"]


@pytest.mark.slow
def test_tune_command_writes_a_reproducible_file(tmp_path, capsys):
    from diffsolve.cli import main
    outs = []
    for k in range(2):
        out = tmp_path / f"g{k}.safetensors"
        assert main(["tune", "grid", "--model", "gmm", "--nfe", "3", "--n", "16", "--epochs", "2",
                     "--out", str(out)]) == 0
        outs.append(load_correction(out))
    assert outs[0].grids == outs[1].grids
    text = capsys.readouterr().out
    assert "loss" in text and "wrote" in text
    out = tmp_path / "a.safetensors"
    assert main(["tune", "amed", "--model", "gmm", "--solver", "ipndm", "--nfe", "5", "--n", "16", "--epochs", "1",
                 "--out", str(out)]) == 0
    corr = load_correction(out)
    assert corr.base == "ipndm" and sorted(corr.grids) == [3]
    assert main(["tune", "amed", "--model", "gmm", "--solver", "ipndm", "--nfe", "5", "--n", "16", "--epochs", "1",
                 "--grid-epochs", "1", "--from-grid", "--loss", "endpoint", "--out", str(out)]) == 0
    assert load_correction(out).meta["loss"] == "endpoint"


SHIPPED_FILES = sorted(SHIPPED.glob("*.safetensors"))


def test_shipped_corrections_are_small():
    assert SHIPPED_FILES, "no shipped corrections"
    total = sum(p.stat().st_size + p.with_name(p.name + ".json").stat().st_size for p in SHIPPED_FILES)
    assert total < 1_000_000


def test_shipped_corrections_run_on_the_builtin_unet():
    from diffsolve.models import load_mnist_unet
    model = load_mnist_unet()
    out = Sampler(model, "amed_plugin", base="ipndm", progress=False).run(nfe=5, batch_size=2, seed=0)
    assert out.nfe == 5 and torch.isfinite(out.samples).all()
    out = Sampler(model, "amed", progress=False).run(nfe=3, batch_size=1, seed=0)
    assert out.nfe == 3
    for grid in ("gits", "learned"):
        out = Sampler(model, "ipndm", grid=grid, progress=False).run(nfe=5, batch_size=1, seed=0)
        assert out.nfe == 5 and out.t[-1] == 0.0


@pytest.mark.slow
def test_learned_grid_with_data_mean_afs_as_an_amed_table(gmm, held_out):
    """A 2M-step iPNDM grid learned with the data-mean AFS is AMED-Plugin(iPNDM) with per-step constants; a feature
    predictor started from those constants reproduces them before any training."""
    from diffsolve.corrections import train_amed
    from diffsolve.corrections.io import to_amed_table
    noise, ref = held_out
    g = learn_grid(gmm, base="ipndm", nfe=(5,), n=64, epochs=6, afs=True, teacher="fine", dtype=torch.float64,
                   log=None)
    assert sorted(g.grids) == [6]                       # 6 steps for 5 model calls: the first step is free
    (tab,) = to_amed_table(g, gmm).values()
    a = Sampler(gmm, "amed_plugin", base="ipndm", predictor=tab, progress=False).run(nfe=5, noise=noise)
    assert a.nfe == 5
    plain = rmse(Sampler(gmm, "ipndm", progress=False), noise, ref, nfe=5)
    assert float((a.samples - ref).pow(2).mean(1).sqrt().mean()) < 0.8 * plain
    net = train_amed(gmm, base="ipndm", init=tab, epochs=0, teacher="fine", n_train=8, dtype=torch.float64,
                     log=None)
    b = Sampler(gmm, "amed_plugin", base="ipndm", predictor=net, progress=False).run(nfe=5, noise=noise)
    assert torch.allclose(a.samples, b.samples, atol=1e-4)


def test_readme_corrections_block_runs():
    import contextlib
    import io
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "docs/learned-corrections.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "amed_plugin" in b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "docs/learned-corrections.md", "exec"), {})
    assert out.getvalue().split() == ["5"]


def test_report_table_layout():
    from diffsolve.corrections.report import LEARNED, table
    row = {"best_baseline": {"name": "ipndm / karras", "rmse": 0.2, "nfe": 5}, "ratio": 0.5,
           "learned": {lab: {"rmse": 0.1, "nfe": 5} for lab, *_ in LEARNED}}
    text = table({"rows": {"5": row}, "train_seconds": {lab: 60.0 for lab, *_ in LEARNED}})
    assert "| 5 | ipndm / karras | 0.2000 |" in text and "0.50x" in text
    assert "| training (s, wall) | | | 60 |" in text and all(lab in text for lab, *_ in LEARNED)


def test_fd_lines_report_the_floor_and_both_ratios():
    from diffsolve.corrections.report import fd_lines
    f = {"n": 1000, "exact": {"fd": 143.0}, "learned": {"name": "L", "fd": 150.0, "fd_to_exact": 2.0},
         "best_un-learned_fd": {"name": "a / b", "fd": 200.0}, "best_un-learned_fd_to_exact": {"name": "c / d",
                                                                                                "fd_to_exact": 20.0},
         "ratio_fd": 0.75, "ratio_fd_to_exact": 0.1}
    text = fd_lines(5, f)
    assert "exact ODE samples 143.0 (the floor)" in text and "(a / b) 200.0; ratio 0.75x" in text
    assert "best learned 2.0; best un-learned (c / d) 20.0; ratio 0.10x" in text


@pytest.mark.parametrize("name", ["build_corrections", "corrections_report", "peer_report"])
def test_scripts_show_their_help(name, capsys):
    from corrections.scripts_loader import load_script
    with pytest.raises(SystemExit) as info:
        load_script(name).main(["--help"])
    assert info.value.code == 0 and "usage: python scripts/" in capsys.readouterr().out
