"""`tune auto` and what every tune reports: the winner of each NFE is never worse on held-out seeds than the best
plain solver (a plain solver is kept where nothing learned beats it), model evaluations are counted as a counting
network sees them, the teacher is chosen by the sample shape, and features='auto' says when it finds no bottleneck."""
from __future__ import annotations

import re

import pytest
import torch
from conftest import Counting

from diffsolve import InvalidArgument, Sampler
from diffsolve.corrections import GridCorrection, SolverChoice, load_correction, train_amed, tune
from diffsolve.corrections import pas_tuner
from diffsolve.corrections.auto import VALIDATION_SEEDS, AutoTuneSettings, auto_candidates
from diffsolve.corrections.teacher import noise_for, teacher_states
from diffsolve.corrections.teacher_choice import choose_teacher
from diffsolve.corrections.tuners import GridTuneSettings
from diffsolve.corrections.tuning import TUNERS, TuneContext, TuneSettings, register_tuner
from diffsolve.evaluation.reference import ReferenceSettings
from diffsolve.field import ModelSpec, VectorField, as_field
from diffsolve.models.toy2d import load_moons_8gaussians


class UnitGaussianDenoiser(torch.nn.Module):
    """The exact denoiser of N(0, I) data under EDM (x = x0 + sigma eps): D = x / (1 + sigma^2); two tiny layers so
    that it has modules (none of them a known bottleneck)."""

    def __init__(self, shape=(16,)):
        super().__init__()
        self.shape = shape
        self.encoder = torch.nn.Identity()
        self.head = torch.nn.Identity()

    @property
    def diffsolve_spec(self):
        return ModelSpec("x0", "edm", self.shape)

    def forward(self, x, t):
        s = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return self.head(self.encoder(x)) / (1 + s * s)


def _spent(lines) -> int:
    line = next(ln for ln in lines if ln.startswith("spent "))
    return int(re.search(r"and ([\d,]+) model evaluations", line).group(1).replace(",", ""))


@pytest.mark.slow
def test_tune_auto_keeps_per_nfe_winners_never_worse_than_the_best_plain_solver(gmm, tmp_path):
    lines = []
    st = AutoTuneSettings(nfe=(3, 5), budget=2.0, samples=16, val_samples=16, ref_rtol=1e-7,
                          out=str(tmp_path / "auto.safetensors"))
    path = tune("auto", gmm, st, TuneContext(model_name="gmm", dtype=torch.float64, log=lines.append))
    corr = load_correction(path, as_field(gmm))
    assert sorted(corr.entries) == [3, 5] and sorted(p.name for p in tmp_path.iterdir()) == [
        "auto.safetensors", "auto.safetensors.json"]
    text = "\n".join(lines)
    assert "NFE  candidate" in text and all(f"{c}[deis]" in text for c in auto_candidates())
    rows = corr.meta["table"]
    field = as_field(gmm)
    seeds = list(range(VALIDATION_SEEDS, VALIDATION_SEEDS + 16))
    noise = noise_for(field, seeds, dtype=torch.float64)
    target = teacher_states(field, noise, [field.schedule.t_max, 0.0], seeds=seeds,
                            settings=ReferenceSettings(method="dopri5", rtol=1e-7, atol=1e-7))[-1]
    for nfe in (3, 5):
        plain = min(r["held_out_rmse"] for r in rows if r["nfe"] == nfe and r["candidate"].startswith("un-learned"))
        kept = [r for r in rows if r["nfe"] == nfe and r["kept"]]
        assert len(kept) == 1 and kept[0]["held_out_rmse"] <= plain
        # the file's run of that NFE, judged again on the held-out seeds, is the error the table reports
        got = Sampler(gmm, correction=path, progress=False).run(nfe=nfe, noise=noise).samples
        assert float((got - target).pow(2).mean().sqrt()) == pytest.approx(kept[0]["held_out_rmse"], rel=1e-6)
    assert corr.meta["cost"]["model_evaluations"]["validation"] > 0 and _spent(lines) > 0


def _bad_grid(model, st, ctx):
    """A deliberately poor correction: Euler with every step crowded at the largest noise."""
    sch = as_field(model).schedule
    n = st.nfe[0]
    t = [sch.t_max * (1 - 0.001 * i) for i in range(n)] + [0.0]
    return GridCorrection("learned", {n: tuple(t)}, "euler", as_field(model).correction_identity()).save(st.out_path())


@pytest.mark.slow
def test_when_no_candidate_wins_the_file_keeps_the_plain_solver_and_says_so(gmm, tmp_path):
    register_tuner("crowded-grid", TuneSettings, _bad_grid, "a poor grid", auto={"samples": 4})
    try:
        lines = []
        st = AutoTuneSettings(nfe=(4,), budget=1.0, val_samples=8, candidates=("crowded-grid",), ref_rtol=1e-6,
                              out=str(tmp_path / "auto.safetensors"))
        path = tune("auto", gmm, st, TuneContext(dtype=torch.float64, log=lines.append))
    finally:
        TUNERS.pop("crowded-grid")
    entry = load_correction(path).entry(4)
    assert isinstance(entry, SolverChoice)
    assert re.search(r"NFE 4: un-learned \S+ / ", lines[-2])
    assert [r["kept"] for r in load_correction(path).meta["table"]] == [True, False]


def test_model_evaluations_printed_equal_what_the_network_saw(tmp_path):
    net = Counting(UnitGaussianDenoiser())
    lines = []
    st = GridTuneSettings(nfe=(3,), samples=8, epochs=1, solver="deis", teacher="fine",
                          out=str(tmp_path / "g.safetensors"))
    path = tune("grid", net, st, TuneContext(log=lines.append))
    assert _spent(lines) == net.samples > 0
    cost = load_correction(path).meta["cost"]["model_evaluations"]
    assert sum(cost.values()) == net.samples and cost["teacher"] > 0 and cost["training"] > 0
    assert any(ln.startswith("teacher: fine (dpmpp_3m, 96 steps), own RMSE") for ln in lines)


def test_the_teacher_is_chosen_by_the_sample_shape():
    image = VectorField(UnitGaussianDenoiser((3, 8, 8)))
    vector = VectorField(UnitGaussianDenoiser((16,)))
    wide = VectorField(UnitGaussianDenoiser((1024,)))
    assert choose_teacher(image, None) == "fine" and choose_teacher(wide, None) == "fine"
    assert choose_teacher(vector, None) == "reference" and choose_teacher(vector, None, image=True) == "fine"
    assert choose_teacher(image, "reference") == "reference"
    plain = VectorField(lambda x, t: -x, prediction="velocity", sample_shape=(3, 8, 8))
    assert choose_teacher(plain, None) == "reference"      # the fine teacher's grid needs a noise schedule


def test_auto_features_that_find_no_bottleneck_say_so_and_name_the_option():
    lines = []
    with pytest.warns(UserWarning, match=r"found none of the known bottleneck modules.*--module NAME.*encoder, head"):
        corr = train_amed(UnitGaussianDenoiser(), base="deis", nfe=(3,), n_train=4, epochs=1, teacher="fine",
                          log=lines.append)
    assert corr.predictor.features == "denoised"
    assert any("using the data prediction instead" in ln for ln in lines)


def test_auto_settings_refuse_bad_values():
    with pytest.raises(InvalidArgument, match="--budget"):
        AutoTuneSettings(budget=0.0)
    with pytest.raises(InvalidArgument, match="--candidates 'nope'.*allowed values"):
        AutoTuneSettings(candidates=("nope",))
    with pytest.raises(InvalidArgument, match="--val-samples"):
        AutoTuneSettings(val_samples=0)
    with pytest.raises(InvalidArgument, match="auto= must map settings fields"):
        register_tuner("x", TuneSettings, _bad_grid, auto={"no_such_field": 1})


@pytest.mark.slow
def test_tune_auto_on_a_plain_flow_from_its_own_source_runs_its_native_time_candidates(tmp_path):
    flow = load_moons_8gaussians()
    lines = []
    st = AutoTuneSettings(nfe=(3,), budget=2.0, samples=16, val_samples=16, solver="ipndm_v", ref_rtol=1e-6,
                          out=str(tmp_path / "auto.safetensors"))
    path = tune("auto", flow, st, TuneContext(model_name="moons-8gaussians", log=lines.append))
    rows = {r["candidate"]: r for r in load_correction(path, as_field(flow)).meta["table"]}
    # the weights and the grid run in the flow's own time; AMED runs at the even budget it holds within NFE 3
    assert rows["weights[ipndm_v]"]["held_out_rmse"] is not None and rows["grid[ipndm_v]"]["held_out_rmse"] is not None
    assert rows["amed[ipndm_v]"]["held_out_rmse"] is not None
    assert "EDM frame" in rows["directions[ipndm_v]"]["note"]
    out = Sampler(flow, correction=path, progress=False).run(nfe=3, seed=list(range(4)))
    assert out.nfe == 3 and torch.isfinite(out.samples).all()


@pytest.mark.slow
def test_the_directions_candidate_builds_on_the_weights_candidates_file(gmm, tmp_path, monkeypatch):
    def learn_weights_again(*args, **kwargs):
        raise AssertionError("the directions candidate learned its own weights")
    monkeypatch.setattr(pas_tuner, "weights_of", learn_weights_again)
    st = AutoTuneSettings(nfe=(5,), budget=2.0, samples=16, val_samples=8, ref_rtol=1e-6,
                          candidates=("weights", "directions"), out=str(tmp_path / "auto.safetensors"))
    path = tune("auto", gmm, st, TuneContext(model_name="gmm", dtype=torch.float64, log=None))
    rows = {r["candidate"]: r for r in load_correction(path, as_field(gmm)).meta["table"]}
    assert rows["directions[deis]"]["held_out_rmse"] is not None, rows["directions[deis]"]["note"]
