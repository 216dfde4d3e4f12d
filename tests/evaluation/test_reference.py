"""Reference solves: accuracy against exact solutions, the two-tolerance gap, and the on-disk cache's safety."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from diffsolve.field import model_identity

from diffsolve import Sampler
from diffsolve.problems import GaussianMixtureProblem, GaussianProblem
from diffsolve.evaluation.reference import (ReferenceSettings, cache_path, load_reference,
                                       reference_key, save_reference, solve_reference)
from diffsolve.field import as_field
from diffsolve.noise import draw_noise
from diffsolve.schedules import VPContinuous

# Cache tests are about files, not accuracy: a cheap solve keeps them fast.
CHEAP = ReferenceSettings(method="dopri5", rtol=1e-6, atol=1e-6)


def _noise(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return draw_noise((n, d), seed=seed, dtype=torch.float64)


@pytest.mark.parametrize("schedule", [None, VPContinuous()], ids=["edm", "vp"])
def test_reference_matches_exact_gaussian_solution(schedule):
    torch.manual_seed(0)
    p = GaussianProblem.default(dim=6, schedule=schedule)
    noise = _noise(16, 6)
    t = Sampler(p, "euler", progress=False).times(8)
    ref = solve_reference(p, noise, t, cache=False)
    x0 = noise * p.schedule.prior_std(float(t[0]))
    for k in range(t.numel() - 1):
        exact = p.ode_solution(x0, float(t[0]), float(t[k]))
        assert (ref.states[k] - exact).abs().max() < 1e-8, k
    # The noise-free end is the data prediction at the schedule's smallest noise, as every grid to zero takes it.
    t_min = p.schedule.t_min
    exact_end = p.denoise(p.ode_solution(x0, float(t[0]), t_min), t_min)
    assert (ref.endpoint - exact_end).abs().max() < 1e-8
    # The reported gap is an honest (pessimistic) estimate: at least the true error of the tight solve.
    true_err = (ref.endpoint - exact_end).pow(2).mean(1).sqrt().max()
    assert float(ref.gap_rmse[-1]) >= float(true_err)
    assert 0 < float(ref.gap_rmse.max()) < 1e-5


@pytest.mark.slow
def test_two_tolerance_gap_is_far_below_solver_errors():
    p = GaussianMixtureProblem.default(dim=4, components=3)
    noise = _noise(32, 4, seed=1)
    times = set()
    runs = {}
    for name in ("euler", "heun", "dpmpp_2m"):
        s = Sampler(p, name, progress=False)
        res = s.run(nfe=16, noise=noise, return_trajectory=True)
        runs[name] = res
        times.update(res.t.tolist())
    ref = solve_reference(p, noise, sorted(times), cache=False)
    errs = []
    for name, res in runs.items():
        end = ref.at(res.t[-1:])[0]
        errs.append(float((res.samples - end).pow(2).mean(1).sqrt().mean()))
        traj_ref = ref.at(res.t)
        assert traj_ref.shape == res.trajectory.shape
        assert torch.equal(traj_ref[0], res.trajectory[0])      # same start: the same scaled noise
    assert min(errs) > 1e-4
    assert float(ref.gap_rmse.max()) < 1e-3 * min(errs)


@pytest.mark.slow
def test_rk4_reference_agrees_with_dopri8():
    p = GaussianMixtureProblem.default(dim=3, components=2)
    noise = _noise(4, 3, seed=2)
    t = Sampler(p, "euler", progress=False).times(4)
    a = solve_reference(p, noise, t, cache=False)
    b = solve_reference(p, noise, t, cache=False, settings=ReferenceSettings(method="rk4", rk4_steps=60))
    assert (a.states - b.states).abs().max() < 1e-5


def test_cache_round_trip_and_key(tmp_path):
    p = GaussianMixtureProblem.default(dim=4, components=3)
    noise = _noise(8, 4)
    t = Sampler(p, "euler", progress=False).times(5)
    first = solve_reference(p, noise, t, cache_dir=tmp_path, settings=CHEAP)
    assert not first.cached
    files = list((tmp_path / "reference").glob("*.safetensors"))
    assert len(files) == 1
    second = solve_reference(p, noise, t, cache_dir=tmp_path, settings=CHEAP)
    assert second.cached
    assert torch.equal(first.states, second.states) and torch.equal(first.gap_rmse, second.gap_rmse)
    assert second.nfe == first.nfe and second.frame == first.frame
    # Anything the result depends on changes the key: noise, times, settings, model.
    f = as_field(p)
    k0 = reference_key(f, noise, t, ReferenceSettings())[0]
    assert reference_key(f, noise + 1e-12, t, ReferenceSettings())[0] != k0
    assert reference_key(f, noise, t[1:], ReferenceSettings())[0] != k0
    assert reference_key(f, noise, t, ReferenceSettings(rtol=1e-9))[0] != k0
    other = GaussianMixtureProblem.default(dim=4, components=3, seed=1)
    assert reference_key(as_field(other), noise, t, ReferenceSettings())[0] != k0


def test_model_identity_hashes_state_dict_without_identity_method():
    net = torch.nn.Linear(3, 3)
    a = model_identity(net)
    assert a == model_identity(net)
    with torch.no_grad():
        net.weight[0, 0] += 1e-6
    assert model_identity(net) != a


def _first_entry(tmp_path: Path) -> Path:
    (entry,) = (tmp_path / "reference").glob("*.safetensors")
    return entry


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip_payload_byte", "truncate", "garbage", "wrong_key"])
def test_corrupted_cache_entry_is_detected_and_recomputed(tmp_path, damage):
    p = GaussianMixtureProblem.default(dim=4, components=3)
    noise = _noise(8, 4)
    t = Sampler(p, "euler", progress=False).times(4)
    good = solve_reference(p, noise, t, cache_dir=tmp_path, settings=CHEAP)
    entry = _first_entry(tmp_path)
    blob = bytearray(entry.read_bytes())
    if damage == "flip_payload_byte":
        blob[-5] ^= 0x40                       # inside the last tensor's data; the header still parses
        entry.write_bytes(bytes(blob))
    elif damage == "truncate":
        entry.write_bytes(bytes(blob[: len(blob) // 2]))
    elif damage == "garbage":
        entry.write_bytes(os.urandom(len(blob)))
    else:
        # A valid file from another key placed under this key's name.
        other = solve_reference(p, noise * 0.5, t, cache_dir=tmp_path / "other", settings=CHEAP)
        entry.write_bytes(_first_entry(tmp_path / "other").read_bytes())
        assert not torch.equal(other.states, good.states)
    key = entry.stem
    with pytest.warns(RuntimeWarning, match="unusable"):
        assert load_reference(entry, key) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        again = solve_reference(p, noise, t, cache_dir=tmp_path, settings=CHEAP)
    assert not again.cached
    assert torch.equal(again.states, good.states)
    # The recomputed entry replaced the bad one and now loads cleanly.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_reference(entry, key) is not None


def test_failed_write_leaves_no_file_and_no_temp(tmp_path, monkeypatch):
    p = GaussianMixtureProblem.default(dim=4, components=3)
    noise = _noise(8, 4)
    t = Sampler(p, "euler", progress=False).times(4)
    ref = solve_reference(p, noise, t, cache=False, settings=CHEAP)
    key, desc = reference_key(as_field(p), noise, t, CHEAP)
    path = cache_path(tmp_path, key)

    def boom(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        save_reference(path, ref, key, desc)
    monkeypatch.undo()
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


@pytest.mark.slow
def test_killed_writer_leaves_nothing_that_is_read(tmp_path):
    """SIGKILL a process in the middle of writing a cache entry; the next solve must recompute, not read it."""
    p = GaussianMixtureProblem.default(dim=4, components=3)
    noise = _noise(8, 4)
    t = Sampler(p, "euler", progress=False).times(4)
    script = textwrap.dedent(f"""
        import os, sys, time, torch
        torch.set_num_threads(1)
        from diffsolve.problems import GaussianMixtureProblem
        from diffsolve.evaluation.reference import ReferenceSettings, solve_reference
        from diffsolve.noise import draw_noise
        from diffsolve import Sampler
        p = GaussianMixtureProblem.default(dim=4, components=3)
        noise = draw_noise((8, 4), seed=0, dtype=torch.float64)
        t = Sampler(p, "euler", progress=False).times(4)
        def hang(fd):
            print("writing", flush=True)
            time.sleep(120)
        os.fsync = hang
        solve_reference(p, noise, t, cache_dir={str(tmp_path)!r},
                        settings=ReferenceSettings(method="dopri5", rtol=1e-6, atol=1e-6))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    folder = tmp_path / "reference"
    leftovers = list(folder.iterdir())
    assert leftovers and all(f.name.endswith(".tmp") for f in leftovers)   # only the half-written temp file
    assert not list(folder.glob("*.safetensors"))
    ref = solve_reference(p, noise, t, cache_dir=tmp_path, settings=CHEAP)
    assert not ref.cached
    again = solve_reference(p, noise, t, cache_dir=tmp_path, settings=CHEAP)
    assert again.cached and torch.equal(again.states, ref.states)
