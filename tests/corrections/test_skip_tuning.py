"""Skip-Tuning: exact against scaling by hand, a no-op at rho = 1, a network unchanged outside a context (its hooks
stay, inert), and a tuner that finds a known minimum without scoring on its own tuning noise."""
from __future__ import annotations

import pytest
import torch

from diffsolve import ClassifierFreeGuidance, FeatureCapture, InvalidArgument, Sampler, VectorField
from diffsolve.corrections.skip import (SkipSettings, golden_section, load_settings, save_settings, skip_tuned,
                                        tune_skip)
from diffsolve.corrections.skip_hooks import depth_scales


@pytest.fixture(scope="module")
def unet():
    from diffsolve.models import load_mnist_unet
    return load_mnist_unet()


def _hooks(net: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in net.modules())


def test_depth_scales_are_linear_from_top_to_bottom():
    assert depth_scales(3, 1.0, 0.7) == pytest.approx([1.0, 0.85, 0.7])
    assert depth_scales(1, 1.0, 0.7) == [0.7]


def test_builtin_unet_rho_one_is_bitwise_and_scaling_equals_the_keyword(unet):
    base = Sampler(unet, "dpmpp_2m", progress=False).run(steps=4, batch_size=2, seed=0).samples
    same = Sampler(skip_tuned(unet, rho_bottom=1.0), "dpmpp_2m", progress=False).run(steps=4, batch_size=2, seed=0)
    assert torch.equal(same.samples, base)
    tuned = Sampler(skip_tuned(unet, rho_bottom=0.7), "dpmpp_2m", progress=False).run(steps=4, batch_size=2,
                                                                                       seed=0).samples
    by_hand = Sampler(unet, "dpmpp_2m", progress=False).run(steps=4, batch_size=2, seed=0,
                                                             skip_scale=depth_scales(3, 1.0, 0.7)).samples
    assert torch.equal(tuned, by_hand) and not torch.equal(tuned, base)
    assert unet.skip_scales == [1.0, 1.0, 1.0]


def test_context_scales_calls_inside_only_and_never_changes_the_model(unet):
    x, sigma = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        plain, by_hand = unet(x, sigma), unet(x, sigma, skip_scale=depth_scales(3, 1.0, 0.5))
        with pytest.raises(RuntimeError, match="inside"):
            with skip_tuned(unet, rho_bottom=0.5):
                assert unet.skip_scales == [1.0, 1.0, 1.0]
                assert torch.equal(unet(x, sigma), by_hand)
                raise RuntimeError("inside")
        assert torch.equal(unet(x, sigma), plain)


def test_composes_with_guidance_and_feature_capture(unet):
    field = FeatureCapture(skip_tuned(VectorField(unet), rho_bottom=0.8), {"bottleneck": "mid"})
    guided = ClassifierFreeGuidance(field, scale=1.0, uncond_kwargs={})
    out = Sampler(guided, "euler", progress=False).run(steps=3, batch_size=2, seed=0)
    ref = Sampler(skip_tuned(unet, rho_bottom=0.8), "euler", progress=False).run(steps=3, batch_size=2, seed=0)
    torch.testing.assert_close(out.samples, ref.samples)
    assert out.nfe == 6


def test_active_range_limits_the_scaling_to_those_noise_levels(unet):
    plain = Sampler(unet, "euler", progress=False).run(steps=4, batch_size=2, seed=0).samples
    never = Sampler(skip_tuned(unet, rho_bottom=0.5, active=(1e3, 2e3)), "euler", progress=False).run(
        steps=4, batch_size=2, seed=0).samples
    assert torch.equal(never, plain)


# ------------------------------------------------------------------------------------------------
# diffusers UNets: the hooks against scaling by hand on the same tensors
# ------------------------------------------------------------------------------------------------
def _unet2d():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D")).eval()


def _unet2d_condition():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                          layers_per_block=1, norm_num_groups=4, cross_attention_dim=8,
                                          attention_head_dim=2,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


def _by_hand(net, scales_top_to_bottom):
    """Pre-hooks written here, independently: up_blocks[0] is the deepest level."""
    handles = []
    for block, rho in zip(reversed(list(net.up_blocks)), scales_top_to_bottom):
        def hook(module, args, kwargs, rho=rho):
            if "res_hidden_states_tuple" in kwargs:
                kwargs["res_hidden_states_tuple"] = tuple(t * rho for t in kwargs["res_hidden_states_tuple"])
                return args, kwargs
            return (args[0], tuple(t * rho for t in args[1]), *args[2:]), kwargs
        handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


@pytest.mark.parametrize("make", [_unet2d, _unet2d_condition])
def test_diffusers_hooks_equal_scaling_by_hand(make):
    net = make()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0, 20.0])
    kw = {"encoder_hidden_states": torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(2))} \
        if "Condition" in type(net).__name__ else {}
    with torch.no_grad():
        plain = net(x, t, **kw).sample
        with skip_tuned(net, rho_bottom=1.0):
            assert _hooks(net) == 0
            assert torch.equal(net(x, t, **kw).sample, plain)
        levels = len(net.up_blocks)
        scales = depth_scales(levels, 1.0, 0.6)
        with skip_tuned(net, rho_bottom=0.6):
            ours = net(x, t, **kw).sample
        assert torch.equal(net(x, t, **kw).sample, plain)      # the hooks stay, inert outside a context
        handles = _by_hand(net, scales)
        manual = net(x, t, **kw).sample
        for h in handles:
            h.remove()
    assert torch.equal(ours, manual) and not torch.equal(ours, plain)


def test_any_module_by_name():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(3, 3)
            self.dec = torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.dec(torch.cat([x, self.enc(x)], dim=1))

    net = Tiny()
    x = torch.randn(2, 3)
    with torch.no_grad():
        plain = net(x)
        with skip_tuned(net, rho_bottom=0.5, outputs_of=["enc"]):
            ours = net(x)
        manual = net.dec(torch.cat([x, 0.5 * net.enc(x)], dim=1))
        after = net(x)
    assert torch.equal(ours, manual) and torch.equal(after, plain)
    with pytest.raises(InvalidArgument, match="outputs_of"):
        skip_tuned(net, outputs_of=["encoder"])
    with pytest.raises(InvalidArgument, match="no known skip"):
        skip_tuned(net)


# ------------------------------------------------------------------------------------------------
# The tuner
# ------------------------------------------------------------------------------------------------
class _OneSkip(torch.nn.Module):
    """A 'network' whose data prediction is its one skip feature: the samples equal rho exactly."""

    def __init__(self):
        super().__init__()
        self.skip = torch.nn.Identity()

    def forward(self, x, t):
        return self.skip(torch.ones_like(x))


class _TwoSkips(torch.nn.Module):
    """Samples [rho_top, rho_bottom]: each coordinate of the data prediction is one skip feature."""

    def __init__(self):
        super().__init__()
        self.top, self.bottom = torch.nn.Identity(), torch.nn.Identity()

    def forward(self, x, t):
        return torch.cat([self.top(torch.ones_like(x[:, :1])), self.bottom(torch.ones_like(x[:, 1:]))], dim=1)


def test_tuner_searches_rho_top_and_noise_ranges_on_the_tuning_noise():
    field = VectorField(_TwoSkips(), "x0", "edm", sample_shape=(2,))
    metric = lambda s: float((s[:, 0].mean() - 0.9) ** 2 + (s[:, 1].mean() - 0.6) ** 2)  # noqa: E731
    lines = []
    found = tune_skip(field, "euler", 3, metric, tune_seeds=range(4), eval_seeds=range(4, 8), rho_range=(0.3, 1.0),
                      evaluations=20, skip_options={"outputs_of": ["top", "bottom"]}, progress=lines.append,
                      tune_rho_top=True, active_choices=[(1e3, 2e3), (0.0, 1e3)])
    assert abs(found.rho_bottom - 0.6) < 5e-3 and abs(found.rho_top - 0.9) < 5e-3
    assert found.active is None          # never active is worse; always active only ties: the plain choice stays
    assert any("rho_top=" in x for x in lines) and sum("active=" in x for x in lines) == 2
    assert found.metric["held_out"] < 1e-4 < found.metric["held_out_untuned"]


def test_golden_section_finds_the_minimum():
    best, value, history = golden_section(lambda r: (r - 0.731) ** 2, 0.5, 1.0, evaluations=20)
    assert abs(best - 0.731) < 1e-3 and len(history) == 20


def test_tuner_finds_a_known_minimum_and_refuses_its_own_noise(tmp_path):
    field = VectorField(_OneSkip(), "x0", "edm", sample_shape=(2,))
    metric = lambda samples: float((samples.mean() - 0.73) ** 2)  # noqa: E731
    opts = {"outputs_of": ["skip"]}
    with pytest.raises(InvalidArgument, match="overlaps"):
        tune_skip(field, "euler", 3, metric, tune_seeds=range(4), eval_seeds=range(2, 6), skip_options=opts,
                  progress=None)
    lines = []
    found = tune_skip(field, "euler", 3, metric, tune_seeds=range(4), eval_seeds=range(4, 8), evaluations=16,
                      skip_options=opts, progress=lines.append)
    assert abs(found.rho_bottom - 0.73) < 5e-3
    assert found.metric["held_out"] < found.metric["held_out_untuned"]
    assert any("held-out" in line for line in lines)
    path = save_settings(found, tmp_path / "skip.json")
    assert load_settings(path) == found
    again = skip_tuned(field, settings=path, **opts)
    assert again.tuning.scales == [found.rho_bottom]
    other = _OneSkip()
    other.extra = torch.nn.Linear(1, 1)                        # another network: refused
    with pytest.raises(InvalidArgument, match="tuned on"):
        skip_tuned(VectorField(other, "x0", "edm", sample_shape=(2,)), settings=path, **opts)


def test_readme_block_runs():
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "docs/skip-tuning.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "skip_tuned(" in b)
    scope = {}
    exec(compile(block, "docs/skip-tuning.md", "exec"), scope)
    assert scope["tuned"].samples.shape == (4, 1, 28, 28) and scope["unet"].skip_scales == [1.0, 1.0, 1.0]


def test_sampler_loads_tuned_settings_and_refuses_them_on_another_model(unet, tmp_path):
    path = save_settings(SkipSettings(rho_bottom=0.7, model=model_identity_of(unet)), tmp_path / "skip.json")
    loaded = Sampler(unet, "euler", skip_tuning=path, progress=False).run(steps=3, batch_size=2, seed=0).samples
    by_hand = Sampler(skip_tuned(unet, rho_bottom=0.7), "euler", progress=False).run(steps=3, batch_size=2, seed=0)
    assert torch.equal(loaded, by_hand.samples)
    other = type(unet)(unet.channels)                          # same layout, other weights: refused
    with pytest.raises(InvalidArgument, match="tuned on"):
        Sampler(other, "euler", skip_tuning=path)
    with pytest.raises(InvalidArgument, match="settings="):
        Sampler(unet, "euler", skip_tuning=0.7)


def model_identity_of(net):
    from diffsolve.field import model_identity
    return model_identity(net)


def test_shipped_corrections_apply_through_skip_tuning_and_the_cache_still_tells_them_apart(unet):
    import warnings
    plain = VectorField(unet)
    tuned = skip_tuned(unet, rho_bottom=0.7)
    assert tuned.correction_identity() == plain.identity() != tuned.identity()
    for name, opts in (("amed", {}), ("amed_plugin", {"base": "ipndm"}), ("ipndm", {"grid": "learned"})):
        with warnings.catch_warnings():
            warnings.simplefilter("error")          # no fallback to an untrained predictor
            a = Sampler(tuned, name, progress=False, **opts).run(nfe=5, batch_size=2, seed=0)
        b = Sampler(plain, name, progress=False, **opts).run(nfe=5, batch_size=2, seed=0)
        assert a.nfe == b.nfe == 5 and not torch.equal(a.samples, b.samples)


def test_deep_unet_blocks_share_their_level_scale():
    from diffsolve.models.unet import UNet
    torch.manual_seed(0)
    net = UNet((8, 16, 16, 16), 32, blocks_per_level=2).eval()
    for p in net.parameters():                   # zero-initialised output layers would hide the skips
        torch.nn.init.normal_(p, std=0.2)
    assert net.num_skip_levels == 4 and len(net.enc) == len(net.dec) == 8
    for bad in (0, 1.5, "2", True):
        with pytest.raises(InvalidArgument, match="blocks_per_level"):
            UNet((8, 16), 32, blocks_per_level=bad)
    x, s = torch.randn(3, 1, 28, 28), torch.tensor([0.3, 2.0, 20.0])
    with torch.no_grad():
        base = net(x, s)
        with skip_tuned(net, rho_bottom=1.0):
            assert torch.equal(net(x, s), base)
        with skip_tuned(net, rho_bottom=0.4):
            tuned = net(x, s)
        assert torch.equal(tuned, net(x, s, skip_scale=[1.0, 0.8, 0.6, 0.4])) and not torch.equal(tuned, base)
        # by hand: the decoder's inputs scaled at the concatenation, one factor per level for both of its blocks
        seen = []
        hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for b in net.dec]
        net(x, s, skip_scale=[1.0, 0.8, 0.6, 0.4])
        for h in hooks:
            h.remove()
        assert seen == [16 + 16, 16 + 16, 16 + 16, 16 + 16, 16 + 16, 16 + 16, 8 + 16, 8 + 8]


@pytest.mark.slow
def test_tune_skip_command_writes_settings_the_sampler_loads(unet, tmp_path, capsys):
    from diffsolve.cli import main
    out = tmp_path / "skip.json"
    assert main(["tune", "skip", "--model", "mnist-unet", "--solver", "euler", "--nfe", "2", "--n", "24",
                 "--eval-n", "24", "--evaluations", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out" in printed and "tuning noise" in printed
    s = load_settings(out)
    assert s.solver == "euler" and s.nfe == 2 and 0.5 <= s.rho_bottom <= 1.0
    assert s.metric["tune_seeds"][0] != s.metric["eval_seeds"][0]
    Sampler(unet, "euler", skip_tuning=out, progress=False).run(steps=2, batch_size=1, seed=0)
    assert main(["tune", "skip", "--model", "mnist-unet", "--nfe", "3,5", "--out", str(out)]) != 0
    assert "takes one NFE" in capsys.readouterr().err
    assert main(["tune", "skip", "--model", "gmm", "--nfe", "3", "--out", str(out)]) != 0
    assert "--metric" in capsys.readouterr().err
    assert main(["tune", "skip", "--model", "mnist-unet", "--nfe", "1", "--metric", "torch:no_such_metric",
                 "--out", str(out)]) != 0
    assert "--metric='torch:no_such_metric': cannot import it" in capsys.readouterr().err
    custom = tmp_path / "std.json"                  # any callable metric, named as module:attr
    assert main(["tune", "skip", "--model", "mnist-unet", "--solver", "euler", "--nfe", "1", "--n", "4",
                 "--eval-n", "4", "--evaluations", "2", "--metric", "torch:std", "--out", str(custom)]) == 0
    assert load_settings(custom).metric["name"] == "torch:std"


@pytest.mark.slow
def test_skip_table_scores_tuned_and_untuned_on_held_out_noise(tmp_path):
    import json
    from diffsolve.bench.skip_table import EVAL_SEED, TUNE_SEED, format_table, skip_rows, write
    assert TUNE_SEED + 10 ** 6 <= EVAL_SEED          # the tuning seeds of any --n up to 10^6 never reach the held-out
    rows = skip_rows("mnist-unet", ["euler"], [2], n=24, tune_n=24, rmse_n=2, tune_nfe=2, evaluations=2,
                     log=lambda s: None)
    (r,) = rows
    assert r["status"] == "ok" and 0.5 <= r["rho_bottom"] <= 1.0
    for m in ("fd", "confidence", "rmse"):
        assert r[f"{m}_tuned"] > 0 and r[f"{m}_untuned"] > 0
    assert (r["fd_tuned"] == r["fd_untuned"]) == (r["rho_bottom"] == 1.0)
    text = format_table(rows)
    assert f"| mnist-unet | euler | 2 | {r['rho_bottom']:.3f} |" in text
    files = write(rows, tmp_path)
    assert json.loads(files[0].read_text())[0]["fd_tuned"] == r["fd_tuned"]


def test_deep_builtin_unet_loads_in_float32_with_eight_skips_and_rho_one_is_bitwise():
    from diffsolve.models import load_mnist_unet_deep
    net = load_mnist_unet_deep()
    assert net.blocks_per_level == 2 and net.num_skip_levels == 4 and len(net.enc) == 8
    assert all(p.dtype == torch.float32 for p in net.parameters())
    base = Sampler(net, "dpmpp_2m", progress=False).run(steps=3, batch_size=2, seed=0).samples
    same = Sampler(skip_tuned(net, rho_bottom=1.0), "dpmpp_2m", progress=False).run(steps=3, batch_size=2, seed=0)
    tuned = Sampler(skip_tuned(net, rho_bottom=0.7), "dpmpp_2m", progress=False).run(steps=3, batch_size=2, seed=0)
    assert torch.equal(base, same.samples) and not torch.equal(base, tuned.samples)
    assert torch.isfinite(base).all() and net.skip_scales == [1.0] * 4
