"""Time one solver update step, x' = sum_k c_k T_k, per implementation; print time, GB/s and % of copy bandwidth.

    python scripts/kernel_bench.py                       # CPU: eager and torch.compile, small sizes
    python scripts/kernel_bench.py --sizes toy,latents,images --dtypes float32,bfloat16 --terms 2,6
    python scripts/kernel_bench.py --device cuda         # adds the Triton kernel

The README's bandwidth table comes from this script; the options and the table live in diffsolve.cli.kernel_bench
and diffsolve.bench.kernels.
"""
from diffsolve.cli.kernel_bench import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python scripts/kernel_bench.py"))
