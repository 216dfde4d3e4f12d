"""`diffsolve bench` / run_bench: outputs exist, and the numbers agree with an independent computation."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from diffsolve import Sampler
from diffsolve.evaluation import metrics
from diffsolve.problems import GaussianMixtureProblem, GaussianProblem
from diffsolve.evaluation.reference import ReferenceSettings
from diffsolve.bench import BENCH_MODELS, BenchModel, run_bench
from diffsolve.cli import main
from diffsolve.errors import InvalidArgument
from diffsolve.field import ModelSpec
from diffsolve.schedules import VPDiscrete

PNG = b"\x89PNG\r\n\x1a\n"


def _seeded_noise(seed: int, n: int, d: int) -> torch.Tensor:
    """The documented rule: sample i draws float32 normals from its own generator seeded seed * 2**24 + i."""
    rows = [torch.randn(d, generator=torch.Generator().manual_seed(seed * 2 ** 24 + i)) for i in range(n)]
    return torch.stack(rows).to(torch.float64)


def _independent_reference(problem: GaussianMixtureProblem, noise: torch.Tensor) -> torch.Tensor:
    """scipy DOP853 on dx/du = x - D(x, e^u), u = log s from log 80 down to log 0.002, then D there (EDM, alpha=1)."""
    smax, smin = problem.schedule.sigma_max, problem.schedule.sigma_min
    shape = noise.shape
    x0 = (noise * smax).reshape(-1).numpy()

    def rhs(u, y):
        x = torch.from_numpy(y).reshape(shape)
        return (x - problem.denoise(x, math.exp(u))).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(smax), math.log(smin)), x0, method="DOP853", rtol=1e-11, atol=1e-11)
    assert sol.success
    x_min = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(shape)
    return problem.denoise(x_min, smin)


@pytest.mark.slow
def test_bench_gmm_outputs_and_numbers_match_independent_computation(tmp_path, capsys):
    out = tmp_path / "out"
    B, seed = 48, 3
    rep = run_bench("gmm", ["euler", "dpmpp_2m"], [8, 16], batch_size=B, seed=seed, out=out,
                    cache_dir=tmp_path / "cache", progress=False)
    printed = capsys.readouterr().out
    assert "endpoint RMSE vs reference" in printed and "dpmpp_2m" in printed and "NFE 16" in printed
    for name in ("bench.json", "bench.csv", "error_vs_nfe.png"):
        assert (out / name).is_file(), name
    assert (out / "error_vs_nfe.png").read_bytes()[:8] == PNG
    assert not list(out.glob("*.tmp"))
    js = json.loads((out / "bench.json").read_text())
    rows = {(r["solver"], r["nfe_requested"]): r for r in js["results"]}
    assert set(rows) == {("euler", 8), ("euler", 16), ("dpmpp_2m", 8), ("dpmpp_2m", 16)}

    problem = GaussianMixtureProblem.default()
    noise = _seeded_noise(seed, B, problem.dim)
    ref = _independent_reference(problem, noise)
    for (solver, n), row in rows.items():
        res = Sampler(problem, solver, progress=False).run(nfe=n, noise=noise)
        assert row["nfe"] == res.nfe <= n and row["steps"] == res.steps
        rmse = (res.samples - ref).pow(2).mean(dim=1).sqrt()
        assert row["rmse_mean"] == pytest.approx(float(rmse.mean()), rel=1e-6)
        assert row["rmse_p90"] == pytest.approx(float(torch.quantile(rmse, 0.9)), rel=1e-6)
        assert row["maxabs_max"] == pytest.approx(float((res.samples - ref).abs().max()), rel=1e-6)
        assert row["loglik_mean"] == pytest.approx(float(problem.log_prob(res.samples).mean()), rel=1e-9)
        assert row["rmse_mean"] > 1e3 * js["reference"]["gap_endpoint_rmse"]
    # More steps, less error; DPM-Solver++(2M) beats Euler at equal NFE on this smooth problem.
    assert rows[("euler", 16)]["rmse_mean"] < rows[("euler", 8)]["rmse_mean"]
    assert rows[("dpmpp_2m", 16)]["rmse_mean"] < rows[("euler", 16)]["rmse_mean"]
    assert js["reference"]["sliced_w1"] < rows[("euler", 8)]["sliced_w1"]
    with open(out / "bench.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4
    for r in table:
        assert float(r["rmse_mean"]) == pytest.approx(rows[(r["solver"], int(r["nfe_requested"]))]["rmse_mean"],
                                                      rel=1e-12)
    assert rep["results"] == js["results"]


def test_cli_bench_gaussian_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["bench", "--model", "gaussian", "--solvers", "euler,heun", "--nfe", "4,8,16", "--batch-size", "16",
                 "--out", str(out), "--cache-dir", str(tmp_path / "c"), "--no-progress", "--no-plots"])
    assert code == 0
    text = capsys.readouterr().out
    assert "reference vs exact solution" in text and "order" in text
    js = json.loads((out / "bench.json").read_text())
    assert js["reference"]["exact_endpoint_maxabs"] < 1e-8
    assert js["orders"]["euler"] == pytest.approx(1.0, abs=0.35)
    assert not (out / "error_vs_nfe.png").exists()

    assert main(["bench", "--solvers", "nope", "--out", str(out)]) == 2
    assert "allowed values" in capsys.readouterr().err
    with pytest.raises(InvalidArgument, match="model"):
        run_bench("no-such-model", out=None)


@pytest.mark.slow
def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "diffsolve", "solvers"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "euler" in proc.stdout and "dpmpp_2m" in proc.stdout


class _TinyImages(torch.nn.Module):
    """A Gaussian problem shown as 1 x 4 x 4 images: exercises the image path (sample grid) cheaply."""

    def __init__(self):
        super().__init__()
        self.inner = GaussianProblem.default(dim=16)

    @property
    def diffsolve_spec(self) -> ModelSpec:
        return ModelSpec(prediction="x0", schedule=self.inner.schedule, sample_shape=(1, 4, 4))

    def identity(self) -> str:
        return "tiny-images:" + self.inner.identity()

    def forward(self, x, t_model):
        return self.inner(x.reshape(x.shape[0], -1), t_model).reshape(x.shape)


def tiny_images_entry() -> BenchModel:
    return BenchModel("tiny-images", _TinyImages, "test images", kind="image", batch_size=4, chunk_size=2,
                      nfe=(4, 8), reference=ReferenceSettings(method="dopri5", rtol=1e-7, atol=1e-7),
                      trajectory=False)


@pytest.mark.slow
def test_module_attr_models_and_image_grid(tmp_path):
    rep = run_bench(f"{__name__}:tiny_images_entry", ["euler"], None, out=tmp_path, cache=False, progress=False,
                    verbose=False)
    assert rep["model"]["kind"] == "image" and rep["config"]["chunk_size"] == 2
    assert (tmp_path / "samples.png").read_bytes()[:8] == PNG
    assert all(r["status"] == "ok" for r in rep["results"])
    # A factory path: called to build the model; defaults picked from its sample shape.
    rep = run_bench("diffsolve.problems:GaussianProblem.default", ["euler"], [4], batch_size=4, cache=False,
                    progress=False, verbose=False)
    assert rep["results"][0]["status"] == "ok" and rep["model"]["kind"] == "vector"


def test_registry_and_infeasible_budgets_are_reported():
    assert {"gmm", "gaussian"} <= set(BENCH_MODELS)
    rep = run_bench("gaussian", ["midpoint", "euler"], [1, 4], batch_size=4, cache=False, progress=False,
                    verbose=False)
    by = {(r["solver"], r["nfe_requested"]): r for r in rep["results"]}
    assert by[("midpoint", 1)]["status"].startswith("skipped") and "too small" in by[("midpoint", 1)]["status"]
    assert by[("euler", 1)]["status"] == "ok" and by[("midpoint", 4)]["status"] == "ok"


def test_sliced_wasserstein_basics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64)
    assert metrics.sliced_wasserstein(x, x, seed=1) == 0.0
    shift = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    d = metrics.sliced_wasserstein(x, x + shift, n_proj=2000, seed=1)
    # For a pure shift the 1-D distance along direction u is |u . shift|; E|u_1| on the 3-sphere is 1/2.
    assert d == pytest.approx(2.0 * 0.5, rel=0.05)
    assert metrics.sliced_wasserstein(x, x + shift, seed=1) == metrics.sliced_wasserstein(x, x + shift, seed=1)
    y = torch.randn(1000, 3, generator=g, dtype=torch.float64)
    assert metrics.sliced_wasserstein(x, y) < 0.2 < metrics.sliced_wasserstein(x, y + shift)
    assert metrics.convergence_order([4, 8, 16], [1.0, 0.25, 0.0625]) == pytest.approx(2.0)
    assert metrics.convergence_order([4], [1.0]) is None


class _EpsMixture(torch.nn.Module):
    """A Gaussian mixture on a DDPM (linear betas, T=1000) schedule that predicts eps: a model diffusers can drive."""

    def __init__(self):
        super().__init__()
        self.inner = GaussianMixtureProblem.default(dim=4, components=3, schedule=VPDiscrete.linear())

    @property
    def diffsolve_spec(self) -> ModelSpec:
        return ModelSpec(prediction="eps", schedule=self.inner.schedule, sample_shape=(4,))

    def identity(self) -> str:
        return "eps:" + self.inner.identity()

    def forward(self, x, t_model):
        sch = self.inner.schedule
        t = sch.t_from_model_time(t_model.to(torch.float64))
        a, s = sch.alpha(t).to(x)[:, None], sch.sigma(t).to(x)[:, None]
        return (x - a * self.inner.denoise(x, t)) / s


@pytest.mark.slow
def test_diffusers_peers_on_a_discrete_vp_eps_model():
    pytest.importorskip("diffusers")
    rep = run_bench(_EpsMixture(), ["ddim", "dpmpp_2m"], [5, 10], batch_size=16, cache=False, progress=False,
                    verbose=False)
    peers = {(p["peer"], p["nfe"]): p for p in rep["peers"]}
    assert {name for name, _ in peers} == {"diffusers.DDIMScheduler", "diffusers.DPMSolverMultistepScheduler"}
    assert all(p["status"] == "ok" for p in peers.values())
    ours = {(r["solver"], r["nfe_requested"]): r["rmse_mean"] for r in rep["results"]}
    for (name, n), p in peers.items():
        assert p["ratio_ours_to_theirs"] == pytest.approx(ours[(p["ours"], n)] / p["rmse_mean"])
        # Our default grid here is diffusers' trailing timesteps, so the same update gives the same samples.
        assert p["ratio_ours_to_theirs"] == pytest.approx(1.0, rel=1e-3)
    assert peers[("diffusers.DDIMScheduler", 10)]["rmse_mean"] < peers[("diffusers.DDIMScheduler", 5)]["rmse_mean"]
    # A model diffusers cannot drive (x0 prediction on the EDM schedule) has no peers.
    rep = run_bench("gaussian", ["euler"], [4], batch_size=4, cache=False, progress=False, verbose=False)
    assert rep["peers"] == []
