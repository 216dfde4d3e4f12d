"""scripts/gpu_check.py (run by bench/gpu_check.sh) runs every code path on the CPU (--cpu-smoke) and refuses
clearly without CUDA otherwise."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_the_shell_wrapper_runs_the_script():
    wrapper = (SCRIPT.parents[1] / "bench" / "gpu_check.sh").read_text()
    assert "scripts/gpu_check.py" in wrapper


@pytest.mark.slow
def test_cpu_smoke_runs_every_section(monkeypatch, capsys):
    # gpu_check sets these for the smoke run; monkeypatch restores them for the other tests
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("DIFFSOLVE_KERNELS", raising=False)
    gpu_check.main(["--cpu-smoke"])
    out = capsys.readouterr().out
    for section in ("(a) fused update", "(b) whole sampling loop", "(c) wall time outside the model"):
        assert section in out
    assert "failed" not in out, out
    for impl in ("eager", "triton"):
        for mode in ("fwd ", "fwd+bwd"):
            assert any(f" {mode}" in line and f" {impl} " in line and "-" not in line.split()[5]
                       for line in out.splitlines()), (impl, mode)
    assert "fp16:" in out and "bf16:" in out and "plain .run" in out


def test_without_cuda_it_stops_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device.*--cpu-smoke"):
        gpu_check.main([])
