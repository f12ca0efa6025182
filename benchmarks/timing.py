"""Timing helpers shared by the benchmark scripts (imported as a sibling module: run the
scripts as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device | str) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU): CUDA launches are asynchronous."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | str = "cuda", repeats: int = 10, warmup: int = 3) -> float:
    """Milliseconds of ``fn()``, the upper median of ``repeats`` calls after ``warmup``: CUDA
    events on a GPU, ``time.perf_counter`` on the CPU."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median_high(times)
