"""Learned few-step corrections for a given network: AMED-Solver / AMED-Plugin predictors, GITS and learned
time grids, learned multistep weights. Each is trained once per model (`diffsolve tune`), saved as safetensors
plus a JSON sidecar that records the model identity, and used through the ordinary Sampler:

    Sampler(model, "amed_plugin", base="ipndm", predictor="amed.safetensors").run(nfe=5)
    Sampler(model, "ipndm", grid=load_correction("gits.safetensors").grid(5)).run()

The built-in MNIST UNet ships with trained ones (corrections/weights), so `Sampler(load_mnist_unet(),
"amed_plugin", base="ipndm").run(nfe=5)` and `grid="gits"` / `grid="learned"` need nothing else.

`diffsolve tune <name>` runs the tuners registered with `register_tuner` (corrections.tuning; the built-in ones in
corrections.tuners): a new learned correction is one module with its solver and its tuner, plus their registration.
"""
from diffsolve.corrections import amed, learned_multistep, pas, pas_tuner, skip_tuner, tuners  # noqa: F401
from diffsolve.corrections import auto  # noqa: F401  (registers `tune auto`)
from diffsolve.corrections.auto_file import AutoCorrection, SolverChoice
from diffsolve.corrections.coefficients import learn_coefficients
from diffsolve.corrections.gits import gits_cost_matrix, gits_dynamic_programming, gits_grid
from diffsolve.corrections.grid_search import learn_grid
from diffsolve.corrections.io import (AMEDCorrection, CoefficientCorrection, GridCorrection, IdentityMismatch,
                                      amed_grid, load_correction)
from diffsolve.corrections.predictor import AMEDPredictor, TimeTable
from diffsolve.corrections.shipped import find_shipped
from diffsolve.corrections.skip import skip_tuned
from diffsolve.corrections.teacher import teacher_states
from diffsolve.corrections.train import steps_for_nfe, train_amed
from diffsolve.corrections.tuning import TuneContext, TuneSettings, register_tuner, tune

__all__ = ["AMEDPredictor", "TimeTable", "AMEDCorrection", "GridCorrection", "CoefficientCorrection",
           "load_correction", "IdentityMismatch", "amed_grid", "find_shipped", "train_amed", "steps_for_nfe",
           "gits_grid", "learn_grid", "gits_cost_matrix", "gits_dynamic_programming", "teacher_states",
           "learn_coefficients", "skip_tuned", "AutoCorrection", "SolverChoice", "register_tuner", "tune", "TuneSettings",
           "TuneContext"]
