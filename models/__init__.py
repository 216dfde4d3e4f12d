"""Models that ship with diffsolve (trained in the project; weights under weights/).

`load_mnist_unet()`: an EDM-preconditioned UNet on 1 x 28 x 28 MNIST digits in [-1, 1] (prediction='denoiser',
EDMSchedule), ready for `Sampler(load_mnist_unet()).run(steps=...)`. Retrain with
`python -m diffsolve.models.train --what unet`; score with `python -m diffsolve.models.evaluate`.
`load_mnist_consistency()`: a consistency model distilled from it (Song et al. 2023), sampled in 1-4 steps by
`Sampler(load_mnist_consistency()).run(steps=1)`; retrain with `python -m diffsolve.models.train --what consistency`.
"""
from .builtin import load_feature_stats, load_mnist_classifier, load_mnist_consistency, load_mnist_unet

__all__ = ["load_mnist_unet", "load_mnist_consistency", "load_mnist_classifier", "load_feature_stats"]
