"""Section "lm": forward+backward time of whole language models, ``mega_lm`` against
fairseq's ``transformer_lm`` with the same used parameters, at the sizes where most
training happens, and how close each comes to the machine's own matrix-multiply rate.

Configurations (4 layers, 4096 tokens per batch, training mode): widths 128, 256 and 512
at 512 tokens per sequence (Mega with full attention), and widths 256 and 512 at 2048
tokens (Mega with chunk 128), each with dropout 0.1 everywhere (embeddings, attention
weights, hidden and FFN activations) and with ``--dropout 0.1`` only (fairseq's defaults
leave attention and activation dropout off). Mega: hidden 2C, FFN 2C, z C/4, EMA dims
16, tied embeddings; transformer_lm: C/64 heads (at least 2), tied embeddings, the FFN width
searched so that its used parameters match Mega's (:mod:`benchmarking.candidates`). One
step is the forward pass, the cross-entropy over all tokens, the backward pass and zeroing
the gradients; the two models and a fixed matrix product alternate in one process.

Efficiency = achieved matrix-multiply FLOP/s / the fp32 matrix-multiply rate measured in
the same alternation (MATMUL_SIZE² products). A step's FLOPs are counted analytically
(:func:`matmul_macs_per_token`): the multiply-adds of every projection and of attention
(scores and weighted values, over every key the implementation computes: all L keys of a
causal full attention, C keys of a chunk), times 2 FLOPs, times 3 for forward + backward
(the backward pass computes two products per forward one). Element-wise work, the EMA's FFT
convolution and normalisation are not counted, so efficiency is the share of the rate that
the model's necessary matrix work reaches.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from tqdm import tqdm

from benchmarking import candidates
from benchmarking.candidates import (
    VOCABULARY,
    build_counted,
    lm_task,
    mega_lm_options,
    transformer_lm_options,
    with_matched_ffn_width,
)
from benchmarking.measure import MATMUL_SIZE, compare, matmul_products, ratio
from benchmarking.results import SectionOptions, SectionResult, at_least, informative, reported

SECTION = "lm"
SEED = 1
LAYERS = 4
DROPOUT = 0.1
FORWARD_BACKWARD = 3  # FLOPs of forward + backward / forward FLOPs of a matrix product
SPECIAL_SYMBOLS = 4  # fairseq's dictionary puts <s>, <pad>, </s>, <unk> before the words


@dataclass(frozen=True)
class Configuration:
    """One side-by-side: model width, tokens per sequence, sequences per batch and Mega's
    chunk (0: full attention)."""

    width: int
    length: int
    batch: int
    chunk: int
    # True: dropout 0.1 on embeddings, attention weights, hidden and FFN activations (as the
    # Mega and fairseq wiki103 presets train); False: only --dropout 0.1 (fairseq's defaults)
    dropout_everywhere: bool = True

    @property
    def label(self) -> str:
        attention = f"chunk {self.chunk}" if self.chunk else "full attention"
        return f"width {self.width}, {self.length} tokens ({attention}), {self.dropout}"

    @property
    def dropout(self) -> str:
        return "dropout everywhere" if self.dropout_everywhere else "--dropout only"


def configurations_for(quick: bool) -> List[Configuration]:
    if quick:
        return [Configuration(32, 64, 2, 0), Configuration(64, 64, 2, 0), Configuration(64, 64, 2, 0, False),
                Configuration(64, 128, 1, 32)]
    tokens = 4096
    return [Configuration(width, length, tokens // length, chunk, everywhere)
            for length, chunk, widths in ((512, 0, (128, 256, 512)), (2048, 128, (256, 512)))
            for everywhere in (True, False) for width in widths]


# --------------------------------------------------------------------- models
def dropout_options(config: Configuration, model_options: Tuple[str, ...]) -> Tuple[str, ...]:
    """--dropout, and with ``dropout_everywhere`` each of ``model_options``, set to DROPOUT."""
    options = ("--dropout",) + (model_options if config.dropout_everywhere else ())
    return tuple(a for option in options for a in (option, str(DROPOUT)))


def mega_options(config: Configuration) -> Tuple[str, ...]:
    chunk = ("--decoder-chunk-size", str(config.chunk)) if config.chunk else ()
    dropouts = dropout_options(config, ("--attention-dropout", "--hidden-dropout", "--activation-dropout"))
    return mega_lm_options(config.width, LAYERS) + dropouts + chunk


def transformer_options(config: Configuration) -> Tuple[str, ...]:
    """transformer_lm's options without the FFN width (matched in :func:`measure`)."""
    return transformer_lm_options(config.width, LAYERS) + dropout_options(
        config, ("--attention-dropout", "--activation-dropout"))


def write_dictionary(work_dir: Path) -> Path:
    """A fairseq dictionary of VOCABULARY words in ``work_dir/lm_step`` (all the task reads)."""
    return candidates.write_dictionary(work_dir / "lm_step")


def build(common: Tuple[str, ...], model_args: Tuple[str, ...]):
    """(model in training mode, used parameters) as fairseq-train builds them."""
    model, _, used = build_counted(common, model_args, SEED)
    return model.train(), used


def matmul_macs_per_token(kind: str, config: Configuration, ffn_width: int) -> int:
    """Multiply-adds of the matrix products one token costs in the forward pass of a
    ``kind`` ("mega" or "transformer") LM of ``config`` (biases and element-wise work not
    counted). Mega block: v (C -> 2C), the shared projection (C -> C + C/4 + 2C + C), h
    (2C -> C), attention over K keys (K * (z + values)), FFN (C -> F -> C). Transformer
    layer: q, k, v, out (4 C²), attention over all L keys (2 L C), FFN (2 C F). Both: the tied output
    projection (C * vocabulary)."""
    width = config.width
    if kind == "mega":
        hidden, z, keys = 2 * width, width // 4, config.chunk or config.length
        projections = width * hidden + width * (2 * width + z + hidden) + hidden * width
        per_layer = projections + keys * (z + hidden) + 2 * width * ffn_width
    elif kind == "transformer":  # always full attention
        per_layer = 4 * width * width + 2 * config.length * width + 2 * width * ffn_width
    else:
        raise ValueError(f"unknown model kind {kind!r}: mega or transformer")
    return LAYERS * per_layer + width * (SPECIAL_SYMBOLS + VOCABULARY)


def training_step(model: torch.nn.Module, tokens: torch.Tensor) -> Callable[[], None]:
    """One forward + cross-entropy + backward + zero-grad of ``model`` on ``tokens`` (B x T)."""
    targets = tokens.roll(-1, dims=1)

    def step() -> None:
        logits = model(tokens)[0]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


# ---------------------------------------------------------------- measuring
def measure(config: Configuration, work_dir: Path, repeats: int, matmul_count: int) -> List[dict]:
    common = lm_task(work_dir, config.length)
    mega, mega_used = build(common, mega_options(config))
    baseline_args, _ = with_matched_ffn_width(common, mega_used, transformer_options(config),
                                              ("--decoder-ffn-embed-dim",))
    transformer, transformer_used = build(common, baseline_args)
    ffn = {"mega": 2 * config.width, "transformer": int(baseline_args[baseline_args.index("--decoder-ffn-embed-dim") + 1])}
    generator = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(SPECIAL_SYMBOLS, SPECIAL_SYMBOLS + VOCABULARY, (config.batch, config.length), generator=generator)
    results = compare({"mega": training_step(mega, tokens), "transformer": training_step(transformer, tokens),
                       "matmul": matmul_products(MATMUL_SIZE, matmul_count)}, repeats, memory=False)
    rate = 2 * MATMUL_SIZE ** 3 * matmul_count / results["matmul"].median_s
    tokens_per_batch = config.batch * config.length
    rows = []
    for kind, used in (("mega", mega_used), ("transformer", transformer_used)):
        flops = 2 * FORWARD_BACKWARD * matmul_macs_per_token(kind, config, ffn[kind]) * tokens_per_batch
        seconds = results[kind].median_s
        label = config.label if kind == "mega" else f"width {config.width}, {config.length} tokens, {config.dropout}"
        rows.append(dict(label=f"{kind}: {label}", model=kind, width=config.width, length=config.length,
                         batch=config.batch, chunk=config.chunk, dropout=config.dropout, parameters_used=used,
                         ffn=ffn[kind],
                         median_s=seconds, times=results[kind].times, step_gflop=flops / 1e9,
                         achieved_gflops=flops / seconds / 1e9, matmul_gflops=rate / 1e9,
                         efficiency=flops / seconds / rate))
    rows[0]["speedup_vs_transformer"] = ratio(results["transformer"].median_s, results["mega"].median_s)
    return rows


def targets_for(rows: List[dict], configs: List[Configuration], quick: bool) -> list:
    mega_rows = {(row["width"], row["length"], row["dropout"]): row for row in rows if row["model"] == "mega"}
    widest = max(config.width for config in configs)
    targets = []
    for config in configs:
        row = mega_rows[(config.width, config.length, config.dropout)]
        name = f"LM fwd+bwd {config.label}: transformer time / mega time"
        if quick or config.width == 128:
            targets.append(informative(name, row["speedup_vs_transformer"]))
        else:
            targets.append(at_least(name, row["speedup_vs_transformer"], 1.8 if config.chunk else 1.0))
        if config.width == widest:
            efficiency = f"mega efficiency (matmul FLOP/s / fp32 matmul rate) {config.label}"
            targets.append(reported(efficiency, row["efficiency"]) if quick or config.chunk
                           else at_least(efficiency, row["efficiency"], 0.7))
    return targets


def run(options: SectionOptions) -> SectionResult:
    configs = configurations_for(options.quick)
    work_dir = write_dictionary(options.work_dir)
    matmul_count = 1 if options.quick else 4
    result = SectionResult(SECTION)
    for config in tqdm(configs, desc="lm fwd+bwd", disable=not options.progress):
        result.rows.extend(measure(config, work_dir, options.repeats, matmul_count))
    result.targets = targets_for(result.rows, configs, options.quick)
    result.notes = [
        f"{LAYERS} layers, {configs[0].batch * configs[0].length} tokens per batch, training mode; 'dropout "
        f"everywhere': {DROPOUT} on embeddings, attention weights, hidden and FFN activations (the Mega and "
        f"fairseq wiki103 presets' kind), '--dropout only': {DROPOUT} on embeddings and block outputs (fairseq's "
        "defaults); mega_lm: hidden 2C, FFN 2C, z C/4, EMA dims 16 (candidates.mega_sizes); transformer_lm: C/64 heads (at least 2), "
        "FFN width matched to Mega's used parameters; both tie input and output embeddings; "
        f"{torch.get_num_threads()} torch threads",
        "a step: forward, cross-entropy over every token, backward, zero-grad; the two models and "
        f"{matmul_count} fp32 {MATMUL_SIZE}x{MATMUL_SIZE} matrix products alternate ({options.repeats} "
        "repetitions after a warm-up each, medians)",
        "efficiency: analytic matrix-multiply FLOPs of a step (projections and attention over every key computed, "
        "x2 FLOPs per multiply-add, x3 for forward+backward; element-wise work, FFT and norms not counted) "
        "per second, over the fp32 matmul rate measured in the same alternation (matmul_gflops)",
    ]
    return result
