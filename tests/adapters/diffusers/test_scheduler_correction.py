"""DiffsolveScheduler(correction=path) in a diffusers pipeline loop equals Sampler(unet, scheduler=config,
correction=path) on the same noise, for each kind of correction file; step counts the file does not hold and AMED
network predictors (per-sample times) are refused. Tiny random-weight UNet, corrections made by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_unet2d

diffusers = pytest.importorskip("diffusers")

from diffsolve import InvalidArgument, Sampler  # noqa: E402
from diffsolve.corrections import (AMEDCorrection, AMEDPredictor, AutoCorrection, CoefficientCorrection,  # noqa: E402
                                   GridCorrection, SolverChoice)
from diffsolve.pretrained_adapters.diffusers import DiffsolveScheduler  # noqa: E402

SIZE, BATCH = 8, 2


@pytest.fixture(scope="module")
def setup():
    unet = tiny_unet2d(SIZE)
    orig = diffusers.DDPMScheduler()
    base = Sampler(unet, scheduler=orig, solver="deis", grid="karras", progress=False)
    ident = base.field.correction_identity()
    t4 = tuple(float(v) for v in base.times(4))
    t3 = tuple(float(v) for v in base.times(3))[:-1] + (0.0,)
    torch.manual_seed(0)
    amed = AMEDCorrection(AMEDPredictor(features="none"), "deis", False, None, {3: t3}, ident)
    grid = GridCorrection("learned", {4: t4}, "deis", ident)
    files = {"grid": (grid, 4),
             "coefficients": (CoefficientCorrection({4: t4}, {4: tuple((0.02 * i, -0.01, 0.0) for i in range(4))},
                                                    "deis", False, None, ident, {"max_order": 3}), 4),
             "amed_table": (amed.to_table(base.field.schedule), 3),
             "auto": (AutoCorrection({4: grid, 5: SolverChoice("dpmpp_2m", "karras", 5)}, ident), 5)}
    return unet, orig, amed, files


@pytest.mark.parametrize("kind", ["grid", "coefficients", "amed_table", "auto"])
def test_pipeline_with_a_correction_equals_the_sampler(setup, kind, tmp_path):
    unet, orig, _, files = setup
    corr, steps = files[kind]
    path = str(corr.save(tmp_path / f"{kind}.safetensors"))
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=DiffsolveScheduler.from_config(orig.config, correction=path))
    pipe.set_progress_bar_config(disable=True)
    got = pipe(batch_size=BATCH, num_inference_steps=steps, generator=torch.Generator().manual_seed(1),
               output_type="np").images
    s = Sampler(unet, scheduler=orig, correction=path, progress=False)
    noise = torch.randn((BATCH, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(1))
    ref = s.run(steps, noise=noise).samples
    assert np.abs(got - (ref / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()).max() < 1e-5
    assert len(pipe.scheduler.timesteps) == s.plan(steps).nfe
    assert pipe.scheduler.config.correction == path


def test_refusals(setup, tmp_path):
    unet, orig, amed, files = setup
    path = str(files["grid"][0].save(tmp_path / "grid.safetensors"))
    sch = DiffsolveScheduler.from_config(orig.config, correction=path)
    with pytest.raises(InvalidArgument, match=r"tuned for NFE \[4\]"):
        sch.set_timesteps(5)
    with pytest.raises(InvalidArgument, match="fixes its grid"):
        sch.set_timesteps(timesteps=[999, 500, 0])
    with pytest.raises(InvalidArgument, match="leave solver_options= and grid= out"):
        DiffsolveScheduler.from_config(orig.config, correction=path, grid="karras")
    net = str(amed.save(tmp_path / "amed.safetensors"))
    with pytest.raises(InvalidArgument, match="time table"):
        DiffsolveScheduler.from_config(orig.config, correction=net)
