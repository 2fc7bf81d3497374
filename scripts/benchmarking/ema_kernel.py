"""Section "ema": our EMA (forward+backward) against a straightforward implementation
that materialises every power q^t (D' x N x L) and convolves by FFT, as the original
research code does; bidirectional kernels there become one two-sided kernel of 2L - 1
taps over an input padded by L - 1, so its FFTs have 4L - 2 points (ours: 2L).
Both sides share the parameters of one module; their outputs are checked to agree.
"""

import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from benchmarking.measure import compare, ratio
from benchmarking.results import SectionOptions, SectionResult, at_least

FULL_LENGTHS = [256, 1024, 4096, 8192, 16384]
FULL_TOKENS = 16384
QUICK_LENGTHS = [64, 256]
QUICK_TOKENS = 256


def straightforward_ema(module, x: Tensor) -> Tensor:
    """x: T x B x D -> silu(EMA(x) + omega x), T x B x D, with the kernel built from the
    full D' x N x T tensor of powers and a linear (zero-padded) FFT convolution."""
    length = x.size(0)
    signal = x.permute(1, 2, 0)  # B x D x T
    p = torch.sigmoid(module.delta)  # D' x N x 1
    q = 1.0 - p * torch.sigmoid(module.alpha)
    powers = torch.exp(torch.arange(length, dtype=x.dtype).view(1, 1, -1) * torch.log(q))  # D' x N x T
    kernel = torch.einsum("dnt,dn->dt", p * module.beta * powers, module.gamma * module.scale)
    if module.bidirectional:
        forward, backward = kernel.split(module.embed_dim, dim=0)
        kernel = F.pad(forward, (length - 1, 0)) + F.pad(backward.flip(-1), (0, length - 1))
        signal_padded = F.pad(signal, (length - 1, 0))
        fft_size = 2 * (2 * length - 1)
        first = 2 * length - 2
    else:
        signal_padded, fft_size, first = signal, 2 * length, 0
    spectrum = torch.fft.rfft(signal_padded, n=fft_size) * torch.fft.rfft(kernel, n=fft_size)
    mixed = torch.fft.irfft(spectrum, n=fft_size)[..., first:first + length]
    return F.silu(mixed + module.omega.unsqueeze(-1) * signal).permute(2, 0, 1)


def _step(fn, module, x: Tensor):
    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        fn(module, x).pow(2).mean().backward()
    return step


def _check_agreement(module, x: Tensor) -> float:
    with torch.no_grad():
        ours, straightforward = module(x), straightforward_ema(module, x)
    error = ((ours - straightforward).abs().max() / straightforward.abs().max().clamp(min=1e-30)).item()
    if not error < 1e-4 or not math.isfinite(error):
        raise RuntimeError(f"EMA implementations disagree: relative error {error:.2e}")
    return error


def run(options: SectionOptions) -> SectionResult:
    from mega_fairseq.modules.ema import MultiDimensionalDampedEMA

    torch.manual_seed(0)
    embed, ndim = (32, 4) if options.quick else (256, 16)
    lengths = QUICK_LENGTHS if options.quick else FULL_LENGTHS
    tokens = QUICK_TOKENS if options.quick else FULL_TOKENS
    result = SectionResult("ema")
    result.notes.append(f"EMA alone, forward+backward (input and parameter gradients), float32, "
                        f"{embed} channels x {ndim} EMA dims, {tokens} tokens per batch, no truncation")
    jobs = [(bidirectional, length) for bidirectional in (True, False) for length in lengths]
    for bidirectional, length in tqdm(jobs, desc="EMA kernel", disable=not options.progress):
        module = MultiDimensionalDampedEMA(embed, ndim=ndim, bidirectional=bidirectional)
        x = torch.randn(length, max(1, tokens // length), embed, requires_grad=True)
        error = _check_agreement(module, x)
        measured = compare({"ours": _step(lambda m, v: m(v), module, x),
                            "straightforward": _step(straightforward_ema, module, x)}, options.repeats)
        direction = "bidirectional" if bidirectional else "causal"
        row: Dict[str, object] = dict(label=f"{direction} EMA @ {length}", direction=direction, length=length,
                                      batch=x.size(1), max_relative_difference=error)
        for name, measurement in measured.items():
            row[f"{name}_median_s"] = measurement.median_s
            row[f"{name}_peak_mib"] = measurement.peak_mib
        row["speedup"] = ratio(measured["straightforward"].median_s, measured["ours"].median_s)
        row["memory_ratio"] = ratio(measured["ours"].peak_mib, measured["straightforward"].peak_mib)
        result.rows.append(row)
    longest = max(lengths)
    for row in result.rows:
        if row["length"] == longest:
            result.targets.append(at_least(f"{row['direction']} EMA speed-up vs straightforward at {longest}",
                                           row["speedup"], 1))
    return result
