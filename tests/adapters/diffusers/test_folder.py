"""`--model <local diffusers folder>`: a tiny random-weight SD-style pipeline (UNet2DConditionModel + DDIM
scheduler, saved offline) is read into a field with its latent shape and the scheduler's path, tuned with
per-sample text embeddings under classifier-free guidance, and sampled with the result. Quality is not
measurable on random weights; this proves the whole path runs and the record is right."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsolve import Sampler
from diffsolve.bench.models import resolve_model
from diffsolve.cli import main
from diffsolve.corrections.io import IdentityMismatch, load_correction
from diffsolve.errors import InvalidArgument
from diffsolve.field import ClassifierFreeGuidance, Conditioned
from diffsolve.pretrained_adapters.diffusers import folder_parts, load_diffusers_folder

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny SD-style folder: unet/ (4 latent channels, 8 x 8, cross-attention width 8) and scheduler/, plus a
    file of 4 prompt embeddings (5 tokens) and the empty prompt's."""
    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    unet.save_pretrained(root / "unet")
    diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                            set_alpha_to_one=False).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    g = torch.Generator().manual_seed(0)
    save_file({"encoder_hidden_states": torch.randn(4, 5, 8, generator=g)}, str(root / "cond.safetensors"))
    save_file({"encoder_hidden_states": torch.zeros(1, 5, 8)}, str(root / "uncond.safetensors"))
    return root


@pytest.mark.slow          # the module's fixture builds and saves the pipeline (a few seconds)
def test_folder_gives_the_latent_shape_and_the_scheduler_path(pipeline, tmp_path):
    field = load_diffusers_folder(pipeline)
    assert field.sample_shape == (4, 8, 8) and field.prediction == "eps"
    assert type(field.model.inner).__name__ == "UNet2DConditionModel"
    entry, built = resolve_model(str(pipeline))
    assert entry.kind == "image" and built.sample_shape == (4, 8, 8)
    assert folder_parts(pipeline / "unet")[1] == pipeline / "scheduler" / "scheduler_config.json"
    with pytest.raises(InvalidArgument, match="no diffusers network"):
        folder_parts(tmp_path)


@pytest.mark.slow
def test_tune_grid_on_the_pipeline_with_guidance_then_sample(pipeline, tmp_path):
    out = tmp_path / "g.safetensors"
    assert main(["tune", "grid", "--model", str(pipeline), "--conditions", str(pipeline / "cond.safetensors"),
                 "--guidance-scale", "3", "--uncond", str(pipeline / "uncond.safetensors"), "--nfe", "6",
                 "--samples", "4", "--epochs", "1", "--out", str(out)]) == 0
    record = json.loads((tmp_path / "g.safetensors.json").read_text())
    assert record["meta"]["teacher"] == "fine"           # an image-shaped latent: the fast teacher
    assert "ClassifierFreeGuidance(scale=3.0" in record["model_identity"]
    field = load_diffusers_folder(pipeline)
    uncond = load_file(str(pipeline / "uncond.safetensors"))
    prompts = {"encoder_hidden_states": torch.randn(2, 5, 8)}       # other prompts than the tuning ones
    guided = Conditioned(ClassifierFreeGuidance(field, 3.0, uncond), prompts)
    corr = load_correction(out, field=guided)
    x = Sampler(guided, corr.base, grid=corr.grid(3), progress=False).run(seed=[0, 1]).samples
    assert x.shape == (2, 4, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(IdentityMismatch):
        load_correction(out, field=Conditioned(ClassifierFreeGuidance(field, 5.0, uncond), prompts))
