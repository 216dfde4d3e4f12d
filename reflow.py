"""Deprecated: the reflow couplings live in `diffsolve.training.reflow` and the command line is `diffsolve reflow`
(`torchrun ... -m diffsolve reflow ...`). `python -m diffsolve.reflow ...` still runs that command."""
import sys
import warnings

from diffsolve.cli.main import main as _main
from diffsolve.training.reflow import (FORMAT, CouplingRun, CouplingsError, coupling_seeds, generate_couplings,
                                       load_couplings, verify_couplings)

warnings.warn("diffsolve.reflow is deprecated: use diffsolve.training.reflow, and `diffsolve reflow` on the "
              "command line", DeprecationWarning, stacklevel=2)

__all__ = ["generate_couplings", "load_couplings", "verify_couplings", "coupling_seeds", "CouplingsError",
           "CouplingRun", "FORMAT"]

if __name__ == "__main__":
    sys.exit(_main(["reflow", *sys.argv[1:]]))
