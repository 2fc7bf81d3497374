"""Section "hf": our Mega block against the Hugging Face port (``transformers==4.40.2``,
the last release with Mega) on identical weights.

The port's block is built through a full ``MegaModel`` (a bare block leaves parameters
uninitialised) and its weights are copied into ours by :mod:`benchmarking.hf_harness`
(through the mapping of :mod:`mega_fairseq.conversion.hf_mega`). Outputs are compared
in eval mode first (the run stops if they differ by more than 1e-5); then
forward+backward is timed in training mode with dropout 0.1 on both sides.
Configurations are ones the port computes correctly: softmax attention, simple relative
bias, layer norm, full-sequence forward.
"""

from typing import Dict, List, Tuple

import torch
from tqdm import tqdm

from benchmarking.measure import compare, ratio
from benchmarking.results import SectionOptions, SectionResult, at_least

FULL_LENGTHS = [1024, 4096]
FULL_TOKENS = 8192
QUICK_LENGTHS = [32, 64]
QUICK_TOKENS = 128
TOLERANCE = 1e-5
SPEED_BAR = 1.5


def _settings(quick: bool, causal: bool, chunk_size: int, length: int, dropout: float):
    from mega_fairseq.modules.mega_layer import MegaLayerSettings

    embed = 32 if quick else 256
    return MegaLayerSettings(
        embed_dim=embed, zdim=embed // 4, hdim=2 * embed, ndim=4 if quick else 16, ffn_hidden_dim=2 * embed,
        causal=causal, dropout=dropout, attention_dropout=dropout, hidden_dropout=dropout,
        activation_dropout=dropout, chunk_size=chunk_size,
        # the port reads a chunked simple bias correctly only with max_positions == chunk size
        max_positions=chunk_size if chunk_size > 0 else length, norm_type="layernorm", prenorm=True,
    )


def _configurations(quick: bool) -> List[Tuple[str, bool, int]]:
    chunk = 16 if quick else 128
    return [("encoder, full attention", False, -1), (f"encoder, chunk {chunk}", False, chunk),
            ("decoder (causal), full attention", True, -1)]


def _pair(quick: bool, causal: bool, chunk_size: int, length: int, dropout: float):
    from benchmarking.hf_harness import build_hf_block, mega_layer_from_hf_block

    settings = _settings(quick, causal, chunk_size, length, dropout)
    hf_block = build_hf_block(settings, seed=0)
    return hf_block, mega_layer_from_hf_block(hf_block, settings)


def _largest_difference(quick: bool, causal: bool, chunk_size: int, x: torch.Tensor) -> float:
    """Max |ours - port| / max |port| over the eval-mode outputs (dropout 0)."""
    from benchmarking.hf_harness import run_hf_block

    hf_block, ours = _pair(quick, causal, chunk_size, x.size(0), 0.0)
    hf_block.eval()
    ours.eval()
    with torch.no_grad():
        expected, actual = run_hf_block(hf_block, x), ours(x)[0]
    difference = ((actual - expected).abs().max() / expected.abs().max()).item()
    if not difference <= TOLERANCE:
        raise RuntimeError(f"our layer and the port differ by {difference:.2e} (> {TOLERANCE:g}) "
                           f"for causal={causal}, chunk_size={chunk_size}, length={x.size(0)}")
    return difference


def _steps(quick: bool, causal: bool, chunk_size: int, x: torch.Tensor) -> Dict[str, object]:
    from benchmarking.hf_harness import run_hf_block

    hf_block, ours = _pair(quick, causal, chunk_size, x.size(0), 0.1)
    hf_block.train()
    ours.train()

    def hf_step() -> None:
        hf_block.zero_grad(set_to_none=True)
        run_hf_block(hf_block, x).pow(2).mean().backward()

    def our_step() -> None:
        ours.zero_grad(set_to_none=True)
        ours(x)[0].pow(2).mean().backward()

    return {"ours": our_step, "hugging face port": hf_step}


def run(options: SectionOptions) -> SectionResult:
    torch.manual_seed(0)
    lengths = QUICK_LENGTHS if options.quick else FULL_LENGTHS
    tokens = QUICK_TOKENS if options.quick else FULL_TOKENS
    embed = 32 if options.quick else 256
    result = SectionResult("hf")
    result.notes.append(
        f"one block, Mega embed {embed}, z {embed // 4}, hidden/FFN {2 * embed}, softmax, simple bias, "
        f"pre-norm layernorm; {tokens} tokens per batch; outputs compared in eval mode (tolerance "
        f"{TOLERANCE:g} relative to the largest output), forward+backward timed in training mode, dropout 0.1"
    )
    jobs = [(config, length) for config in _configurations(options.quick) for length in lengths]
    for (label, causal, chunk), length in tqdm(jobs, desc="Hugging Face port", disable=not options.progress):
        x = torch.randn(length, max(1, tokens // length), embed)
        difference = _largest_difference(options.quick, causal, chunk, x)
        measured = compare(_steps(options.quick, causal, chunk, x), options.repeats)
        ours, port = measured["ours"], measured["hugging face port"]
        row = dict(label=f"{label} @ {length}", configuration=label, length=length, batch=x.size(1),
                   max_relative_difference=difference, ours_median_s=ours.median_s,
                   port_median_s=port.median_s, ours_peak_mib=ours.peak_mib, port_peak_mib=port.peak_mib,
                   speedup=ratio(port.median_s, ours.median_s),
                   memory_ratio=ratio(ours.peak_mib, port.peak_mib))
        result.rows.append(row)
        result.targets.append(at_least(f"{label}: speed-up vs the port at {length}", row["speedup"], SPEED_BAR))
    return result
