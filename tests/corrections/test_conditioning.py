"""Per-sample conditions in training: `Field.select` slices them, the trainers fit minibatches of
`field.select(idx)` and solve the teacher on the whole batch, and a correction tuned on a guided field records the
guidance scale and refuses a field with another one."""
from __future__ import annotations

import json

import pytest
import torch

from diffsolve.corrections import learn_grid
from diffsolve.corrections.coefficients import learn_coefficients
from diffsolve.corrections.io import IdentityMismatch, load_correction
from diffsolve.corrections.teacher import mean_denoised_at_start, noise_for, teacher_states
from diffsolve.corrections.train import train_amed
from diffsolve.errors import InvalidArgument
from diffsolve.field import ClassifierFreeGuidance, Conditioned, ModelSpec, VectorField

S = 0.5     # each class's standard deviation


class ClassGaussians(torch.nn.Module):
    """The exact EDM denoiser of N(mean[label], S^2 I) in 2-D; records (x, sigma, labels) of every call."""

    def __init__(self, classes: int):
        super().__init__()
        angle = torch.arange(classes + 1, dtype=torch.float64) * 2.4
        means = 3 * torch.stack([angle.cos(), angle.sin()], 1)
        means[-1] = 0.0                                  # the last label is the null label
        self.register_buffer("means", means)
        self.calls = []

    @property
    def diffsolve_spec(self):
        return ModelSpec(prediction="denoiser", schedule="edm", sample_shape=(2,))

    def forward(self, x, sigma, labels=None):
        labels = torch.full((x.shape[0],), len(self.means) - 1) if labels is None else labels
        self.calls.append((x.detach().clone(), sigma.detach().clone(), labels.clone()))
        mu = self.means.to(x.dtype)[labels.reshape(-1).expand(x.shape[0])]
        k = (S ** 2 / (S ** 2 + sigma.to(x.dtype) ** 2)).reshape(-1, 1)
        return mu + (x - mu) * k


def _conditioned(n: int, scale: float | None = None, classes: int | None = None):
    net = ClassGaussians(n if classes is None else classes)
    field = VectorField(net)
    if scale is not None:
        field = ClassifierFreeGuidance(field, scale, {"labels": torch.tensor([len(net.means) - 1])})
    labels = torch.arange(n) if classes is None else torch.arange(n) % classes
    return net, Conditioned(field, {"labels": labels})


def test_select_slices_the_rows_and_rewraps():
    net, field = _conditioned(6, scale=2.0)
    part = field.select(torch.tensor([4, 1]))
    assert part.condition_rows == 2 and part.conditions["labels"].tolist() == [4, 1]
    assert isinstance(part.inner, ClassifierFreeGuidance) and part.inner.scale == 2.0
    assert field.inner.select(torch.tensor([0])) is field.inner     # no rows: the same field
    x = torch.randn(2, 2)
    p = field.at(1.0)
    net.calls.clear()
    part.denoise(x, p)
    # the conditional call has the selected rows, the guided one the null label repeated over the batch
    assert net.calls[0][2].tolist() == [4, 1] and net.calls[1][2].tolist() == [6, 6]
    with pytest.raises(InvalidArgument, match="conditions for 6 samples"):
        field.denoise(x, p)
    with pytest.raises(InvalidArgument, match="same number of rows"):
        Conditioned(VectorField(net), {"labels": torch.arange(3), "other": torch.zeros(2)})


@pytest.mark.slow
def test_teacher_solves_each_sample_with_its_own_condition():
    net, field = _conditioned(4)
    noise = noise_for(field, range(4), dtype=torch.float64)
    both = teacher_states(field, noise, [80.0, 0.0], mode="fine", fine_steps=24)[-1]
    for i in range(4):
        alone = VectorField(net, model_kwargs={"labels": torch.tensor([i])})
        one = teacher_states(alone, noise[i:i + 1], [80.0, 0.0], mode="fine", fine_steps=24)[-1]
        torch.testing.assert_close(both[i:i + 1], one)
    # the endpoints land near their own class means, so a mix-up of rows would show
    assert (both - net.means[:4].to(both)).norm(dim=1).max() < 2.5 * S
    with pytest.raises(InvalidArgument, match="conditions for 4 samples but the trainer draws 5"):
        teacher_states(field, noise_for(field, range(5), dtype=torch.float64), [80.0, 0.0], mode="fine")


@pytest.mark.slow
def test_learn_grid_fits_each_minibatch_with_its_own_labels():
    n = 8
    net, field = _conditioned(n)
    seeds = list(range(500_000, 500_000 + n))         # learn_grid's training seeds at seed=0
    x_start = noise_for(field, seeds) * 80.0
    net.calls.clear()
    learn_grid(field, base="ipndm", nfe=(3,), n=n, batch_size=3, epochs=1, teacher="fine", log=None)
    starts = [(x, lab) for x, sig, lab in net.calls if float(sig[0]) == 80.0 and x.shape[0] < n]
    assert len(starts) == 3          # one start per minibatch (8 = 3 + 3 + 2)
    for x, labels in starts:
        # sample i of the training set is guided by label i: the rows of x are the starts of those samples
        torch.testing.assert_close(x.float(), x_start[labels])
    assert sorted(torch.cat([lab for _, lab in starts]).tolist()) == list(range(n))


@pytest.mark.slow
def test_amed_and_weights_train_with_per_sample_labels():
    net, field = _conditioned(8, scale=2.0, classes=3)
    corr = train_amed(field, base="ipndm", nfe=(6,), n_train=8, batch_size=4, epochs=1, features="none",
                      teacher="fine", log=None)
    assert "scale=2.0" in corr.identity and corr.identity.startswith("Conditioned(keys=['labels']")
    w = learn_coefficients(field, nfe=(4,), n=8, batch_size=4, epochs=1, teacher="fine", log=None,
                           grid_options={"epochs": 1})
    assert w.identity == corr.identity
    # the AFS mean cycles through the conditions: here the mean over the three classes of the guided field
    mean = mean_denoised_at_start(field, field.t_max, n=6, batch=4)
    assert mean.shape == (2,) and torch.isfinite(mean).all()


def test_file_records_the_guidance_scale_and_refuses_another(tmp_path):
    _, field = _conditioned(6, scale=2.0, classes=3)
    corr = learn_grid(field, base="ipndm", nfe=(6,), n=6, batch_size=3, epochs=1, teacher="fine", log=None)
    path = corr.save(tmp_path / "g.safetensors")
    record = json.loads((tmp_path / "g.safetensors.json").read_text())
    assert "ClassifierFreeGuidance(scale=2.0" in record["model_identity"]
    net = field.inner.inner.model
    other_labels = Conditioned(ClassifierFreeGuidance(VectorField(net), 2.0, field.inner.uncond_kwargs),
                               {"labels": torch.tensor([2, 2, 1])})
    load_correction(path, field=other_labels)           # other conditions: the same model and guidance
    other_scale = Conditioned(ClassifierFreeGuidance(VectorField(net), 3.0, field.inner.uncond_kwargs),
                              {"labels": torch.arange(6) % 3})
    with pytest.raises(IdentityMismatch):
        load_correction(path, field=other_scale)
    with pytest.raises(IdentityMismatch):
        load_correction(path, field=VectorField(net))   # unguided


class Embedded(torch.nn.Module):
    """x0 prediction from the point and a float embedding (as a text-conditioned network takes its prompts)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x, t, emb):
        return self.lin(torch.cat([x, emb], 1))


def test_float_conditions_follow_the_network_dtype_into_the_float64_reference():
    torch.manual_seed(0)
    field = Conditioned(VectorField(Embedded(), prediction="x0", schedule="edm", sample_shape=(2,)),
                        {"emb": torch.randn(3, 1)})
    noise = noise_for(field, range(3))
    ref = teacher_states(field, noise, [2.0, 0.0], cache=False)[-1]       # a float64 copy of the network
    fine = teacher_states(field, noise, [2.0, 0.0], mode="fine")[-1]
    assert ref.dtype == torch.float32 and (ref - fine).abs().max() < 1e-3
