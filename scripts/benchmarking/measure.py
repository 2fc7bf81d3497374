"""Timing and peak-memory measurement for side-by-side comparisons on a shared machine.

Every comparison runs its candidates in the same process, alternating them (the order
rotates each repetition), and reports medians, so that background load hits all sides
alike.

Peak memory is counted from torch's own allocation records, not from the process's
resident set (which depends on how glibc happens to cache freed blocks): one call runs
under ``torch.profiler`` with ``profile_memory``, every operator's net allocation (and
every allocation or free outside an operator) is added up in time order, and the
largest running total is the peak. It is exact at operator granularity: memory an
operator allocates and frees again internally is not seen.
"""

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional


def peak_memory_mib(fn: Callable[[], object]) -> float:
    """MiB of tensor memory live at the worst moment of ``fn()``, above what was live before."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        fn()
    live = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2 ** 20


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
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


def compare(candidates: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
            memory: bool = True) -> Dict[str, Measurement]:
    """Time every candidate ``repeats`` times, alternating them (rotated order per
    repetition), after ``warmup`` untimed calls each; then measure each one's peak memory
    once. Returns {name: Measurement}."""
    names = list(candidates)
    results = {name: Measurement() for name in names}
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    for repetition in range(repeats):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].times.append(seconds(candidates[name]))
    if memory:
        for name in names:
            results[name].peak_mib = peak_memory_mib(candidates[name])
    return results


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """numerator / denominator; None when either is unknown or the denominator is not positive
    (e.g. memory growth too small to register)."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator
