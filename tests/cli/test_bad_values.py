"""The command line's contract: bad values and unusable folders fail first, in one line, with exit status 2; the bench
runs adaptive and stochastic solvers and scores them for what they are; progress lines off a terminal; `sample`,
`--version` and `solvers --verbose`."""
from __future__ import annotations

import dataclasses

import inspect
import json

import pytest
import torch
from bench.test_run_bench import _TinyImages as TinyImages

import diffsolve
from diffsolve import Sampler
from diffsolve.bench import run_bench
from diffsolve.bench import cells as bench_cells
from diffsolve.bench import running as bench_running
from diffsolve.checks import check_writable
from diffsolve.bench.models import BenchModel
from diffsolve.problems import GaussianMixtureProblem, GaussianProblem
from diffsolve.evaluation.reference import ReferenceSettings
from diffsolve.cli import main, solver_options
from diffsolve.errors import InvalidArgument
from diffsolve.field import ModelSpec
from diffsolve.noise import draw_noise
from diffsolve.solvers import registry_entries

PNG = b"\x89PNG\r\n\x1a\n"
CHEAP = ReferenceSettings(method="dopri5", rtol=1e-8, atol=1e-8)


def _no_work(monkeypatch):
    """Any model build or reference solve fails the test: the checks must come before them."""
    def boom(*a, **k):
        pytest.fail("work started before the arguments and folders were checked")
    monkeypatch.setattr(bench_cells, "solve_reference", boom)
    monkeypatch.setattr(bench_running, "resolve_model", boom)
    monkeypatch.setattr("diffsolve.bench.models.resolve_model", boom)


def _one_error_line(err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert "error:" in lines[-1], err
    for n in needles:
        assert n in lines[-1], (n, err)


# ------------------------------------------------------------------------------------------------
# Folders: checked before any work
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["--out", "--cache-dir"])
def test_unwritable_folder_fails_before_any_work(tmp_path, monkeypatch, capsys, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")          # a path under a regular file is unwritable even for root
    _no_work(monkeypatch)
    argv = ["bench", "--model", "gaussian", "--solvers", "euler", "--nfe", "4", "--batch-size", "4",
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    argv[argv.index(option) + 1] = str(blocker / "sub")
    assert main(argv) == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err, option, "not a writable folder")
    assert captured.out == ""
    with pytest.raises(InvalidArgument, match="--out"):
        run_bench("gaussian", out=blocker / "sub", cache=False)


def test_sample_checks_its_folder_first(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _no_work(monkeypatch)
    assert main(["sample", "--model", "gmm", "--nfe", "4", "--out", str(blocker / "o")]) == 2
    _one_error_line(capsys.readouterr().err, "--out")


def test_probe_leaves_nothing_behind(tmp_path):
    assert check_writable(tmp_path / "new" / "deep", "--out").is_dir()
    assert list((tmp_path / "new" / "deep").iterdir()) == []


def test_table_is_printed_when_writing_fails(tmp_path, monkeypatch, capsys):
    def fail(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(bench_running, "write_outputs", fail)
    code = main(["bench", "--model", "gaussian", "--solvers", "euler", "--nfe", "4,8", "--batch-size", "4",
                 "--no-trajectory", "--no-cache", "--ref-method", "dopri5", "--ref-rtol", "1e-6",
                 "--progress", "none", "--out", str(tmp_path / "out")])
    assert code == 1
    captured = capsys.readouterr()
    assert "endpoint RMSE vs reference" in captured.out and "euler" in captured.out
    _one_error_line(captured.err, "--out", "No space left")


# ------------------------------------------------------------------------------------------------
# Values: validating types, one line, exit status 2
# ------------------------------------------------------------------------------------------------
BAD = [
    (["bench", "--batch-size", "0"], "--batch-size"),
    (["bench", "--chunk-size", "0"], "--chunk-size"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--ref-rtol", "0"], "--ref-rtol"),
    (["bench", "--ref-atol", "nan"], "--ref-atol"),
    (["bench", "--seed", str(2 ** 70)], "--seed"),
    (["bench", "--seed", "-1"], "--seed"),
    (["bench", "--device", "cuda:99"], "--device"),
    (["bench", "--device", "nonsense"], "--device"),
    (["bench", "--nfe", "0,4"], "--nfe"),
    (["bench", "--ref-method", "euler"], "--ref-method"),
    (["bench", "--progress", "sometimes"], "--progress"),
    (["bench", "--preset", "diffusers", "--ref-steps", "1"], "--ref-steps"),
    (["sample", "--seeds", str(2 ** 63)], "--seeds"),
    (["sample", "--seeds", "5-2"], "--seeds"),
    (["sample", "--nfe", "0"], "--nfe"),
    (["sample", "--nfe", "4", "--steps", "4"], "--steps"),
    (["sample", "--device", "cuda:99"], "--device"),
    (["evaluate", "--n", "1"], "--n"),
    (["evaluate", "--steps", "0"], "--steps"),
    (["evaluate", "--seed", "-3"], "--seed"),
    (["evaluate", "--models", "builtin,nope"], "--models"),
    (["evaluate", "--grid-nfe", "5,0"], "--grid-nfe"),
]


@pytest.mark.parametrize("argv,option", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_line_and_status_2(monkeypatch, capsys, argv, option):
    _no_work(monkeypatch)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    _one_error_line(capsys.readouterr().err, option)


def test_api_rejects_what_the_command_line_rejects(monkeypatch):
    _no_work(monkeypatch)
    for bad in ({"batch_size": 0}, {"chunk_size": 0}, {"threads": 0}, {"seed": 2 ** 70}, {"seed": -1},
                {"device": "cuda:99"}, {"progress": "sometimes"}):
        with pytest.raises(InvalidArgument):
            run_bench("gaussian", cache=False, **bad)


@pytest.mark.slow
def test_defaults_are_not_substituted_for_given_values():
    # threads=1 / chunk_size=1 are honoured as given (no `value or default`): 3 chunks of one sample.
    rep = run_bench("gaussian", ["euler"], [4], batch_size=3, chunk_size=1, threads=1, cache=False, verbose=False,
                    progress="none", trajectory=False, reference=CHEAP)
    assert rep["config"]["chunk_size"] == 1 and rep["config"]["batch_size"] == 3
    assert len(rep["reference"]["nfe_per_chunk"]) == 3


# ------------------------------------------------------------------------------------------------
# Adaptive and stochastic solvers in the bench
# ------------------------------------------------------------------------------------------------
def test_adaptive_solver_runs_and_a_budget_overrun_marks_only_its_cell(tmp_path, capsys):
    B, seed = 8, 2
    rep = run_bench("gaussian", ["dpm_adaptive", "euler"], [4, 64], batch_size=B, seed=seed, cache=False,
                    reference=CHEAP, out=tmp_path, plots=False, progress="none")
    text = capsys.readouterr().out
    by = {(r["solver"], r["nfe_requested"]): r for r in rep["results"]}
    over = by[("dpm_adaptive", 4)]
    assert over["status"] == "budget" and over["rmse_mean"] is None and "budget" in over["why"]
    ok = by[("dpm_adaptive", 64)]
    assert ok["status"] == "ok" and ok["kind"] == "adaptive"
    # Independent check: the same run by hand, against the exact solution of the Gaussian's probability-flow ODE.
    prob = GaussianProblem.default(dim=16)
    noise = draw_noise((B, 16), seed=[seed * 2 ** 24 + i for i in range(B)], dtype=torch.float64)
    res = Sampler(prob, "dpm_adaptive", progress=False).run(nfe=64, noise=noise)
    assert ok["nfe"] == res.nfe <= 64                       # what it used, not the budget
    t0, t_min = float(res.t[0]), prob.schedule.t_min
    exact = prob.denoise(prob.ode_solution(noise * prob.schedule.prior_std(t0), t0, t_min), t_min)
    rmse = (res.samples - exact).pow(2).mean(1).sqrt().mean()
    assert ok["rmse_mean"] == pytest.approx(float(rmse), rel=1e-5)
    assert rep["orders"]["dpm_adaptive"] is None and rep["orders"]["euler"] is not None
    assert all(by[("euler", n)]["status"] == "ok" for n in (4, 64))
    js = json.loads((tmp_path / "bench.json").read_text())
    row = next(r for r in js["results"] if r["solver"] == "dpm_adaptive" and r["nfe_requested"] == 4)
    assert row["rmse_mean"] is None and row["status"] == "budget"
    line = next(ln for ln in text.splitlines() if ln.startswith("dpm_adaptive"))
    assert "budget" in line


@pytest.mark.slow
def test_stochastic_solver_is_scored_by_distribution_not_endpoint(capsys):
    B = 64
    opts = dict(batch_size=B, seed=1, cache=False, reference=CHEAP, trajectory=False, progress="none")
    rep = run_bench("gmm", ["euler_ancestral", "euler"], [8, 16], **opts)
    text = capsys.readouterr().out
    rows = {(r["solver"], r["nfe_requested"]): r for r in rep["results"]}
    sde = rows[("euler_ancestral", 16)]
    assert sde["kind"] == "sde" and sde["rmse_mean"] is None and sde["maxabs_max"] is None
    assert sde["sliced_w1"] > 0 and sde["sw1_reference"] > 0 and "loglik_mean" in sde
    assert rep["orders"]["euler_ancestral"] is None and rep["orders"]["euler"] is not None
    # Independent check: the step noise comes from the per-sample seeds, so a hand-made run agrees exactly.
    prob = GaussianMixtureProblem.default()
    seeds = [1 * 2 ** 24 + i for i in range(B)]
    noise = draw_noise((B, prob.dim), seed=seeds, dtype=torch.float64)
    res = Sampler(prob, "euler_ancestral", progress=False).run(nfe=16, noise=noise, seed=seeds)
    assert sde["loglik_mean"] == pytest.approx(float(prob.log_prob(res.samples).mean()), rel=1e-9)
    # Not in the endpoint-error table; in the distribution tables.
    endpoint = text.split("endpoint RMSE vs reference")[1].split("\n\n")[0]
    assert "euler_ancestral" not in endpoint and "euler " in endpoint
    assert "sliced W1 to the reference solve's samples" in text
    again = run_bench("gmm", ["euler_ancestral"], [16], verbose=False, **opts)
    assert again["results"][0]["sliced_w1"] == sde["sliced_w1"]


# ------------------------------------------------------------------------------------------------
# Progress lines outside a terminal
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_progress_lines_when_stderr_is_not_a_terminal(capsys):
    opts = dict(batch_size=4, chunk_size=2, cache=False, reference=CHEAP, trajectory=False, verbose=False)
    run_bench("gaussian", ["euler", "heun"], [4, 8], **opts)         # auto: stderr is captured, not a TTY
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "] " in ln]
    for solver in ("euler", "heun"):
        for n in (4, 8):
            for c in (1, 2):
                assert any(f"{solver} NFE {n}:" in ln and f"chunk {c}/2" in ln and "endpoint RMSE" in ln
                           and " s " in ln for ln in lines), (solver, n, c, err)
    assert sum("reference" in ln for ln in lines) == 2
    run_bench("gaussian", ["euler"], [4], progress="none", **opts)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------------
# sample, --version, solvers --verbose
# ------------------------------------------------------------------------------------------------
def _load(path):
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["diffsolve"])


@pytest.mark.slow
def test_sample_writes_tensors_and_scatter_and_depends_only_on_seeds(tmp_path, capsys):
    assert main(["sample", "--model", "gmm", "--solver", "dpmpp_2m", "--nfe", "10", "--seeds", "0-3",
                 "--out", str(tmp_path / "a")]) == 0
    assert "samples.safetensors" in capsys.readouterr().out
    tensors, meta = _load(tmp_path / "a" / "samples.safetensors")
    assert tensors["seeds"].tolist() == [0, 1, 2, 3] and tuple(tensors["samples"].shape) == (4, 16)
    assert meta["solver"] == "dpmpp_2m" and meta["nfe"] <= 10 and meta["model"] == "gmm"
    assert (tmp_path / "a" / "samples.png").read_bytes()[:8] == PNG
    assert not list((tmp_path / "a").glob("*.tmp"))
    prob = GaussianMixtureProblem.default()
    ref = Sampler(prob, "dpmpp_2m", progress=False).run(nfe=10, seed=[0, 1, 2, 3], batch_size=4,
                                                       dtype=torch.float64).samples
    assert torch.allclose(tensors["samples"], ref, rtol=0, atol=1e-12)
    # A stochastic solver: seed 3 alone gives the same sample as within 0-3.
    for name, seeds in (("b", "0-3"), ("c", "3")):
        assert main(["sample", "--model", "gmm", "--solver", "euler_ancestral", "--nfe", "6", "--seeds", seeds,
                     "--out", str(tmp_path / name), "--no-plot"]) == 0
    b, _ = _load(tmp_path / "b" / "samples.safetensors")
    c, _ = _load(tmp_path / "c" / "samples.safetensors")
    assert torch.equal(b["samples"][3], c["samples"][0])
    assert not (tmp_path / "c" / "samples.png").exists()


class _TinyImages(TinyImages):
    """The bench tests' tiny image model, declaring a data range for the sample grid."""

    @property
    def diffsolve_spec(self) -> ModelSpec:
        return dataclasses.replace(super().diffsolve_spec, data_range=(-2.0, 2.0))


def tiny_images() -> BenchModel:
    return BenchModel("tiny-images", _TinyImages, "test images", kind="image")


def test_sample_writes_an_image_grid(tmp_path):
    assert main(["sample", "--model", f"{__name__}:tiny_images", "--solver", "euler", "--steps", "3",
                 "--seeds", "0-4", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "samples.png").read_bytes()[:8] == PNG
    tensors, meta = _load(tmp_path / "samples.safetensors")
    assert tuple(tensors["samples"].shape) == (5, 1, 4, 4) and meta["kind"] == "image" and meta["steps"] == 3


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"diffsolve {diffsolve.__version__}"


def test_solvers_verbose_lists_options_from_the_code(capsys):
    assert main(["solvers", "--verbose"]) == 0
    out = capsys.readouterr().out
    entries = registry_entries()
    for name, entry in entries.items():
        assert f"\n{name} " in "\n" + out, name
        sig = inspect.signature(entry.factory)
        for opt, typ, default, by_name in solver_options(entry):
            p = sig.parameters[opt]
            want = entry.fixed.get(opt, entry.defaults.get(opt, p.default))
            assert default == repr(want) and by_name == (opt in entry.defaults or opt in entry.fixed)
            assert f"    {opt}: {typ} = {default}" in out
    assert "    rtol: float = 0.05" in out                                   # dpm_adaptive's own default
    assert "    tableau: str = 'heun'   (fixed by this name)" in out
    assert "    eta: float = 1.0   (this name's default)" in out             # ddim_eta takes eta
    assert main(["solvers"]) == 0
    assert "rtol:" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# README
# ------------------------------------------------------------------------------------------------
def test_the_docs_document_the_commands():
    from pathlib import Path
    text = "".join(p.read_text() for p in (Path(diffsolve.__file__).parent / "docs").rglob("*.md"))
    for needle in ("diffsolve sample", "--version", "solvers --verbose", "--progress", "budget"):
        assert needle in text, needle
