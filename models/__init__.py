"""Models that ship with diffsolve (trained in the project; weights under weights/).

`load_mnist_unet()`: an EDM-preconditioned UNet on 1 x 28 x 28 MNIST digits in [-1, 1] (prediction='denoiser',
EDMSchedule), ready for `Sampler(load_mnist_unet()).run(steps=...)`. Retrain with `diffsolve train --what unet`;
score with `diffsolve evaluate`.

`load_mnist_unet_deep()`: a deeper UNet of the same recipe (four levels of two blocks, eight skip connections),
the test bed of Skip-Tuning (`diffsolve.skip_tuned`); retrain with `diffsolve train --what unet_deep`.

`load_mnist_consistency()`: a consistency model distilled from it (Song et al. 2023) and fine-tuned on its ODE
trajectories with a GAN term (as CTM, Kim et al. 2023), sampled in 1-4 steps by
`Sampler(load_mnist_consistency()).run(steps=1)`; retrain with `diffsolve train --what consistency`.

`load_moons_flow(reflow=1|2)`, `load_moons_shortcut()`: small 2-D velocity fields on the two moons (t = 0 at
N(0, I) noise, t = 1 at the data): a 1-rectified flow, the 2-rectified flow trained on its couplings, and a
shortcut model (`Sampler(load_moons_shortcut()).run(steps=1)`). Retrain with `diffsolve train --what moons`.
`load_moons_8gaussians()`: a 1-rectified flow to the moons from the eight-Gaussians source
(`models.toy2d.eight_gaussians()`), which its spec names, so `Sampler(model)` draws its starts from there.
"""
from diffsolve.models.builtin import (load_feature_stats, load_mnist_classifier, load_mnist_consistency,
                                      load_mnist_unet, load_mnist_unet_deep)
from diffsolve.models.toy2d import load_moons_8gaussians, load_moons_flow, load_moons_shortcut

__all__ = ["load_mnist_unet", "load_mnist_unet_deep", "load_mnist_consistency", "load_mnist_classifier",
           "load_feature_stats", "load_moons_flow", "load_moons_shortcut",
           "load_moons_8gaussians"]
