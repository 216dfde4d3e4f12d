"""A corrupt reflow manifest: the refusal says that deleting it recovers, and deleting it does."""
from __future__ import annotations

import pytest
import torch

from diffsolve.field import ModelSpec
from diffsolve.training.reflow import CouplingsError, generate_couplings, load_couplings, verify_couplings

SETTINGS = dict(solver="euler", steps=2, batch_size=4, shard_size=4, seed=3)


class Flow(torch.nn.Module):
    @property
    def diffsolve_spec(self):
        return ModelSpec(prediction="velocity", schedule=None, sample_shape=(2,), time_convention="flow")

    def forward(self, x, t):
        return -0.5 * x


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"format": "diffsolve-couplings/1"}', ""])
def test_a_corrupt_manifest_names_the_recovery_and_deleting_it_recovers(tmp_path, content):
    out = tmp_path / "c"
    generate_couplings(Flow(), out, 8, **SETTINGS)
    z, x = load_couplings(out)
    (out / "manifest.json").write_text(content)
    with pytest.raises(CouplingsError, match="delete it to recover"):
        verify_couplings(out)
    try:
        generate_couplings(Flow(), out, 8, **SETTINGS)
    except CouplingsError as e:
        assert "delete it to recover" in str(e)
        (out / "manifest.json").unlink()
        run = generate_couplings(Flow(), out, 8, **SETTINGS)
        assert run.computed == [] and run.kept == [0, 1]
    z2, x2 = load_couplings(out)
    assert torch.equal(z, z2) and torch.equal(x, x2)


def test_an_output_path_under_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    from diffsolve.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="out_dir"):
        generate_couplings(Flow(), tmp_path / "file" / "c", 8, **SETTINGS)
