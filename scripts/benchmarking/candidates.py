"""The models the benchmark sections "generation", "training" and "layer" compare, as fairseq
command-line options (Mega's, Megalodon's and the fairseq transformers', with the task
options they share) or block settings, and the search for the FFN width that matches
Mega's parameters.

Baselines are sized by the parameters a training step really uses (they get a gradient):
fairseq 0.12.2's transformer encoder layers register a second copy of their weights for an
inference fast path, which is not counted. The transformer's FFN width is searched so that
its used count comes closest to Mega's (same width, layers and embedding sharing).
"""

import functools
import math
from pathlib import Path
from typing import List, Optional, Tuple

VOCABULARY = 1000  # words of the generated dictionaries and corpora

MEGA_LM = ("--arch", "mega_lm_tiny")
MEGALODON_LM = ("--arch", "megalodon_lm_tiny")  # the sizes of mega_lm_tiny, 16 timestep-norm groups
MEGALODON_LM_FFN = ("--decoder-ffn-embed-dim",)
TIMESTEP_NORM_GROUPS = 32  # megalodon_lm's (the 200M shape's), where the width allows
TRANSFORMER_LM = ("--arch", "transformer_lm", "--decoder-layers", "2", "--decoder-embed-dim", "64",
                  "--decoder-input-dim", "64", "--decoder-output-dim", "64",
                  "--decoder-attention-heads", "4", "--share-decoder-input-output-embed")
TRANSFORMER_LM_FFN = ("--decoder-ffn-embed-dim",)
TRANSFORMER_MT_FFN = ("--encoder-ffn-embed-dim", "--decoder-ffn-embed-dim")


def mega_sizes(sides: Tuple[str, ...], width: int) -> Tuple[str, ...]:
    """The sizes of a ``width``-wide Mega on each of ``sides`` ("encoder", "decoder"): embed
    C, hidden (values) 2C, FFN 2C, z C/4, EMA dims 16 (the ratios of the paper's models)."""
    sizes = {"embed-dim": width, "hidden-dim": 2 * width, "ffn-embed-dim": 2 * width, "z-dim": width // 4,
             "n-dim": 16}
    return tuple(a for side in sides for name, value in sizes.items() for a in (f"--{side}-{name}", str(value)))


def transformer_heads(width: int) -> int:
    """Attention heads of a ``width``-wide transformer baseline: 64 dims each, at least 2."""
    return max(2, width // 64)


def mega_lm_options(width: int, layers: int) -> Tuple[str, ...]:
    """``mega_lm`` of :func:`mega_sizes` with ``layers`` blocks and tied embeddings."""
    return ("--arch", "mega_lm", "--share-decoder-input-output-embed", "--decoder-layers", str(layers),
            *mega_sizes(("decoder",), width))


def timestep_norm_groups(width: int) -> int:
    """Timestep-norm groups of a ``width``-wide Megalodon: the greatest common divisor of
    the width and TIMESTEP_NORM_GROUPS (the groups must divide the width)."""
    return math.gcd(width, TIMESTEP_NORM_GROUPS)


def megalodon_settings(width: int) -> dict:
    """What makes a Mega block a Megalodon block (``MegaLayerSettings`` keywords, the
    defaults of ``megalodon_lm``): complex EMA, timestep norm, normalized attention, no
    update gate, the two-hop residual, rotary positions."""
    return dict(ema_type="cema", norm_type="timestepnorm", timestep_norm_groups=timestep_norm_groups(width),
                normalized_attention=True, update_gate=False, two_hop_residual=True, rel_pos_bias="rotary")


def mega_twin(name: str) -> Optional[str]:
    """The Mega variant a Megalodon one mirrors (same widths and chunking): "megalodon
    (chunk 128)" -> "mega (chunk 128)"; None for a name that is not Megalodon's."""
    return "mega" + name[len("megalodon"):] if name.startswith("megalodon") else None


def megalodon_lm_options(width: int, layers: int) -> Tuple[str, ...]:
    """``megalodon_lm`` (its defaults: :func:`megalodon_settings`) of :func:`mega_sizes` with
    ``layers`` blocks and tied embeddings: :func:`mega_lm_options` with Megalodon's blocks.
    Its chunk size is megalodon_lm's 2048 unless the caller sets ``--decoder-chunk-size``."""
    return ("--arch", "megalodon_lm", "--share-decoder-input-output-embed", "--decoder-layers", str(layers),
            *mega_sizes(("decoder",), width), "--timestep-norm-groups", str(timestep_norm_groups(width)))


def transformer_lm_options(width: int, layers: int) -> Tuple[str, ...]:
    """``transformer_lm`` of the same width and depth, tied embeddings; the FFN width (the
    options ``TRANSFORMER_LM_FFN``) is left to :func:`with_matched_ffn_width`."""
    return ("--arch", "transformer_lm", "--decoder-layers", str(layers), "--decoder-embed-dim", str(width),
            "--decoder-input-dim", str(width), "--decoder-output-dim", str(width),
            "--decoder-attention-heads", str(transformer_heads(width)), "--share-decoder-input-output-embed")


def mega_mt_options(width: int) -> Tuple[str, ...]:
    """``mega`` translation with mega_tiny's 2+2 blocks, :func:`mega_sizes`, shared embeddings."""
    return ("--arch", "mega", "--share-all-embeddings", "--encoder-layers", "2", "--decoder-layers", "2",
            *mega_sizes(("encoder", "decoder"), width))


def transformer_mt_options(width: int) -> Tuple[str, ...]:
    """``transformer`` with 2+2 layers of the same width, shared embeddings (FFN width:
    ``TRANSFORMER_MT_FFN``, matched)."""
    heads = str(transformer_heads(width))
    return ("--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "2", "--decoder-layers", "2",
            "--encoder-embed-dim", str(width), "--decoder-embed-dim", str(width),
            "--encoder-attention-heads", heads, "--decoder-attention-heads", heads)


def vocabulary_words() -> List[str]:
    """The VOCABULARY words "w0", "w1", ... of the generated dictionaries and corpora."""
    return [f"w{i}" for i in range(VOCABULARY)]


def write_dictionary(directory: Path, names: Tuple[str, ...] = ("dict.txt",)) -> Path:
    """fairseq dictionaries of the VOCABULARY words, one file per name in ``names``, in
    ``directory`` (all that the tasks' setup reads); returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{word} {VOCABULARY - i}\n" for i, word in enumerate(vocabulary_words()))
    for name in names:
        (directory / name).write_text(lines)
    return directory


def build_counted(common: Tuple[str, ...], model_args: Tuple[str, ...], seed: int):
    """(model, task, used parameters) as fairseq-train builds them, initialised from ``seed``."""
    import torch
    from count_parameters import build_model, count

    torch.manual_seed(seed)
    model, task = build_model(list(common), list(model_args))
    return model, task, count(model, task)[1]


def lm_task(data_dir: Path, tokens_per_sample: int) -> Tuple[str, ...]:
    """fairseq options of language modelling on ``data_dir``."""
    return (str(data_dir), "--task", "language_modeling", "--tokens-per-sample", str(tokens_per_sample))


def mt_task(data_dir: Path) -> Tuple[str, ...]:
    """fairseq options of English -> German translation on ``data_dir``."""
    return (str(data_dir), "--task", "translation", "--source-lang", "en", "--target-lang", "de")


@functools.lru_cache(maxsize=None)
def used_parameters(common: Tuple[str, ...], model_args: Tuple[str, ...]) -> int:
    """Used parameters of the model the options describe. Built through fairseq's legacy
    argparse path (``task.build_model(args)``), which gives the same model as
    count_parameters.build_model's omegaconf path without its ~1.5 s config composition."""
    from count_parameters import count, parse
    from fairseq import tasks

    args = parse(list(common), list(model_args))
    task = tasks.setup_task(args)
    return count(task.build_model(args), task)[1]


def without_options(model_args: Tuple[str, ...], options: Tuple[str, ...]) -> Tuple[str, ...]:
    """``model_args`` without the options named in ``options`` (each with its value)."""
    kept, arguments = [], iter(model_args)
    for argument in arguments:
        if argument in options:
            next(arguments, None)
        else:
            kept.append(argument)
    return tuple(kept)


def with_ffn_width(model_args: Tuple[str, ...], ffn_options: Tuple[str, ...], width: int) -> Tuple[str, ...]:
    """``model_args`` with every option of ``ffn_options`` set to ``width`` (replacing any
    value ``model_args`` gave it)."""
    return without_options(model_args, ffn_options) + tuple(a for option in ffn_options for a in (option, str(width)))


def with_matched_ffn_width(common: Tuple[str, ...], target_used: int, model_args: Tuple[str, ...],
                           ffn_options: Tuple[str, ...]) -> Tuple[Tuple[str, ...], int]:
    """(options, used parameters) of the ``model_args`` model whose used-parameter count is
    closest to ``target_used`` when ``ffn_options`` (e.g. ``--decoder-ffn-embed-dim``) all
    get the same width (count_parameters.closest_ffn_width, with the faster cached counts)."""
    from count_parameters import closest_ffn_width

    def used_with(width: int) -> int:
        return used_parameters(common, with_ffn_width(model_args, ffn_options, width))

    width, used = closest_ffn_width(used_with, target_used)
    return with_ffn_width(model_args, ffn_options, width), used
