"""Timing and peak-memory measurement for side-by-side comparisons on a shared machine.

Every comparison runs its candidates alternately (:func:`alternate`: the order rotates
each repetition) and reports medians, so that background load hits all sides alike.

Peak memory is counted from torch's own allocation records, not from the process's
resident set (which depends on how glibc happens to cache freed blocks): one call runs
under ``torch.profiler`` with ``profile_memory``, every operator's net allocation (and
every allocation or free outside an operator) is added up in time order, and the
largest running total is the peak. It is exact at operator granularity: memory an
operator allocates and frees again internally is not seen.

On a CUDA device (``device=`` a CUDA device) the device is synchronised before a timer
starts and before it stops (kernels run asynchronously), and peak memory is the CUDA
caching allocator's own peak (``torch.cuda.max_memory_allocated`` after
``torch.cuda.reset_peak_memory_stats``) above what was allocated before the call; that
one is exact at allocation granularity.
"""

import functools
import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, TypeVar

Result = TypeVar("Result")


def is_cuda(device) -> bool:
    """Whether ``device`` (None, a name such as "cuda:1", or a torch.device) is a CUDA device."""
    if device is None:
        return False
    import torch

    return torch.device(device).type == "cuda"


def synchronize(device=None) -> None:
    """Waits for the kernels queued on a CUDA ``device``; nothing for the CPU (or None)."""
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def cuda_peak_memory_mib(fn: Callable[[], object], device) -> float:
    """MiB of CUDA memory allocated at the worst moment of ``fn()`` on ``device``, above what
    was allocated before (the caching allocator's peak, not what it reserved)."""
    import torch

    gc.collect()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20


def peak_memory_mib(fn: Callable[[], object], device=None) -> float:
    """MiB of tensor memory live at the worst moment of ``fn()``, above what was live before
    (CPU: from the profiler's allocation records; CUDA: see :func:`cuda_peak_memory_mib`)."""
    if is_cuda(device):
        return cuda_peak_memory_mib(fn, device)
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        fn()
    live = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2 ** 20


def seconds(fn: Callable[[], object], device=None) -> float:
    """Wall time of ``fn()``; on a CUDA device including the kernels it queued."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


@dataclass
class Measurement:
    """Times (s) of each repetition, their median, and the peak memory growth (MiB, or
    None when not measured)."""

    times: List[float] = field(default_factory=list)
    peak_mib: Optional[float] = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)


def alternate(candidates: Dict[str, Callable[[], Result]], repeats: int,
              warmup: int = 0) -> Dict[str, List[Result]]:
    """Call every candidate ``warmup`` times (in the dict's order, results dropped), then
    ``repeats`` times alternating them: repetition r calls them in the dict's order rotated
    left by r, so that they take turns going first. Returns {name: the results of its
    ``repeats`` calls, in repetition order}."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    results: Dict[str, List[Result]] = {name: [] for name in names}
    for repetition in range(repeats):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(candidates[name]())
    return results


def compare(candidates: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
            memory: bool = True, device=None) -> Dict[str, Measurement]:
    """Time every candidate ``repeats`` times with :func:`alternate`, after ``warmup``
    calls each whose times are dropped; then measure each one's peak memory once. ``device``: where the
    candidates run (None or CPU: as always; CUDA: synchronised timing, the CUDA
    allocator's peak). Returns {name: Measurement}."""
    times = alternate({name: functools.partial(seconds, fn, device) for name, fn in candidates.items()},
                      repeats, warmup=warmup)
    results = {name: Measurement(times[name]) for name in candidates}
    if memory:
        for name in candidates:
            results[name].peak_mib = peak_memory_mib(candidates[name], device)
    return results


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """numerator / denominator; None when either is unknown or the denominator is not positive
    (e.g. memory growth too small to register)."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


MATMUL_SIZE = 2048  # the square fp32 matrix product whose rate is "the machine's matmul rate"


def matmul_products(size: int, count: int, seed: int = 1) -> Callable[[], None]:
    """A call that computes ``count`` fp32 products of two random size x size matrices."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)

    def products() -> None:
        for _ in range(count):
            torch.mm(a, b, out=out)

    return products


def matmul_gflops(size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """The fp32 matrix-multiply rate (GFLOP/s, 2 size³ FLOPs per product) on the CPU: the
    median of ``repeats`` timed products after one warm-up."""
    products = matmul_products(size, 1)
    products()
    return 2 * size ** 3 / statistics.median(seconds(products) for _ in range(repeats)) / 1e9
