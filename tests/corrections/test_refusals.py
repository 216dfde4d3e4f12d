"""Bad options and files of the corrections raise the library's error naming the argument: max_order, grid
options of the default AMED grid, a data mean of another model, Skip-Tuning settings files and their folder."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from diffsolve import Sampler
from diffsolve.errors import InvalidArgument
from diffsolve.corrections.io import SHIPPED, CoefficientCorrection, load_correction
from diffsolve.corrections.skip import SkipSettings, load_settings, save_settings
from diffsolve.models.unet import UNet
from diffsolve.problems import GaussianProblem

JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=3),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                 max_size=3), max_leaves=5)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet((8, 16), 16, blocks_per_level=1).eval().requires_grad_(False)


@pytest.mark.parametrize("name,opts", [("amed_plugin", {"base": "ipndm"}), ("amed_plugin", {"base": "dpmpp_2m"}),
                                       ("amed", {}), ("learned_multistep", {"base": "deis"})])
@pytest.mark.parametrize("bad", [0, -3, 1.5, "2", True])
def test_max_order_below_one_or_not_an_integer_is_refused_by_name(net, name, opts, bad):
    with pytest.raises(InvalidArgument, match="max_order"):
        Sampler(net, name, progress=False, max_order=bad, **opts)


def test_numpy_max_order_is_an_integer(net):
    np = pytest.importorskip("numpy")
    Sampler(net, "amed_plugin", progress=False, base="ipndm", max_order=np.int64(2))


@pytest.mark.parametrize("name,opts", [("amed", {}), ("amed_plugin", {"base": "ipndm"})])
def test_grid_options_the_default_amed_grid_does_not_take_are_refused_by_name(net, name, opts):
    with pytest.raises(InvalidArgument, match="grid_options.*final.*allowed keys: rho"):
        Sampler(net, name, progress=False, grid_options={"final": "min"}, **opts).run(nfe=5, batch_size=1, seed=0)


def test_a_file_without_model_identity_is_refused_on_samples_of_another_shape(tmp_path):
    shipped = load_correction(SHIPPED / "weights-deis-mnist-unet.safetensors")
    anonymous = CoefficientCorrection(shipped.grids, shipped.weights, shipped.base, shipped.afs, shipped.afs_mean,
                                      None, {}).save(tmp_path / "w.safetensors")
    field = GaussianProblem.default(dim=16)
    with pytest.raises(InvalidArgument, match="data mean.*another model"):
        Sampler(field, "learned_multistep", coefficients=anonymous, progress=False).run(nfe=5, batch_size=2, seed=0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=JSON)
def test_skip_settings_files_parse_with_types_or_raise_our_error(tmp_path, content):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(content))
    try:
        s = load_settings(path)
    except InvalidArgument as e:
        assert str(path) in str(e)
        return
    assert isinstance(s.rho_bottom, float) and isinstance(s.rho_top, float)
    assert s.model is None or isinstance(s.model, str)
    assert s.nfe is None or (isinstance(s.nfe, int) and not isinstance(s.nfe, bool))


def test_skip_settings_round_trip_and_a_list_is_refused(tmp_path):
    s = SkipSettings(rho_bottom=0.7, rho_top=0.95, active=(0.1, 5.0), model="m", solver="euler", nfe=6,
                     metric={"held_out": 1.0})
    assert load_settings(save_settings(s, tmp_path / "s.json")) == s
    (tmp_path / "list.json").write_text("[0.7, 1.0]")
    with pytest.raises(InvalidArgument, match="holds a list"):
        load_settings(tmp_path / "list.json")


def test_skip_settings_to_an_unwritable_folder_fail_before_writing():
    # /proc/self refuses new files even to root (CI runs as root, where a chmod-locked folder stays writable)
    with pytest.raises(InvalidArgument, match="/proc/self.*not a writable folder"):
        save_settings(SkipSettings(), "/proc/self/s.json")


def test_skip_settings_under_a_file_fail_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="not a writable folder"):
        save_settings(SkipSettings(), tmp_path / "file" / "s.json")
