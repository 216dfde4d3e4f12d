"""Timing helpers shared by the kernel table, the pytest-benchmark files, the bench runner and the GPU check."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only; elsewhere every call has finished when it returns).

    Args:
        device: The device whose queued work to wait for; a non-CUDA device returns at once.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call: CUDA events on a GPU (device time), the wall clock elsewhere.

    Args:
        fn: The call to time, taking no arguments; its result is discarded.
        device: The device `fn` runs on; it picks CUDA events or `time.perf_counter`.

    Returns:
        The seconds the one call took.
    """
    if device.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_fn(fn: Callable[[], object], device: torch.device, *, min_time: float = 0.2, max_reps: int = 200,
            warmup: int = 2) -> float:
    """Median seconds per call (CUDA: events around each call; CPU: perf_counter).

    Args:
        fn: The call to time, taking no arguments; its result is discarded.
        device: The device `fn` runs on (synchronized after the warm-up calls).
        min_time: Seconds to keep timing for (at least 3 calls are timed whatever it is).
        max_reps: Most timed calls once 3 are done, even if `min_time` has not passed.
        warmup: Untimed calls made first.

    Returns:
        The median of the timed calls, in seconds.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        times.append(time_once(fn, device))
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int = 256 * 2 ** 20,
                   timer: Callable[[Callable[[], object]], float] | None = None) -> float:
    """Bytes per second of a device-to-device copy dst.copy_(src) of `nbytes` (one read and one write of each
    byte), timed by `timer(fn) -> seconds per call` (default: `time_fn` on `device`).

    Args:
        device: The device holding the source and destination buffers.
        nbytes: Size of the copied buffer in bytes (default 256 MiB).
        timer: Maps a no-argument call to its seconds per call; None times with `time_fn` on `device`.

    Returns:
        Bytes moved (read plus written) per second.
    """
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    sec = timer(lambda: dst.copy_(src)) if timer is not None else time_fn(lambda: dst.copy_(src), device)
    del src, dst
    return 2 * nbytes / sec
