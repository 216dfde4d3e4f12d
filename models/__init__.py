"""Models that ship with diffsolve (trained in the project; weights under weights/).

`load_mnist_unet()`: an EDM-preconditioned UNet on 1 x 28 x 28 MNIST digits in [-1, 1] (prediction='denoiser',
EDMSchedule), ready for `Sampler(load_mnist_unet()).run(steps=...)`. Retrain with
`python -m diffsolve.training.mnist --what unet`; score with `python -m diffsolve.models.evaluate`.

`load_mnist_unet_deep()`: a deeper UNet of the same recipe (four levels of two blocks, eight skip connections),
the test bed of Skip-Tuning (`diffsolve.skip_tuned`); retrain with `python -m diffsolve.training.mnist --what unet_deep`.

`load_mnist_consistency()`: a consistency model distilled from it (Song et al. 2023) and fine-tuned on its ODE
trajectories with a GAN term (as CTM, Kim et al. 2023), sampled in 1-4 steps by
`Sampler(load_mnist_consistency()).run(steps=1)`; retrain with `python -m diffsolve.training.mnist --what consistency`.

`load_moons_flow(reflow=1|2)`, `load_moons_shortcut()`: small 2-D velocity fields on the two moons (t = 0 at
N(0, I) noise, t = 1 at the data): a 1-rectified flow, the 2-rectified flow trained on its couplings, and a
shortcut model (`Sampler(load_moons_shortcut()).run(steps=1)`). Retrain with `python -m diffsolve.models.toy2d`.
"""
from diffsolve.models.builtin import (load_feature_stats, load_mnist_classifier, load_mnist_consistency, load_mnist_unet,
                      load_mnist_unet_deep)

_TOY2D = ("load_moons_flow", "load_moons_shortcut")


def __getattr__(name: str):
    # imported on first use, so that `python -m diffsolve.models.toy2d` does not find it imported already
    if name in _TOY2D:
        from diffsolve.models import toy2d
        return getattr(toy2d, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["load_mnist_unet", "load_mnist_unet_deep", "load_mnist_consistency", "load_mnist_classifier", "load_feature_stats",
           "load_moons_flow", "load_moons_shortcut"]
