"""diffsolve.likelihood vs k-diffusion's log_likelihood on the built-in MNIST UNet: same digits, same dequantization
noise, one Rademacher probe each (independent draws), dopri5 at rtol = atol = 1e-5, from sigma_min to sigma_max.

    python scripts/likelihood_peer.py [--samples 16]
"""
import argparse
import math
import time

import torch

from diffsolve.analysis.likelihood import likelihood
from diffsolve.cli.argtypes import positive_int
from diffsolve.models import load_mnist_unet
from diffsolve.models.data import load_mnist
from diffsolve.evaluation.k_diffusion_peer import load_k_diffusion_sampling


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python scripts/likelihood_peer.py", description=__doc__)
    ap.add_argument("--samples", "--n", dest="n", type=positive_int, default=16, help="held-out digits (default 16)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    kd = load_k_diffusion_sampling()
    unet = load_mnist_unet()
    x = load_mnist("heldout")[0][:args.n].double()
    unet = unet.double()
    # dequantize once, shared: x in [-1, 1] on 256 levels -> bin width 2/256
    g = torch.Generator().manual_seed(0)
    xq = x + (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * (2.0 / 256)
    D = x[0].numel()
    smin, smax = unet.diffsolve_spec.schedule.sigma_min, unet.diffsolve_spec.schedule.sigma_max
    to_bpd = lambda ll: -(ll / D - math.log(128.0)) / math.log(2.0)      # [-1,1] -> 256 bins of width 2/256
    t0 = time.perf_counter()
    torch.manual_seed(1)
    ll_kd, info = kd.log_likelihood(unet, xq, smin, smax, atol=1e-5, rtol=1e-5)
    t_kd = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = likelihood(unet, xq, divergence="hutchinson", probes=1, probe="rademacher", seed=list(range(args.n)),
                     solver="dopri5", rtol=1e-5, atol=1e-5, t_start=float(unet.diffsolve_spec.schedule.t_from_edm_sigma(smin)))
    t_ds = time.perf_counter() - t0
    b_kd, b_ds = to_bpd(ll_kd.detach()), to_bpd(res.log_prob.detach())
    def ci(b):
        m, s = float(b.mean()), float(b.std()) / math.sqrt(b.numel())
        return m, 1.96 * s
    print(f"k-diffusion log_likelihood: bits/dim {ci(b_kd)[0]:.4f} +- {ci(b_kd)[1]:.4f}, NFE {info['fevals']}, {t_kd:.1f} s")
    print(f"diffsolve.likelihood      : bits/dim {ci(b_ds)[0]:.4f} +- {ci(b_ds)[1]:.4f}, NFE {res.nfe}, {t_ds:.1f} s")
    print("per-sample nats, kd vs ds:", [f"{a:.1f}/{b:.1f}" for a, b in zip(ll_kd.tolist()[:6], res.log_prob.tolist()[:6])])
    diff = b_kd - b_ds
    print(f"paired difference (kd - ds): {float(diff.mean()):.4f} +- {1.96*float(diff.std())/4:.4f} bits/dim")
    return {"k_diffusion_bpd": ci(b_kd), "diffsolve_bpd": ci(b_ds), "nfe": (info["fevals"], res.nfe)}


if __name__ == "__main__":
    main()
