"""The built-in MNIST consistency model (Song et al. 2023), its distillation and its sampler."""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
import torch

from diffsolve.cli.main import main
from diffsolve.field import model_spec_of
from diffsolve.models import load_mnist_consistency
from diffsolve.models.builtin import WEIGHTS, load_feature_stats, load_mnist_classifier, load_mnist_unet
from diffsolve.models.consistency import ConsistencyUNet
from diffsolve.models.data import load_mnist
from diffsolve.models.quality import sample_model, score
from diffsolve.errors import InvalidArgument
from diffsolve.training.configs import CONSISTENCY_STAGES, AdversarialConfig, ConsistencyConfig
from diffsolve.training.consistency import (consistency_levels, teacher_trajectories, train_consistency,
                                            train_consistency_adversarial)
from diffsolve.sampler import Sampler
from diffsolve.schedules import EDMSchedule

ROOT = Path(__file__).resolve().parents[2]
FILE = WEIGHTS / "mnist_consistency.safetensors"
# Noise seeds the shipped model never trained on (its training generator is seeded with ConsistencyConfig.seed).
HELD_OUT_SEED = 2024


@pytest.fixture(scope="module")
def cm():
    return load_mnist_consistency()


class Counting(torch.nn.Module):
    """Counts forward calls of the wrapped model and keeps its spec."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    @property
    def diffsolve_spec(self):
        return self.inner.diffsolve_spec

    def forward(self, x, sigma):
        self.calls += 1
        return self.inner(x, sigma)


def test_boundary_is_the_identity_and_the_network_acts_above_it(cm):
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        assert torch.equal(cm(x, torch.full((5,), 0.002)), x)
        assert torch.equal(cm(x, 0.002), x)
        # a random (untrained) network too: the identity comes from the parameterization, not the weights
        torch.manual_seed(0)
        fresh = ConsistencyUNet()
        for p in fresh.parameters():
            p.data.normal_(0, 0.1)
        assert torch.equal(fresh(x, 0.002), x)
        assert not torch.allclose(fresh(x, 0.5), x, atol=1e-3)
        assert not torch.allclose(cm(x, 1.0), x, atol=1e-2)


def test_spec_and_strict_loader(cm, tmp_path):
    spec = model_spec_of(cm)
    assert spec.prediction == "denoiser" and spec.solver == "consistency"
    assert isinstance(spec.schedule, EDMSchedule)
    assert (spec.schedule.sigma_min, spec.schedule.sigma_max) == pytest.approx((0.002, 80.0), rel=1e-12)
    assert spec.sample_shape == (1, 28, 28) and spec.data_range == (-1.0, 1.0)
    assert not any(p.requires_grad for p in cm.parameters()) and not cm.training
    assert FILE.stat().st_size < 2_000_000
    from safetensors import safe_open
    with safe_open(str(FILE), framework="pt") as f:
        meta = json.loads(f.metadata()["config"])
    assert 0 < meta["train_seconds"] < 3600          # all stages together
    # the shipped file is the documented recipe: the CD stages, then the adversarial stage with its defaults
    assert meta["stage"] == "adversarial" and meta["trained_iters"] == AdversarialConfig.iters
    assert meta["adv_weight"] == AdversarialConfig.adv_weight and meta["solver"] == AdversarialConfig.solver
    cd = meta["continued_from"]
    assert (cd["lr"], cd["seed"], cd["trained_iters"]) == CONSISTENCY_STAGES[-1]
    assert (cd["continued_from"]["lr"], cd["continued_from"]["seed"],
            cd["continued_from"]["trained_iters"]) == CONSISTENCY_STAGES[0]
    # strict keys: a state dict with a missing or an extra tensor is refused
    state = {k: v for k, v in cm.state_dict().items()}
    missing = tmp_path / "missing.safetensors"
    from safetensors.torch import save_file
    save_file({k: v for k, v in list(state.items())[1:]}, str(missing), metadata={"config": json.dumps(meta)})
    with pytest.raises(InvalidArgument, match="another model.*Missing key"):
        load_mnist_consistency(missing)
    extra = tmp_path / "extra.safetensors"
    save_file({**state, "net.bogus": torch.zeros(1)}, str(extra), metadata={"config": json.dumps(meta)})
    with pytest.raises(InvalidArgument, match="another model.*Unexpected key"):
        load_mnist_consistency(extra)
    # the UNet's own weights (without the `net.` prefix) are not a consistency model
    with pytest.raises(InvalidArgument, match="another model"):
        load_mnist_consistency(WEIGHTS / "mnist_unet.safetensors")


def test_weights_are_package_data():
    import tomllib
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["diffsolve.models"]
    rel = FILE.relative_to(ROOT / "models").as_posix()
    assert any(fnmatch.fnmatch(rel, g) for g in globs)


def test_one_step_sampling_is_one_call_and_in_range(cm):
    counted = Counting(cm)
    res = Sampler(counted).run(steps=1, batch_size=4, seed=0)
    assert res.solver == "consistency" and res.nfe == 1 and counted.calls == 1
    x = res.samples
    assert x.shape == (4, 1, 28, 28) and torch.isfinite(x).all()
    # in the data range [-1, 1] up to an overshoot (the GAN stage's samples overshoot more than the UNet's:
    # 4% of pixels beyond 1.1 in size on 64 samples, 0.5% for the UNet at 10 steps)
    assert float(x.abs().max()) < 2.0 and float((x.abs() > 1.1).float().mean()) < 0.1
    # it is f(x_T, sigma_max) itself: the same noise through the model by hand gives the same samples
    noise = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    s = Sampler(cm, progress=False)
    out = s.solve(s.plan(1), noise)
    with torch.no_grad():
        direct = cm(noise * 80.0, torch.full((4,), 80.0))
    assert torch.allclose(out.samples, direct, atol=1e-5)


def test_multistep_sampling_calls_once_per_step(cm):
    counted = Counting(cm)
    res = Sampler(counted, progress=False).run(steps=4, batch_size=3, seed=1)
    assert res.nfe == 4 and counted.calls == 4 and torch.isfinite(res.samples).all()


def _tiny(seed: int) -> ConsistencyConfig:
    return ConsistencyConfig(iters=3, batch_size=4, levels_per_batch=2, n_levels=6, warmup=1, seed=seed, log_every=0)


@pytest.fixture(scope="module")
def teacher():
    return load_mnist_unet()


@pytest.mark.slow
def test_tiny_distillation_is_deterministic_and_uses_a_diffsolve_solver_step(teacher, monkeypatch):
    data = load_mnist("train")[0][:64]
    from diffsolve.solvers.runge_kutta import RungeKutta
    calls = []
    real_step = RungeKutta.step

    def spy(self, ev, x, t0, t1, state, coeffs):
        calls.append((self.name, float(t0.s), float(t1.s), x.shape[0]))
        return real_step(self, ev, x, t0, t1, state, coeffs)

    monkeypatch.setattr(RungeKutta, "step", spy)
    a = train_consistency(_tiny(3), teacher=teacher, data=data, log=lambda s: None)
    levels = consistency_levels(_tiny(3)).tolist()
    # one Heun step per level group, between neighbouring levels of the discretization, down towards eps
    assert len(calls) == 3 * 2 and all(name == "heun" for name, *_ in calls)
    for _, s0, s1, m in calls:
        i = min(range(len(levels)), key=lambda j: abs(levels[j] - s0))
        assert abs(levels[i] - s0) < 1e-9 * s0 and i > 0 and abs(levels[i - 1] - s1) < 1e-9 * s0 and m == 2
    b = train_consistency(_tiny(3), teacher=teacher, data=data, log=lambda s: None)
    c = train_consistency(_tiny(4), teacher=teacher, data=data, log=lambda s: None)
    assert a.losses == b.losses
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.losses != c.losses
    # the target really is the solver's: if the solver step returned its input unchanged, the losses would differ
    monkeypatch.setattr(RungeKutta, "step", lambda self, ev, x, t0, t1, state, coeffs: (x, None, state))
    d = train_consistency(_tiny(3), teacher=teacher, data=data, log=lambda s: None)
    assert d.losses[0] != a.losses[0]


@pytest.mark.slow
def test_one_step_samples_beat_the_teachers_one_euler_step(cm, teacher):
    clf, ref = load_mnist_classifier(), load_feature_stats()
    x_cm, nfe = sample_model(cm, 200, solver="consistency", steps=1, seed=HELD_OUT_SEED)
    x_t, nfe_t = sample_model(teacher, 200, solver="euler", steps=1, seed=HELD_OUT_SEED)
    assert nfe == nfe_t == 1
    fd_cm, fd_t = score(clf, x_cm, ref)["fd"], score(clf, x_t, ref)["fd"]
    # the untrained student (the teacher's weights) scores as the teacher here: ratio 1.0; the shipped model 0.08
    assert fd_cm < 0.25 * fd_t, (fd_cm, fd_t)


def _tiny_adversarial(**kw) -> AdversarialConfig:
    return AdversarialConfig(**{"trajectories": 4, "levels": 3, "chunk": 2, "iters": 3, "batch_size": 4,
                                "log_every": 0, **kw})


def test_teacher_trajectories_are_the_solvers_solutions_on_jittered_karras_grids(teacher):
    from diffsolve.noise import draw_noise
    states, sigmas = teacher_trajectories(teacher, 4, 5, "dpmpp_3m", seed=3, chunk=2)
    assert states.shape == (6, 4, 1, 28, 28) and sigmas.shape == (6, 4)
    assert torch.all(sigmas[0] == 80.0) and torch.all(sigmas[-1] == 0.0)
    assert torch.allclose(sigmas[-2], torch.full((4,), 0.002))
    assert torch.all(sigmas[1:] < sigmas[:-1])
    # one grid per chunk, shifted by a random fraction of a step: the student sees every noise level
    assert torch.equal(sigmas[:, 0], sigmas[:, 1]) and not torch.equal(sigmas[:, 0], sigmas[:, 2])
    # each trajectory is the diffsolve solver's run from per-sample seeded noise on its own grid
    for j in (0, 2):
        noise = draw_noise((2, 1, 28, 28), seed=[3 * 1_000_003 + j + i for i in range(2)])
        assert torch.allclose(states[0, j:j + 2], 80.0 * noise, atol=1e-5)
        s = Sampler(teacher, "dpmpp_3m", grid=sigmas[:-1, j].double().tolist() + [0.0], progress=False)
        with torch.no_grad():
            out = s.solve(s.plan(), noise)
        assert out.nfe == 5 and torch.allclose(states[-1, j:j + 2], out.samples, atol=1e-4)
    again = teacher_trajectories(teacher, 4, 5, "dpmpp_3m", seed=3, chunk=2)
    assert torch.equal(again[0], states) and torch.equal(again[1], sigmas)
    with pytest.raises(InvalidArgument, match="levels"):
        teacher_trajectories(teacher, 4, 1, "dpmpp_3m", seed=3)


@pytest.mark.slow
def test_adversarial_stage_is_deterministic_regresses_on_endpoints_and_its_critic_acts(cm, teacher):
    data = load_mnist("train")[0][:32]
    init = {k: v.clone() for k, v in cm.state_dict().items()}
    cfg = _tiny_adversarial()
    traj = teacher_trajectories(teacher, cfg.trajectories, cfg.levels, cfg.solver, cfg.seed, cfg.chunk)

    def run(**kw):
        return train_consistency_adversarial(_tiny_adversarial(**kw), init=init, teacher=teacher, data=data,
                                             trajectories=traj, log=lambda s: None)
    a, b = run(), run()
    assert a.losses == b.losses and len(a.losses) == 3
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert run(seed=13).losses != a.losses
    # the critic's term moves the student: with adv_weight 0 the same batches give other weights
    plain = run(adv_weight=0.0)
    assert plain.extra["regression"][0] == a.extra["regression"][0]
    assert any(not torch.equal(va, vb) for va, vb in zip(a.model.state_dict().values(),
                                                           plain.model.state_dict().values()))
    assert plain.losses == plain.extra["regression"]
    # the regression target is the trajectory's endpoint: moving the endpoints moves the loss
    moved = (traj[0].clone(), traj[1])
    moved[0][-1] += 1.0
    c = train_consistency_adversarial(_tiny_adversarial(), init=init, teacher=teacher, data=data,
                                      trajectories=moved, log=lambda s: None)
    assert c.extra["regression"][0] > a.extra["regression"][0] + 1.0


def test_consistency_cli_refuses_bad_stages(tmp_path, capsys):
    threads = str(torch.get_num_threads())
    assert main(["train", "--what", "consistency", "--stages", "adversarial", "--out", str(tmp_path),
                 "--threads", threads]) == 2
    assert "--resume" in capsys.readouterr().err
    for bad in (["--stages", "cd,foo"], ["--set", "nope=1"], ["--set", "lr=fast"], ["--set-adversarial", "lr"],
                ["--iters", "0"], ["--lr", "0"]):
        with pytest.raises(SystemExit) as info:
            main(["train", "--what", "consistency", *bad, "--out", str(tmp_path)])
        assert info.value.code == 2 and bad[0] in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_evaluate_grid_rows_follow_the_solver(tmp_path, monkeypatch, capsys):
    from diffsolve.cli import evaluate
    settings = evaluate.EvaluateSettings(models=("consistency",), solver="consistency", steps=1)
    assert evaluate._grid_rows("consistency", settings) == [("consistency", b) for b in (1, 2, 4)]
    assert evaluate._grid_rows("builtin", settings) == [(s, b) for s in ("heun", "dpmpp_2m") for b in (5, 10, 50)]

    def no_sampling(*a, **k):
        pytest.fail("sampling started before the grid rows were checked")
    monkeypatch.setattr(evaluate, "sample_model", no_sampling)
    assert main(["evaluate", "--models", "consistency", "--solver", "consistency", "--steps", "1", "--grid-nfe",
                 "2,50", "--grid-out", str(tmp_path), "--threads", str(torch.get_num_threads())]) == 2
    err = capsys.readouterr().err
    assert "--grid-nfe" in err and "50 NFE" in err and "Traceback" not in err
