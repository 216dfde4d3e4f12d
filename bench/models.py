"""The bench's model registry: names for `diffsolve bench --model`, how each is loaded, and its default settings.

Models come from `BENCH_MODELS` (extend it with `register_bench_model`), a 'module:attr' path naming a model, a
factory or a `BenchModel`, or a model object; `resolve_model` turns any of these into an entry and a built model.
"""
from __future__ import annotations

import dataclasses
import inspect
import importlib
import os
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable

import torch

from diffsolve.errors import InvalidArgument, unknown_name
from diffsolve.evaluation.reference import ReferenceSettings
from diffsolve.field import Field, model_spec_of, with_source
from diffsolve.models.builtin import load_mnist_unet, load_mnist_unet_deep
from diffsolve.models.cond_mixture import WEIGHTS_FILE as COND_MIXTURE_WEIGHTS, load_cond_mixture
from diffsolve.pretrained_adapters.diffusers.folder import is_diffusers_folder, load_diffusers_folder
from diffsolve.pretrained_adapters.mnist_ddpm import load_mnist_ddpm
from diffsolve.pretrained_adapters.torchcfm import load_torchcfm_mlp
from diffsolve.problems import GaussianMixtureProblem, GaussianProblem

SHARED = Path(os.environ.get("DIFFSOLVE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@dataclass
class BenchModel:
    """A model for the benchmark and how to benchmark it by default.

    Attributes:
        name: Registry name (`diffsolve bench --model NAME`).
        build: Builds the model (a module, field or problem), taking no arguments.
        summary: One line describing the model in listings.
        kind: 'vector' (flat samples), 'image' ([C, H, W]: a sample grid is drawn) or 'points' (2-D).
        batch_size: Default number of samples.
        chunk_size: Samples per chunk (the unit of sharding and of reference solves).
        nfe: Default NFE budgets.
        dtype: Dtype the solvers run in; None runs them in the model's own dtype.
        solvers: Default solver names; None tries `DEFAULT_SOLVERS`.
        reference: How the reference solution is solved.
        trajectory: Ask for errors at every grid point (a reference state at each of them).
        data_samples: Samples of the data distribution used by distribution metrics.
        threads: Torch CPU threads while benchmarking; None leaves torch's setting.
        available: Returns None, or why the model cannot be built here.
    """

    name: str
    build: Callable[[], Any]
    summary: str = ""
    kind: str = "vector"
    batch_size: int = 256
    chunk_size: int = 256
    nfe: tuple[int, ...] = (4, 8, 16, 32)
    dtype: torch.dtype | None = None
    solvers: tuple[str, ...] | None = None
    reference: ReferenceSettings = dc_field(default_factory=ReferenceSettings)
    trajectory: bool = True
    data_samples: int = 4096
    threads: int | None = None      # torch CPU threads while benchmarking (None: leave torch's setting)
    available: Callable[[], str | None] = lambda: None


BENCH_MODELS: dict[str, BenchModel] = {}


def register_bench_model(entry: BenchModel) -> None:
    """Add a named model to `diffsolve bench --model` (names are unique).

    Args:
        entry: The model and its bench defaults; `entry.name` becomes its registry name.

    Raises:
        InvalidArgument: A model of that name is registered already.
    """
    if entry.name in BENCH_MODELS:
        raise InvalidArgument(f"bench model {entry.name!r} is registered already")
    BENCH_MODELS[entry.name] = entry


def _gmm():
    return GaussianMixtureProblem.default()


def _gaussian():
    return GaussianProblem.default(dim=16)


def _mnist_ddpm():
    return load_mnist_ddpm(SHARED / "models" / "mnist-ddpm-eps.safetensors")


def _needs(path: Path) -> Callable[[], str | None]:
    return lambda: None if path.is_file() else f"{path} is missing (the shared model folder beside the repository)"


register_bench_model(BenchModel(
    "gmm", _gmm, "Gaussian mixture, 8 components in 16-D, exact denoiser (EDM schedule)", batch_size=512,
    chunk_size=256, nfe=(4, 6, 8, 12, 16, 24, 32, 48, 64), dtype=torch.float64, threads=1))
register_bench_model(BenchModel(
    "gaussian", _gaussian, "Gaussian in 16-D, exact probability-flow solution (EDM schedule)", batch_size=512,
    chunk_size=256, nfe=(4, 6, 8, 12, 16, 24, 32, 48, 64), dtype=torch.float64, threads=1))
register_bench_model(BenchModel(
    "mnist-ddpm", _mnist_ddpm, "MNIST DDPM (eps, linear betas, T=1000) from ../shared/models", kind="image",
    batch_size=8, chunk_size=4, nfe=(5, 10, 20, 50), dtype=None,
    reference=ReferenceSettings(method="dopri5", rtol=1e-6, atol=1e-6), trajectory=False,
    available=_needs(SHARED / "models" / "mnist-ddpm-eps.safetensors")))

for _flow in ("otcfm", "cfm"):
    def _build(_f=_flow):
        return load_torchcfm_mlp(SHARED / "models" / "moons-flow" / f"{_f}.safetensors")
    register_bench_model(BenchModel(
        f"moons-{_flow}", _build, f"2-D two-moons flow ({_flow}, torchcfm MLP, plain velocity field)", kind="points",
        batch_size=1024, chunk_size=512, nfe=(2, 4, 8, 16, 32), dtype=torch.float64, threads=1,
        available=_needs(SHARED / "models" / "moons-flow" / f"{_flow}.safetensors")))

register_bench_model(BenchModel(
    "cond-mixture", load_cond_mixture, "class-conditional 2-D mixture (EDM denoiser MLP, 4 classes + null label; "
    "unconditional unless conditioned: tune --conditions diffsolve.models.cond_mixture:draw_labels)",
    kind="points", batch_size=1024, chunk_size=512, nfe=(3, 5, 8, 16), dtype=torch.float64, threads=1,
    available=_needs(COND_MIXTURE_WEIGHTS)))


def _mnist_unet():
    return load_mnist_unet()


# The built-in image model ships inside the package: the default image model of the bench ('image' names it too).
_MNIST_UNET = BenchModel(
    "mnist-unet", _mnist_unet, "built-in MNIST UNet (EDM denoiser, 358k parameters, trained in the project)",
    kind="image", batch_size=16, chunk_size=8, nfe=(5, 10, 20, 50), dtype=None,
    # rtol 1e-7: its gap to the 1e-5 check solve (2.8e-4 RMSE) is far below the errors measured (>= 0.02)
    reference=ReferenceSettings(method="dopri5", rtol=1e-7, atol=1e-7), trajectory=False)
register_bench_model(_MNIST_UNET)
register_bench_model(dataclasses.replace(_MNIST_UNET, name="image"))


WEIGHTS_DEEP = Path(__file__).resolve().parents[1] / "models" / "weights" / "mnist_unet_deep.safetensors"


def _mnist_unet_deep():
    return load_mnist_unet_deep()


register_bench_model(dataclasses.replace(
    _MNIST_UNET, name="mnist-unet-deep", build=_mnist_unet_deep, available=_needs(WEIGHTS_DEEP),
    summary="deeper built-in MNIST UNet (EDM denoiser, 1.07M parameters, eight skips; Skip-Tuning's test bed)"))

# Tried in this order when --solvers is not given; names another module has not registered are left out.
DEFAULT_SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "deis", "ipndm", "dpm_solver_3", "rk4")


def import_object(spec: str, argument: str) -> Any:
    """The object a 'module:attr' (attr may be dotted) path names, or the library's error naming `argument`.

    Args:
        spec: The path, 'module:attr' with a dotted attr allowed.
        argument: Name of the argument or flag the path came from, used in the error.

    Returns:
        The imported object.

    Raises:
        InvalidArgument: The module cannot be imported or has no such attribute.
    """
    mod, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise InvalidArgument(f"{argument}={spec!r}: cannot import it ({e})") from None
    return obj


def model_with_source(model: Any, source: str) -> Any:
    """The model's field drawing its starts from a source, or from the one a `--source module:attr` names.

    Args:
        model: The built model (or field).
        source: The source, or a 'module:attr' path naming it.

    Returns:
        The field with the source (the model is left unchanged).

    Raises:
        InvalidArgument: The path names nothing importable, or not a source this model can take.
    """
    obj = import_object(source, "--source") if isinstance(source, str) else source
    try:
        return with_source(model, obj)
    except InvalidArgument as e:
        raise InvalidArgument(f"--source {source!r}: {e}") from None


def resolve_model(model: Any) -> tuple[BenchModel, Any]:
    """A BenchModel and the built model from a registry name, a 'module:attr' path or a model object.

    Args:
        model: A `BenchModel`, a name in `BENCH_MODELS`, a local diffusers folder (a pipeline or a UNet with its
            scheduler), a 'module:attr' path naming a model, a BenchModel or a factory of one taking no arguments,
            or a model object (module, field, model declaring its spec).

    Returns:
        The entry (defaults derived from the model's spec for a user model) and the built model.

    Raises:
        InvalidArgument: The name is unknown, the path names no model, or the model is not available here.
    """
    if isinstance(model, BenchModel):
        entry = model
    elif isinstance(model, str) and model in BENCH_MODELS:
        entry = BENCH_MODELS[model]
    elif is_diffusers_folder(model):
        entry = _diffusers_folder_entry(str(model))
    elif isinstance(model, str) and ":" in model:
        obj = _model_or_factory(import_object(model, "model"), model)
        entry = obj if isinstance(obj, BenchModel) else _entry_for_object(obj, name=model)
    elif isinstance(model, str):
        raise unknown_name("model", model, list(BENCH_MODELS) + ["<module>:<attr>"])
    else:
        entry = _entry_for_object(model, name=type(model).__name__)
    why = entry.available()
    if why:
        raise InvalidArgument(f"model={entry.name!r} is not available here: {why}")
    return entry, entry.build()


def _diffusers_folder_entry(path: str) -> BenchModel:
    """A diffusers folder's entry: an image model (its latent shape from the network config) built once."""
    field = load_diffusers_folder(path, "model")
    big = len(field.sample_shape) == 3
    return BenchModel(path, lambda: field, f"diffusers folder {path}", kind="image" if big else "vector",
                      batch_size=8 if big else 256, chunk_size=4 if big else 256,
                      nfe=(5, 10, 20, 50) if big else (4, 8, 16, 32),
                      reference=ReferenceSettings(method="dopri5", rtol=1e-6, atol=1e-6), trajectory=not big)


def _is_model(obj: Any) -> bool:
    return isinstance(obj, (BenchModel, torch.nn.Module, Field)) or model_spec_of(obj) is not None


def _what(obj: Any) -> str:
    if not hasattr(obj, "__qualname__"):
        return f"a {type(obj).__name__} ({obj!r:.40})"
    kind = "a built-in function" if inspect.isbuiltin(obj) else f"a {type(obj).__name__}"
    return f"{kind} ({getattr(obj, '__module__', None)}.{obj.__qualname__})"


def _model_or_factory(obj: Any, spec: str) -> Any:
    """What a 'module:attr' names: a model (a module, a field, a model declaring its spec), a BenchModel, or a
    factory of one taking no arguments; anything else is refused in one line saying what it is."""
    if _is_model(obj):
        return obj
    need = "name a model (torch.nn.Module, diffsolve field, or a model with diffsolve_spec), a BenchModel, or " \
           "a factory of one taking no arguments"
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)):
        raise InvalidArgument(f"model={spec!r} is {_what(obj)}, not a model: {need}")
    try:
        inspect.signature(obj).bind()
    except TypeError:
        raise InvalidArgument(f"model={spec!r} is {_what(obj)} that needs arguments, not a model factory: "
                              f"{need}") from None
    built = obj()
    if not _is_model(built):
        raise InvalidArgument(f"model={spec!r}: the factory returned {_what(built)}, not a model: {need}")
    return built


def _entry_for_object(obj: Any, name: str) -> BenchModel:
    spec = model_spec_of(obj)
    shape = spec.sample_shape if spec is not None else None
    kind = "image" if shape is not None and len(shape) == 3 else ("points" if shape == (2,) else "vector")
    big = kind == "image"
    return BenchModel(name, lambda: obj, f"user model {name}", kind=kind, batch_size=16 if big else 256,
                      chunk_size=8 if big else 256, nfe=(5, 10, 20, 50) if big else (4, 8, 16, 32),
                      reference=ReferenceSettings(method="dopri5", rtol=1e-6, atol=1e-6) if big
                      else ReferenceSettings(),
                      trajectory=not big)



def data_range_of(model: Any) -> tuple[float, float] | None:
    """The data range the model declares (`ModelSpec.data_range`), or None when it declares none.

    Args:
        model: Any model, field or problem.

    Returns:
        The (low, high) range as floats, or None.
    """
    spec = model_spec_of(model)
    rng = spec.data_range if spec is not None else None
    return (float(rng[0]), float(rng[1])) if rng is not None else None
