"""Which implementation runs an update: the Triton kernels or their PyTorch references.

`DIFFSOLVE_KERNELS=auto|triton|torch` (or a `backend=` argument, which wins) chooses. `auto` takes Triton when it
imports, the tensors are on a CUDA device and are float16, bfloat16 or float32 (float64 stays on the reference,
which keeps float64 coefficients without a host-to-device copy); `triton` forces it and raises
`KernelUnavailable` saying why when it cannot run; `torch` always takes the reference. Under `TRITON_INTERPRET=1`
a forced Triton also runs on CPU tensors (Triton's interpreter), which is how the tests check the kernels.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Sequence

import torch

from diffsolve.errors import DiffsolveError, check_choice

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "DIFFSOLVE_KERNELS"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
AUTO_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOW_PRECISION = (torch.float16, torch.bfloat16)


class KernelUnavailable(DiffsolveError, RuntimeError):
    """The Triton kernels were forced (DIFFSOLVE_KERNELS=triton or backend='triton') but cannot run here.

    Also a RuntimeError; the message gives the reason and says to use DIFFSOLVE_KERNELS=torch or auto.
    """


def requested_backend(backend: str | None = None) -> str:
    """The argument if given, else $DIFFSOLVE_KERNELS, else 'auto' (read at every call so tests can switch it).

    Args:
        backend: "auto", "triton", "torch", or None.

    Returns:
        The backend name.

    Raises:
        InvalidArgument: an unknown name (argument or environment).
    """
    if backend is None:
        env = os.environ.get(ENV_VAR)
        if env is None:         # the common case, kept cheap: this runs for every update of every step
            return "auto"
        backend = env.strip().lower() or "auto"
        check_choice(ENV_VAR, backend, BACKENDS)
    else:
        check_choice("backend", backend, BACKENDS)
    return backend


def interpreting() -> bool:
    """Whether TRITON_INTERPRET is set (Triton's CPU interpreter, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


_IMPL: dict[bool, ModuleType | Exception] = {}


def triton_impl() -> ModuleType:
    """The module of @triton.jit kernels, loaded on first use, once per interpreter setting.

    Triton decides at decoration time whether a kernel is compiled or interpreted, so the module is loaded lazily
    (and a second copy is loaded if TRITON_INTERPRET changes), never at `import diffsolve`.

    Returns:
        The kernels' module.

    Raises:
        KernelUnavailable: Triton is missing or too old for the kernels.
    """
    key = interpreting()
    got = _IMPL.get(key)
    if got is None:
        try:
            path = Path(__file__).with_name("_triton_impl.py")
            spec = importlib.util.spec_from_file_location(f"diffsolve.kernels._triton_impl_{int(key)}", path)
            got = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(got)
        except Exception as e:  # ImportError, or a triton too old for the kernels
            got = e
        _IMPL[key] = got
    if isinstance(got, Exception):
        raise KernelUnavailable(f"the Triton kernels could not be loaded ({type(got).__name__}: {got}); "
                                f"install the 'triton' extra or set {ENV_VAR}=torch") from got
    return got


def triton_importable() -> bool:
    """Whether the Triton kernels load here (see `triton_impl`)."""
    try:
        triton_impl()
        return True
    except KernelUnavailable:
        return False


def why_not_triton(tensors: Sequence[torch.Tensor]) -> str | None:
    """None when the Triton kernels can take these tensors, else the reason in words.

    Args:
        tensors: the inputs of one combination.

    Returns:
        None, or why the kernels cannot take them (device, dtype, shape).
    """
    if not tensors:
        return "no tensors were given"
    dev = tensors[0].device
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            return f"an input is a {type(t).__name__}, not a tensor"
        if t.device != dev:
            return f"inputs are on different devices ({dev} and {t.device})"
        if t.dtype not in SUPPORTED_DTYPES:
            return f"dtype {t.dtype} is not supported (supported: float16, bfloat16, float32, float64)"
        if t.shape != tensors[0].shape:
            return f"inputs have different shapes ({tuple(tensors[0].shape)} and {tuple(t.shape)}); no broadcasting"
    if dev.type == "cuda":
        return None
    if dev.type == "cpu" and interpreting():
        return None
    return (f"the tensors are on {dev.type}; Triton runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1, "
            "Triton's slow interpreter, for tests)")


def use_triton(tensors: Sequence[torch.Tensor], backend: str | None = None) -> bool:
    """Decide for one call; a forced Triton that cannot run raises KernelUnavailable with the reason.

    "auto" takes Triton only for CUDA tensors in float16, bfloat16 or float32 when the kernels load.

    Args:
        tensors: the inputs of one combination.
        backend: as `requested_backend`.

    Returns:
        Whether to run the Triton kernel.

    Raises:
        KernelUnavailable: Triton forced but unable to run.
    """
    mode = requested_backend(backend)
    if mode == "torch":
        return False
    if mode == "auto":
        # auto never takes the interpreter (it is for checking kernels, far slower than eager), nor float64: the
        # kernel's scalar arguments are fp32, so float64 would need its coefficients copied to the device per call.
        first = tensors[0] if tensors else None
        if not isinstance(first, torch.Tensor) or not first.is_cuda or first.dtype not in AUTO_DTYPES:
            return False
        return why_not_triton(tensors) is None and triton_importable()
    reason = why_not_triton(tensors)
    if reason is not None:
        raise KernelUnavailable(f"{ENV_VAR}=triton (or backend='triton') forces the Triton kernels, but {reason}; "
                                f"use {ENV_VAR}=auto or torch")
    triton_impl()
    return True


def same_layout(tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.memory_format]:
    """All inputs dense in one memory format with the batch outermost: channels-last if every input already is,
    else contiguous. Copies only the inputs that are not (non-contiguous views, mixed formats).

    Args:
        tensors: the inputs.

    Returns:
        (the dense inputs, their memory format).
    """
    fmt = torch.contiguous_format
    if tensors[0].dim() == 4 and all(t.is_contiguous(memory_format=torch.channels_last) for t in tensors) \
            and not all(t.is_contiguous() for t in tensors):
        fmt = torch.channels_last
    return [t.contiguous(memory_format=fmt) for t in tensors], fmt


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums are accumulated in: float32 for float16 and bfloat16, else the dtype itself."""
    return torch.float32 if dtype in LOW_PRECISION else dtype
