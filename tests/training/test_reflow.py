"""Reflow couplings: sharded over torchrun ranks byte for byte, atomic and resumable after a real SIGKILL, checked."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import diffsolve
from diffsolve.cli.main import main
from diffsolve.errors import InvalidArgument
from diffsolve.training.reflow import CouplingsError, generate_couplings, load_couplings, coupling_seeds, verify_couplings

# A tiny 2-D velocity field, seeded, with an optional sleep per call (REFLOW_TEST_SLEEP seconds) so that a run
# can be killed half way. The sleep changes no weight, hence not the model's identity.
SCRIPT = '''
import os, sys, json, time
import torch

from diffsolve.field import ModelSpec


class TinyFlow(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(3, 16, generator=g) * 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(16, 2, generator=g) * 0.5)

    @property
    def diffsolve_spec(self):
        return ModelSpec(prediction="velocity", schedule=None, sample_shape=(2,), time_convention="flow")

    def forward(self, x, t):
        delay = float(os.environ.get("REFLOW_TEST_SLEEP", "0"))
        if delay:
            time.sleep(delay)
        h = torch.tanh(torch.cat([x, t.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)], 1) @ self.w1)
        return h @ self.w2 - 0.5 * x


def make_model():
    return TinyFlow(0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    from diffsolve.training.reflow import generate_couplings
    out, n, shard, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    run = generate_couplings(make_model(), out, n, solver="heun", steps=3, batch_size=batch, shard_size=shard,
                             seed=11)
    print(json.dumps({"computed": run.computed, "kept": run.kept}), flush=True)
'''

SETTINGS = dict(solver="heun", steps=3, batch_size=3, shard_size=4, seed=11)


def _env(tmp_path: Path, **extra: str) -> dict:
    root = str(Path(diffsolve.__file__).parent.parent)       # the folder that holds the package (not resolved)
    path = os.pathsep.join([str(tmp_path), root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "tinyflow.py"
    path.write_text(SCRIPT)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _tiny_model():
    import importlib.util
    spec = importlib.util.spec_from_loader("tinyflow_inproc", loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(SCRIPT, mod.__dict__)
    return mod.make_model()


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# Ranks
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_torchrun_ranks_write_the_one_process_files(tmp_path, monkeypatch, capsys, one_thread):
    """The CLI under torchrun (2 ranks, gloo) writes exactly the files of one process, manifest included."""
    _script(tmp_path)
    common = ["--model", "tinyflow:make_model", "--samples", "23", "--solver", "heun", "--steps", "3", "--batch-size", "3",
              "--shard-size", "4", "--seed", "11", "--threads", "1"]
    env = _env(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["reflow", *common, "--out", str(tmp_path / "one")]) == 0          # one process: this one, at 1 thread
    one = json.loads(capsys.readouterr().out)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "diffsolve", "reflow", *common, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert two.stdout.count('"computed"') == 1                                 # rank 0 reports
    assert "rank 1 wrote shard-000001" in two.stderr and "rank 0 wrote shard-000000" in two.stderr
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(a) == ["manifest.json", "settings.json"] + [f"shard-{k:06d}.safetensors" for k in range(6)]
    assert a == b
    noise, endpoint, index = load_couplings(tmp_path / "two", with_index=True)
    assert index.tolist() == list(range(23)) and noise.shape == endpoint.shape == (23, 2)
    assert one["computed"] == 6 and json.loads(two.stdout)["computed"] == 6


# ------------------------------------------------------------------------------------------------
# A real crash
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_uninterrupted_files(tmp_path, one_thread):
    script = _script(tmp_path)
    n, shard, batch = 32, 4, 4
    crash, clean = tmp_path / "crash", tmp_path / "clean"
    args = [sys.executable, str(script), str(crash), str(n), str(shard), str(batch)]
    # heun, 3 steps: 5 calls per batch, 0.04 s each: about 0.2 s a shard, 8 shards
    proc = subprocess.Popen(args, env=_env(tmp_path, REFLOW_TEST_SLEEP="0.04"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while len(list(crash.glob("shard-*.safetensors"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard appeared in 60 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    survivors = {p.name: p.stat().st_ino for p in crash.glob("shard-*.safetensors")}
    assert 2 <= len(survivors) < n // shard, survivors
    assert not (crash / "manifest.json").exists()
    from safetensors.torch import load_file                                  # atomic: every visible shard is whole
    for name in survivors:
        k = int(name[6:12])
        assert load_file(str(crash / name))["index"].tolist() == list(range(k * shard, (k + 1) * shard))
    with pytest.raises(CouplingsError, match="no manifest.json"):
        load_couplings(crash)

    resumed = subprocess.run(args, env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads(resumed.stdout)
    kept = {f"shard-{k:06d}.safetensors" for k in report["kept"]}
    computed = {f"shard-{k:06d}.safetensors" for k in report["computed"]}
    assert kept == set(survivors) and not (kept & computed)                  # nothing computed twice
    assert sorted(kept | computed) == [f"shard-{k:06d}.safetensors" for k in range(n // shard)]
    assert {name: (crash / name).stat().st_ino for name in survivors} == survivors   # not rewritten
    assert not list(crash.glob("*.tmp"))

    # the uninterrupted run, here (at 1 thread, as the script runs)
    generate_couplings(_tiny_model(), clean, n, solver="heun", steps=3, batch_size=batch, shard_size=shard, seed=11)
    assert _files(crash) == _files(clean)
    _, _, index = load_couplings(crash, with_index=True)
    assert index.tolist() == list(range(n))                                  # no gap, no duplicate


# ------------------------------------------------------------------------------------------------
# In-process checks
# ------------------------------------------------------------------------------------------------
def test_noise_is_per_sample_and_batching_does_not_change_it(tmp_path, one_thread):
    model = _tiny_model()
    generate_couplings(model, tmp_path / "a", 10, **{**SETTINGS, "batch_size": 3})
    generate_couplings(model, tmp_path / "b", 10, **{**SETTINGS, "batch_size": 4})
    za, xa = load_couplings(tmp_path / "a")
    zb, xb = load_couplings(tmp_path / "b")
    assert torch.equal(za, zb)
    assert torch.allclose(xa, xb, atol=1e-6)
    expect = diffsolve.noise.draw_noise((10, 2), seed=coupling_seeds(11, 0, 10))
    assert torch.equal(za, expect)
    # the endpoint is the solver's: the same as a Sampler run on that noise
    ref = diffsolve.Sampler(model, "heun", progress=False).run(steps=3, noise=expect).samples
    assert torch.allclose(xa, ref, atol=1e-6)
    assert coupling_seeds(3, 5, 7) == [3 * 2 ** 32 + 5, 3 * 2 ** 32 + 6]


def test_corrupted_or_missing_shard_is_caught(tmp_path, one_thread):
    model = _tiny_model()
    out = tmp_path / "c"
    generate_couplings(model, out, 12, **SETTINGS)
    verify_couplings(out)
    shard = out / "shard-000001.safetensors"
    good = shard.read_bytes()
    bad = bytearray(good)
    bad[-3] ^= 0x40                                    # one bit of the last endpoint / index bytes
    shard.write_bytes(bytes(bad))
    with pytest.raises(CouplingsError, match="shard-000001.safetensors is corrupted"):
        load_couplings(out)
    # a rerun notices (manifest hash) and computes that shard again, the others are kept
    run = generate_couplings(model, out, 12, **SETTINGS)
    assert run.computed == [1] and run.kept == [0, 2]
    assert shard.read_bytes() == good
    shard.unlink()
    with pytest.raises(CouplingsError, match="shard-000001.safetensors is missing"):
        load_couplings(out)
    (out / "shard-000002.safetensors").write_bytes(b"not a safetensors file")
    run = generate_couplings(model, out, 12, **SETTINGS)
    assert run.computed == [1, 2] and run.kept == [0]
    load_couplings(out)


def test_resume_with_other_settings_is_refused(tmp_path, one_thread):
    model = _tiny_model()
    out = tmp_path / "r"
    generate_couplings(model, out, 8, **SETTINGS)
    (out / "manifest.json").unlink()                   # as after a crash: only settings.json says what the run is
    for change, name in ((dict(seed=12), "seed"), (dict(steps=4), "steps"), (dict(solver="rk4"), "solver"),
                         (dict(shard_size=2), "shard_size"), (dict(batch_size=2), "batch_size")):
        with pytest.raises(CouplingsError, match=rf"other settings \({name}="):
            generate_couplings(model, out, 8, **{**SETTINGS, **change})
    with pytest.raises(CouplingsError, match=r"other settings \(n=9"):
        generate_couplings(model, out, 9, **SETTINGS)
    other = _tiny_model()
    with torch.no_grad():
        other.w2[0, 0] += 1e-3
    with pytest.raises(CouplingsError, match=r"other settings \(model="):
        generate_couplings(other, out, 8, **SETTINGS)
    run = generate_couplings(model, out, 8, **SETTINGS)             # the same settings resume (nothing to do)
    assert run.computed == [] and run.kept == [0, 1]


def test_bad_arguments_get_clear_errors(tmp_path, one_thread):
    model = _tiny_model()
    out = tmp_path / "x"
    cases = [(dict(n=0), "n=0"), (dict(n=True), "n=True"), (dict(n=2.0), "n=2.0"), (dict(steps=0), "steps=0"),
             (dict(batch_size="4"), "batch_size='4'"), (dict(shard_size=-1), "shard_size=-1"),
             (dict(seed=-1), "seed=-1"), (dict(seed=2 ** 31), "seed=2147483648"), (dict(dtype="int8"), "dtype="),
             (dict(solver="nope"), "'nope'"), (dict(solver=3), "solver=3"), (dict(verify_noise=1), "verify_noise=1")]
    for change, text in cases:
        kw = {**SETTINGS, "n": 4, **change}
        with pytest.raises(InvalidArgument, match=text.replace("(", r"\(").replace(".", r"\.")):
            generate_couplings(model, out, **kw)
    assert not out.exists()                                             # nothing written for a refused call
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match="not a folder"):
        generate_couplings(model, tmp_path / "file", 4, **SETTINGS)

    class Plain:                                     # a callable with a spec but no weights to digest
        diffsolve_spec = model.diffsolve_spec

        def __call__(self, x, t):
            return -x
    with pytest.raises(InvalidArgument, match="identify this model"):
        generate_couplings(Plain(), tmp_path / "y", 4, **SETTINGS)
    run = generate_couplings(Plain(), tmp_path / "y", 4, model_id="minus-x", **SETTINGS)
    assert run.manifest["model"] == "minus-x"
    # numpy integers are integers
    run = generate_couplings(model, out, np.int64(4), steps=np.int32(3), batch_size=np.int64(3),
                             shard_size=np.int16(4), seed=np.uint8(11), solver="heun")
    assert run.manifest["n"] == 4 and run.manifest["seed"] == 11


def test_cli_rejects_unknown_model_and_bad_numbers(tmp_path, capsys):
    threads = str(torch.get_num_threads())
    assert main(["reflow", "--model", "no-such-model", "--n", "4", "--out", str(tmp_path / "o"),
                 "--threads", threads]) == 2
    assert "model='no-such-model' is not known" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["reflow", "--model", "moons-1rf", "--n", "0", "--out", str(tmp_path / "o"), "--threads", threads])
    assert info.value.code == 2
    assert "argument --samples/--n: '0': must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_old_module_name_warns_reexports_and_still_runs(tmp_path):
    import importlib
    _script(tmp_path)
    old_cli = subprocess.run([sys.executable, "-m", "diffsolve.reflow", "--model", "tinyflow:make_model", "--samples",
                              "5", "--steps", "2", "--shard-size", "4", "--out", str(tmp_path / "o")],
                             capture_output=True, text=True, timeout=120, env=_env(tmp_path))
    assert old_cli.returncode == 0, old_cli.stderr[-3000:]
    assert json.loads(old_cli.stdout)["computed"] == 2 and len(load_couplings(tmp_path / "o")[0]) == 5
    import diffsolve.training.reflow as lib
    sys.modules.pop("diffsolve.reflow", None)
    with pytest.warns(DeprecationWarning, match="diffsolve.training.reflow"):
        old = importlib.import_module("diffsolve.reflow")
    assert old.generate_couplings is lib.generate_couplings and old.load_couplings is lib.load_couplings


def test_stochastic_solver_draws_its_step_noise_per_sample(tmp_path, one_thread):
    """An SDE solver's couplings: each sample's step noise comes from its own seed, as in Sampler.run(seed=[...])."""
    from diffsolve.bench.models import resolve_model
    model = resolve_model("gaussian")[1]
    run = generate_couplings(model, tmp_path / "s", 10, solver="euler_ancestral", steps=6, batch_size=3,
                             shard_size=5, seed=2, model_id="gaussian-16d")
    noise, endpoint = load_couplings(tmp_path / "s")
    ref = diffsolve.Sampler(model, "euler_ancestral", progress=False).run(steps=6, noise=noise,
                                                                          seed=coupling_seeds(2, 0, 10)).samples
    assert torch.equal(endpoint, ref.float())
    assert run.manifest["solver"] == "euler_ancestral" and run.manifest["model"] == "gaussian-16d"
