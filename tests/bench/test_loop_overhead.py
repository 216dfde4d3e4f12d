"""The loop-overhead comparison runs with tiny sizes, and diffsolve, diffusers and k-diffusion solve the same
problem (same schedule, timesteps and start) to the same samples. Times are printed, never asserted."""
from __future__ import annotations

import pytest

from diffsolve.bench.overhead import build, loop_overhead
from diffsolve.evaluation.k_diffusion_peer import load_k_diffusion_sampling


def test_loop_overhead_runs_small_and_the_three_agree(capsys):
    pytest.importorskip("diffusers")
    load_k_diffusion_sampling()         # installed with the dev setup (Makefile); a missing one fails loudly here
    rows, out = loop_overhead(batch=4, dim=16, steps=5, repeats=2)
    names = [r["name"] for r in rows]
    assert names == ["diffsolve Sampler.run", "diffsolve Sampler(...).run, a new Sampler per call",
                     "diffsolve, check_finite=False", "diffusers DPMSolverMultistepScheduler",
                     "k-diffusion sample_dpmpp_2m", "diffsolve sample_dpmpp_2m (k-diffusion function)"]
    for r in rows:
        assert r["name"] in out
        # float32 round-off of three different orderings of the same arithmetic
        assert r["maxdiff"] <= 1e-5 * max(r["scale"], 1.0), r
    assert rows[0]["maxdiff"] == rows[1]["maxdiff"] == rows[2]["maxdiff"] == 0.0
    assert build(4, 16, 5)[1] == []             # 5 steps divide T = 1000: the very same timesteps


def test_k_diffusion_sampling_loads_alone():
    import sys

    kd = load_k_diffusion_sampling()
    assert callable(kd.sample_dpmpp_2m) and callable(kd.get_sigmas_karras)
    assert "k_diffusion" not in sys.modules and "torchvision" not in sys.modules
    assert load_k_diffusion_sampling() is kd
