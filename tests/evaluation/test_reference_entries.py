"""Reference cache entries: every malformed entry (metadata that parses but lacks a field, a field of the wrong
type, no metadata, a missing tensor) is a cache miss, recomputed and replaced atomically, never a crash."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from diffsolve import Sampler
from diffsolve.problems import GaussianMixtureProblem
from diffsolve.evaluation.reference import ReferenceSettings, load_reference, solve_reference
from diffsolve.noise import draw_noise

CHEAP = ReferenceSettings(method="dopri5", rtol=1e-6, atol=1e-6)
FIELDS = ("key", "sha256", "nfe", "seconds", "frame", "desc")


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    p = GaussianMixtureProblem.default(dim=4, components=3)
    noise = draw_noise((6, 4), seed=0, dtype=torch.float64)
    t = Sampler(p, "euler", progress=False).times(3)
    folder = tmp_path_factory.mktemp("cache")
    good = solve_reference(p, noise, t, cache_dir=folder, settings=CHEAP)
    (path,) = (folder / "reference").glob("*.safetensors")
    return p, noise, t, good, path.name, path.read_bytes()


def _entry(tmp_path, problem):
    """A fresh copy of the good entry in this test's cache folder."""
    good, name, blob = problem[3:]
    path = tmp_path / "reference" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(blob)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["diffsolve"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return good, path, meta, tensors


def _rewrite(path, tensors, metadata):
    path.write_bytes(save(tensors, metadata=metadata))


DAMAGE = [f"lacks {f}" for f in FIELDS] + ["nfe is a string", "frame unknown", "desc is a list", "no metadata",
                                           "metadata not an object", "lacks states", "gap of wrong length"]


@pytest.mark.parametrize("damage", DAMAGE)
def test_malformed_entry_is_a_miss_and_is_replaced(tmp_path, problem, damage):
    good, path, meta, tensors = _entry(tmp_path, problem)
    key = path.stem
    if damage.startswith("lacks ") and damage[6:] in FIELDS:
        del meta[damage[6:]]
        _rewrite(path, tensors, {"diffsolve": json.dumps(meta)})
    elif damage == "nfe is a string":
        _rewrite(path, tensors, {"diffsolve": json.dumps({**meta, "nfe": "many"})})
    elif damage == "frame unknown":
        _rewrite(path, tensors, {"diffsolve": json.dumps({**meta, "frame": "sideways"})})
    elif damage == "desc is a list":
        _rewrite(path, tensors, {"diffsolve": json.dumps({**meta, "desc": [1, 2]})})
    elif damage == "no metadata":
        _rewrite(path, tensors, None)
    elif damage == "metadata not an object":
        _rewrite(path, tensors, {"diffsolve": json.dumps([meta])})
    elif damage == "lacks states":
        _rewrite(path, {k: v for k, v in tensors.items() if k != "states"}, {"diffsolve": json.dumps(meta)})
    else:
        # Consistent checksum (recomputed over the bad tensors), but shapes that do not fit together.
        from diffsolve.evaluation.reference import _payload_sha
        bad = {**tensors, "gap_rmse": tensors["gap_rmse"][:-1].clone()}
        _rewrite(path, bad, {"diffsolve": json.dumps({**meta, "sha256": _payload_sha(bad)})})
    with pytest.warns(RuntimeWarning, match="unusable"):
        assert load_reference(path, key) is None
    p, noise, t = problem[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        again = solve_reference(p, noise, t, cache_dir=tmp_path, settings=CHEAP)
    assert not again.cached and torch.equal(again.states, good.states)
    # Overwritten in place (atomically: no temp file left), and now a clean hit.
    assert sorted(f.name for f in path.parent.iterdir()) == [path.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hit = load_reference(path, key)
    assert hit is not None and hit.cached and torch.equal(hit.states, good.states)


def test_unwritable_cache_costs_a_recompute_not_the_answer(tmp_path, problem, monkeypatch):
    import diffsolve.evaluation.reference as reference

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(reference, "atomic_write_bytes", full)
    p, noise, t = problem[:3]
    with pytest.warns(RuntimeWarning, match="could not write"):
        ref = solve_reference(p, noise, t, cache_dir=tmp_path, settings=CHEAP)
    assert not ref.cached and torch.isfinite(ref.states).all()
