"""Section "layer": forward+backward time and peak memory of one Mega block, and of one
Megalodon block, against one fairseq transformer layer of the same width, over sequence
lengths at a constant number of tokens per batch.

Encoder side: Mega with a bidirectional EMA (full attention, and chunked) against
``TransformerEncoderLayer``; decoder side: causal Mega against ``TransformerDecoderLayer``
without encoder attention (causal mask). Every Mega variant has a Megalodon twin of the
same widths and chunking (complex EMA, timestep norm, normalized attention, no update gate,
two-hop residual, rotary positions: :func:`benchmarking.candidates.megalodon_settings`),
reported without a bar. Training mode with dropout 0.1 everywhere, as in training.
Parameters are matched by construction (see :func:`layer_widths`); Megalodon, without the
update gate's projection, has 7-8% fewer.

Runs on the CPU unless ``SectionOptions.device`` names another device (``benchmark.py
--device cuda``): then layers and inputs live there, timers synchronise the device and peak
memory is the CUDA allocator's (see :mod:`benchmarking.measure`).
"""

from argparse import Namespace
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from tqdm import tqdm

from benchmarking.candidates import mega_twin, megalodon_settings
from benchmarking.measure import compare, ratio
from benchmarking.results import SectionOptions, SectionResult, at_least, at_most, reported

FULL_LENGTHS = [256, 512, 1024, 2048, 4096, 8192]
FULL_TOKENS = 8192
QUICK_LENGTHS = [32, 64]
QUICK_TOKENS = 128
CHUNK_SIZES = (128, 256)
TARGET_LENGTH = 4096


def layer_widths(quick: bool) -> Dict[str, int]:
    """Widths of both sides. Mega: embed C, z C/4, values/hidden 2C, FFN 2C, EMA dims 16;
    transformer: embed C, 4 heads, FFN 4C. Their weight counts differ by about 2%."""
    embed = 32 if quick else 256
    return dict(embed=embed, zdim=embed // 4, hdim=2 * embed, ffn_mega=2 * embed,
                ffn_transformer=4 * embed, heads=4, ndim=4 if quick else 16)


def build_mega_layer(widths: Dict[str, int], causal: bool, chunk_size: int, max_length: int,
                     megalodon: bool = False) -> nn.Module:
    """One Mega block (``megalodon``: a Megalodon block of the same widths and chunking)."""
    from mega_fairseq.modules.mega_layer import MegaLayer, MegaLayerSettings

    variant = megalodon_settings(widths["embed"]) if megalodon else dict(rel_pos_bias="simple")
    settings = MegaLayerSettings(
        embed_dim=widths["embed"], zdim=widths["zdim"], hdim=widths["hdim"], ndim=widths["ndim"],
        ffn_hidden_dim=widths["ffn_mega"], causal=causal, dropout=0.1, attention_dropout=0.1,
        hidden_dropout=0.1, activation_dropout=0.1, chunk_size=chunk_size,
        max_positions=max(max_length, chunk_size), **variant,
    )
    return MegaLayer(settings)


def build_transformer_layer(widths: Dict[str, int], causal: bool) -> nn.Module:
    from fairseq.modules import TransformerDecoderLayer, TransformerEncoderLayer

    args = Namespace(
        encoder_embed_dim=widths["embed"], decoder_embed_dim=widths["embed"],
        encoder_ffn_embed_dim=widths["ffn_transformer"], decoder_ffn_embed_dim=widths["ffn_transformer"],
        encoder_attention_heads=widths["heads"], decoder_attention_heads=widths["heads"],
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, activation_fn="relu",
        encoder_normalize_before=True, decoder_normalize_before=True,
    )
    if causal:
        return TransformerDecoderLayer(args, no_encoder_attn=True)
    return TransformerEncoderLayer(args)


def used_parameters(layer: nn.Module, step: Callable[[], object]) -> int:
    """Parameters that receive a gradient from one step (fairseq 0.12.2's encoder layer
    also registers a copy of its weights for its inference fast path)."""
    step()
    used = sum(p.numel() for p in layer.parameters() if p.grad is not None)
    layer.zero_grad(set_to_none=True)
    return used


def training_step(layer: nn.Module, x: torch.Tensor, transformer: bool, causal: bool) -> Callable[[], None]:
    """Forward + backward of ``layer`` on x (T x B x C), after dropping old gradients."""
    length = x.size(0)
    future_mask: Optional[torch.Tensor] = None
    if transformer and causal:
        future_mask = torch.triu(torch.full((length, length), float("-inf"), device=x.device), diagonal=1)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        if not transformer:
            out = layer(x)[0]
        elif causal:
            out = layer(x, self_attn_mask=future_mask)[0]
        else:
            out = layer(x, encoder_padding_mask=None)
        out.float().pow(2).mean().backward()

    return step


def candidates_for(length: int, tokens: int, widths: Dict[str, int], causal: bool,
                   chunk_sizes: Tuple[int, ...], device: torch.device = torch.device("cpu"),
                   megalodon: bool = False) -> Dict[str, Tuple[nn.Module, Callable[[], None]]]:
    """{name: (layer, its training step)} for the transformer, every Mega variant ("mega
    (full)", "mega (chunk C)" for the chunk sizes below ``length``) and, with ``megalodon``
    (as :func:`run` asks), each one's Megalodon twin ("megalodon (full)", ...), on
    ``device`` (the input is drawn on the CPU, so it is the same on every device)."""
    batch = max(1, tokens // length)
    x = torch.randn(length, batch, widths["embed"]).to(device)
    attention = {"full": -1}
    attention.update({f"chunk {chunk}": chunk for chunk in chunk_sizes if chunk < length})
    layers = {"transformer": (build_transformer_layer(widths, causal), True)}
    for family in ("mega", "megalodon") if megalodon else ("mega",):
        for kind, chunk in attention.items():
            layers[f"{family} ({kind})"] = (
                build_mega_layer(widths, causal, chunk, length, megalodon=family == "megalodon"), False)
    out = {}
    for name, (layer, is_transformer) in layers.items():
        layer.to(device).train()
        out[name] = (layer, training_step(layer, x, is_transformer, causal))
    return out


def run(options: SectionOptions) -> SectionResult:
    torch.manual_seed(0)
    device = torch.device(options.device)
    widths = layer_widths(options.quick)
    lengths = QUICK_LENGTHS if options.quick else FULL_LENGTHS
    tokens = QUICK_TOKENS if options.quick else FULL_TOKENS
    chunk_sizes = (16,) if options.quick else CHUNK_SIZES
    result = SectionResult("layer")
    result.notes.append(
        f"one block, forward+backward, training mode, dropout 0.1, {tokens} tokens per batch "
        f"(batch = {tokens} / length); Mega: embed {widths['embed']}, z {widths['zdim']}, "
        f"hidden {widths['hdim']}, FFN {widths['ffn_mega']}, EMA dims {widths['ndim']}; transformer: "
        f"embed {widths['embed']}, {widths['heads']} heads, FFN {widths['ffn_transformer']}, pre-norm"
    )
    result.notes.append(
        "megalodon: the Mega block's widths and chunking with Megalodon's parts (complex EMA, timestep norm "
        f"of {megalodon_settings(widths['embed'])['timestep_norm_groups']} groups, normalized attention, no "
        "update gate, two-hop residual, rotary positions; Mega: simple relative bias); time_vs_mega and "
        "memory_vs_mega: Megalodon's over its Mega twin's; reported without a bar"
    )
    if device.type != "cpu":
        result.notes.append(f"device: {describe_device(device)}; times after torch.cuda.synchronize, "
                            "peak memory from torch.cuda.max_memory_allocated")
    jobs = [(causal, length) for causal in (False, True) for length in lengths]
    for causal, length in tqdm(jobs, desc="layer scaling", disable=not options.progress):
        candidates = candidates_for(length, tokens, widths, causal, chunk_sizes, device, megalodon=True)
        measured = compare({name: step for name, (_, step) in candidates.items()}, options.repeats,
                           device=device)
        baseline = measured["transformer"]
        for name, measurement in measured.items():
            layer, step = candidates[name]
            row = dict(
                label=f"{'decoder' if causal else 'encoder'} {name} @ {length}",
                side="decoder" if causal else "encoder", model=name, length=length,
                batch=max(1, tokens // length), parameters=used_parameters(layer, step),
                median_s=measurement.median_s, times_s=measurement.times, peak_mib=measurement.peak_mib,
                speedup_vs_transformer=ratio(baseline.median_s, measurement.median_s),
                memory_vs_transformer=ratio(measurement.peak_mib, baseline.peak_mib),
            )
            if mega_twin(name) is not None:  # against its Mega twin (same widths, chunking)
                twin = measured[mega_twin(name)]
                row.update(time_vs_mega=ratio(measurement.median_s, twin.median_s),
                           memory_vs_mega=ratio(measurement.peak_mib, twin.peak_mib))
            result.rows.append(row)
    result.targets.extend(_targets(result.rows, options.quick))
    return result


def describe_device(device: torch.device) -> str:
    """e.g. "cuda:0 (NVIDIA H200)"; the plain name for the CPU."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def _row(rows: List[dict], side: str, model: str, length: int) -> Optional[dict]:
    for row in rows:
        if row["side"] == side and row["model"] == model and row["length"] == length:
            return row
    return None


def _targets(rows: List[dict], quick: bool):
    lengths = sorted({row["length"] for row in rows})
    at, longest = (lengths[-2], lengths[-1]) if quick else (TARGET_LENGTH, max(lengths))
    chunk = "mega (chunk 16)" if quick else "mega (chunk 128)"
    targets = []
    for side in ("encoder", "decoder"):
        row, long_row = _row(rows, side, chunk, at), _row(rows, side, chunk, longest)
        if row is None or long_row is None:
            continue
        targets.append(at_least(f"{side}: {chunk} speed-up vs transformer at {at}",
                                row["speedup_vs_transformer"], 3))
        targets.append(at_most(f"{side}: {chunk} peak memory / transformer's at {at}",
                               row["memory_vs_transformer"], 1 / 3))
        targets.append(at_least(f"{side}: {chunk} speed-up widens from {at} to {longest} (ratio of speed-ups)",
                                ratio(long_row["speedup_vs_transformer"], row["speedup_vs_transformer"]), 1))
        megalodon = _row(rows, side, "megalodon" + chunk[len("mega"):], at)
        if megalodon is not None:
            name = megalodon["model"]
            targets.append(reported(f"{side}: {name} speed-up vs transformer at {at}",
                                    megalodon["speedup_vs_transformer"]))
            targets.append(reported(f"{side}: {name} peak memory / transformer's at {at}",
                                    megalodon["memory_vs_transformer"]))
            targets.append(reported(f"{side}: {name} time / {chunk}'s at {at}", megalodon["time_vs_mega"]))
    return targets
