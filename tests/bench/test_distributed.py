"""Two processes under torchrun (gloo, CPU) give exactly the one-process benchmark."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from diffsolve.distributed import Dist, chunk_bounds, sample_seeds
from diffsolve.bench import run_bench

ARGS = dict(model="gmm", solvers="euler,dpmpp_2m", nfe=[4, 8], batch_size=40, chunk_size=8, seed=5)
# Timings, cache hits and the process count legitimately differ; everything else must be identical.
VOLATILE = {"seconds_total", "files", "wall_s", "seconds", "cached", "processes"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def test_chunks_and_seeds_do_not_depend_on_the_process_count():
    bounds = chunk_bounds(40, 8)
    assert bounds == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40)]
    for world in (1, 2, 3):
        taken = sorted(c for r in range(world) for c in Dist(rank=r, world=world).my_chunks(len(bounds)))
        assert taken == list(range(len(bounds)))
    assert sample_seeds(5, 3) == [5 * 2 ** 24, 5 * 2 ** 24 + 1, 5 * 2 ** 24 + 2]
    assert Dist().gather_chunks({1: "b", 0: "a"}) == ["a", "b"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
@pytest.mark.slow
def test_two_ranks_under_torchrun_equal_one_rank(tmp_path):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    before = torch.get_num_threads()
    torch.set_num_threads(1)        # the same as each torchrun worker (--threads 1)
    try:
        run_bench(**ARGS, out=out1, cache_dir=tmp_path / "cache1", progress=False, verbose=False)
    finally:
        torch.set_num_threads(before)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "diffsolve", "bench", "--model", ARGS["model"], "--solvers", ARGS["solvers"],
           "--nfe", "4,8", "--batch-size", str(ARGS["batch_size"]), "--chunk-size", str(ARGS["chunk_size"]),
           "--seed", str(ARGS["seed"]), "--out", str(out2), "--cache-dir", str(tmp_path / "cache2"),
           "--no-progress", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("endpoint RMSE vs reference") == 1     # only rank 0 prints
    one = json.loads((out1 / "bench.json").read_text())
    two = json.loads((out2 / "bench.json").read_text())
    assert one["config"]["processes"] == 1 and two["config"]["processes"] == 2
    assert len(two["reference"]["nfe_per_chunk"]) == 5
    assert _strip(two) == _strip(one)
    assert all(r["status"] == "ok" and r["rmse_mean"] > 0 for r in one["results"])


def test_ranks_without_torch_distributed_get_the_library_error(monkeypatch):
    """What the torchrun tests' skip (a torch built without torch.distributed) leaves a user: a clear error."""
    import torch.distributed as dist
    from diffsolve import InvalidArgument
    from diffsolve.distributed import Dist
    monkeypatch.setattr(dist, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InvalidArgument, match="no torch.distributed"):
        Dist.from_env()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Dist.from_env().world == 1
