"""AMED-Solver and AMED-Plugin: the step's algebra, NFE accounting, training on the analytic Gaussian mixture (each
variant beats its base solver on held-out noise), the time-only export, the data-mean AFS, files and refusal."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import Counting

from diffsolve import Sampler
from diffsolve.problems import GaussianMixtureProblem
from diffsolve.corrections import (AMEDCorrection, AMEDPredictor, IdentityMismatch, TimeTable, load_correction,
                                   train_amed)
from diffsolve.corrections.io import amed_grid
from diffsolve.corrections.teacher import noise_for, teacher_states
from diffsolve.errors import InvalidArgument
from diffsolve.field import as_field

TRAIN = dict(n_train=64, batch_size=16, epochs=6, lr=2e-2, dtype=torch.float64, log=None, teacher="fine")






def rmse(sampler, noise, ref, **run):
    out = sampler.run(noise=noise, **run)
    return float((out.samples - ref).pow(2).mean(dim=1).sqrt().mean()), out.nfe


def test_midpoint_parameters_are_the_geometric_midpoint_rule(gmm):
    """r = 1/2, c = a = 1 is DPM-Solver-2 (noise prediction, midpoint in log s) in the EDM frame; an untrained
    predictor starts there exactly (zero-initialised heads)."""
    t = torch.tensor([80.0, 12.0, 2.0, 0.3, 0.002], dtype=torch.float64)   # no step into zero noise
    noise = noise_for(as_field(gmm), range(5), dtype=torch.float64)
    ref = Sampler(gmm, "dpm_solver_2", grid=t, progress=False).run(noise=noise).samples
    table = TimeTable(tuple(t.tolist()), ((0.5, 1.0, 1.0),) * 4)
    net = AMEDPredictor(features="denoised")
    for pred in (table, net):
        out = Sampler(gmm, "amed", predictor=pred, grid=t, progress=False, afs=False).run(noise=noise)
        assert torch.allclose(out.samples, ref, atol=1e-10, rtol=0), type(pred).__name__
        assert out.nfe == 8


def test_midpoint_rule_on_a_vp_schedule():
    gm = GaussianMixtureProblem.default(dim=4, components=3, schedule="vp_continuous")
    t = torch.tensor([1.0, 0.6, 0.3, 0.1, 1e-3], dtype=torch.float64)
    noise = noise_for(as_field(gm), range(4), dtype=torch.float64)
    ref = Sampler(gm, "dpm_solver_2", grid=t, progress=False).run(noise=noise).samples
    out = Sampler(gm, "amed", predictor=AMEDPredictor(features="none"), grid=t, afs=False,
                  progress=False).run(noise=noise).samples
    assert torch.allclose(out, ref, atol=1e-8, rtol=0)




@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("name,options", [("amed", {}), ("amed_plugin", {"base": "ipndm"}),
                                          ("amed_plugin", {"base": "dpmpp_2m"})])
def test_nfe_accounting_matches_the_model_calls(gmm, afs, name, options):
    model = Counting(gmm)
    s = Sampler(model, name, predictor=AMEDPredictor(features="denoised"), afs=afs, progress=False, **options)
    for nfe in (3, 5, 7, 9):
        model.calls = 0
        out = s.run(nfe=nfe, batch_size=2, dtype=torch.float64)
        steps = out.t.numel() - 1
        assert out.nfe == model.calls == 2 * steps - (1 if afs else 0)
        assert out.nfe <= nfe and out.nfe >= nfe - 1


@pytest.mark.parametrize("base", ["amed", "ipndm", "ipndm_v", "dpmpp_2m", "deis", "dpm_solver_2", "euler"])
def test_training_beats_the_base_solver_on_held_out_noise(gmm, held_out, base):
    noise, ref = held_out
    lr = 2e-2 if base in ("amed", "dpm_solver_2", "euler") else 5e-3      # single-step bases take a larger rate
    corr = train_amed(gmm, base=base, nfe=(5,), **{**TRAIN, "lr": lr})
    name, opts = ("amed", {}) if base == "amed" else ("amed_plugin", {"base": base})
    learned, nfe = rmse(Sampler(gmm, name, predictor=corr, progress=False, **opts), noise, ref, nfe=5)
    assert nfe == 5
    base_name = "dpm_solver_2" if base == "amed" else base
    plain = min(rmse(Sampler(gmm, base_name, grid=g, progress=False), noise, ref, nfe=5)[0]
                for g in ("karras", amed_grid))
    # the untrained predictor is the plain midpoint rule inside the same base and grid
    untrained = rmse(Sampler(gmm, name, predictor=AMEDCorrection(AMEDPredictor(features="denoised"), base,
                                                                 True, corr.afs_mean, corr.grids),
                             progress=False, **opts), noise, ref, nfe=5)[0]
    assert learned < 0.9 * min(plain, untrained), (learned, plain, untrained)


def test_endpoint_loss_and_time_only_table(gmm, held_out):
    noise, ref = held_out
    corr = train_amed(gmm, base="ipndm", nfe=(5,), loss="endpoint", features="none", **TRAIN)
    learned = rmse(Sampler(gmm, "amed_plugin", base="ipndm", predictor=corr, progress=False), noise, ref, nfe=5)[0]
    plain = rmse(Sampler(gmm, "ipndm", progress=False), noise, ref, nfe=5)[0]
    assert learned < 0.8 * plain
    table = corr.to_table(gmm.schedule)
    assert table.is_table and len(table.predictor.rows) == 3
    out_net = Sampler(gmm, "amed_plugin", base="ipndm", predictor=corr, progress=False).run(nfe=5, noise=noise)
    out_tab = Sampler(gmm, "amed_plugin", base="ipndm", predictor=table, progress=False).run(nfe=5, noise=noise)
    assert torch.allclose(out_net.samples, out_tab.samples, atol=1e-6)
    with pytest.raises(InvalidArgument, match="steps"):
        Sampler(gmm, "amed_plugin", base="ipndm", predictor=table, progress=False).run(nfe=7, noise=noise)


def test_afs_uses_the_data_mean_on_a_non_centred_model():
    base = GaussianMixtureProblem.default(dim=8, components=4)
    gm = GaussianMixtureProblem(base.means + 4.0, base.variances, base.weights)     # far from zero mean
    field = as_field(gm)
    seeds = list(range(900_000, 900_064))
    noise = noise_for(field, seeds, dtype=torch.float64)
    ref = teacher_states(field, noise, [80.0, 0.0], seeds=seeds)[-1]
    measured = train_amed(gm, nfe=(5,), **{**TRAIN, "epochs": 0})           # no training: only the AFS mean
    assert torch.allclose(measured.afs_mean.double(), gm.means.T @ gm.weights, atol=0.2)
    errs = {}
    for label, mean in (("zero", None), ("measured", measured.afs_mean)):
        corr = AMEDCorrection(AMEDPredictor(features="none"), "amed", True, mean, measured.grids)
        errs[label] = rmse(Sampler(gm, "amed", predictor=corr, progress=False), noise, ref, nfe=5)[0]
    assert errs["measured"] < 0.7 * errs["zero"], errs


def test_save_load_round_trip_and_refusal(gmm, tmp_path, held_out):
    noise, _ = held_out
    corr = train_amed(gmm, base="ipndm", nfe=(3, 5), **{**TRAIN, "epochs": 1})
    path = corr.save(tmp_path / "amed.safetensors")
    side = json.loads((tmp_path / "amed.safetensors.json").read_text())
    assert side["model_identity"] == as_field(gmm).identity()
    assert side["base"] == "ipndm" and side["nfe"] == {"2": 3, "3": 5} and side["afs"] is True
    assert side["grids"]["3"][0] == 80.0 and side["grids"]["3"][-1] == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["amed.safetensors", "amed.safetensors.json"]
    loaded = load_correction(path, field=as_field(gmm))
    a = Sampler(gmm, "amed_plugin", base="ipndm", predictor=corr, progress=False).run(nfe=5, noise=noise[:8])
    b = Sampler(gmm, "amed_plugin", base="ipndm", predictor=str(path), progress=False).run(nfe=5, noise=noise[:8])
    assert torch.equal(a.samples, b.samples) and loaded.grids == corr.grids
    other = GaussianMixtureProblem.default(seed=1)
    with pytest.raises(IdentityMismatch, match="another model"):
        Sampler(other, "amed_plugin", base="ipndm", predictor=str(path), progress=False).run(nfe=5, batch_size=1)
    with pytest.raises(IdentityMismatch):
        load_correction(path, field=as_field(other))
    with pytest.raises(InvalidArgument, match="base"):
        Sampler(gmm, "amed", predictor=str(path), progress=False).run(nfe=5, batch_size=1)


def test_nothing_shipped_for_other_models_warns_or_refuses(gmm):
    """No predictor for this model: a warning and the untrained midpoint rule; a tuned grid asked by name: an
    error that says how to train one."""
    with pytest.warns(UserWarning, match="diffsolve tune"):
        out = Sampler(gmm, "amed_plugin", base="ipndm", progress=False).run(nfe=5, batch_size=1, seed=0)
    assert out.nfe == 4                                      # no AFS without a measured mean: 2 calls per step
    with pytest.raises(InvalidArgument, match="diffsolve tune"):
        Sampler(gmm, "ipndm", grid="gits", progress=False).run(nfe=5, batch_size=1)


def test_intermediate_times_are_per_sample_tensors(gmm):
    """The neural predictor's intermediate time reaches the field as a per-sample device tensor."""
    seen = []

    class Spy(torch.nn.Module):
        diffsolve_spec = gmm.diffsolve_spec

        def forward(self, x, t):
            seen.append(t.clone())
            return gmm(x, t)
    pred = AMEDPredictor(features="denoised")
    torch.nn.init.normal_(pred.head_r.weight, std=1.0)
    Sampler(Spy(), "amed", predictor=pred, afs=False, progress=False).run(nfe=4, batch_size=6, dtype=torch.float64)
    mids = seen[1::2]
    assert all(m.shape == (6,) for m in mids) and any(m.unique().numel() > 1 for m in mids)
