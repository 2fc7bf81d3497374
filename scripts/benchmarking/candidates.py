"""The models the benchmark sections "generation" and "training" compare, as fairseq
command-line options: Mega's and the fairseq transformers', with the task options they
share, and the search for the transformer's FFN width that matches Mega's parameters.

Baselines are sized by the parameters a training step really uses (they get a gradient):
fairseq 0.12.2's transformer encoder layers register a second copy of their weights for an
inference fast path, which is not counted. The transformer's FFN width is searched so that
its used count comes closest to Mega's (same width, layers and embedding sharing).
"""

import functools
from pathlib import Path
from typing import List, Tuple

VOCABULARY = 1000  # words of the generated dictionaries and corpora

MEGA_LM = ("--arch", "mega_lm_tiny")
TRANSFORMER_LM = ("--arch", "transformer_lm", "--decoder-layers", "2", "--decoder-embed-dim", "64",
                  "--decoder-input-dim", "64", "--decoder-output-dim", "64",
                  "--decoder-attention-heads", "4", "--share-decoder-input-output-embed")
TRANSFORMER_LM_FFN = ("--decoder-ffn-embed-dim",)
# mega_tiny's depth (2+2 blocks) and shapes, widened to 128 (examples/translation/run_gettext_en_de.sh)
MEGA_MT = ("--arch", "mega_tiny", "--share-all-embeddings",
           "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
           "--encoder-hidden-dim", "256", "--decoder-hidden-dim", "256",
           "--encoder-ffn-embed-dim", "256", "--decoder-ffn-embed-dim", "256",
           "--encoder-z-dim", "64", "--decoder-z-dim", "64")
TRANSFORMER_MT = ("--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "2",
                  "--decoder-layers", "2", "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
                  "--encoder-attention-heads", "4", "--decoder-attention-heads", "4")
TRANSFORMER_MT_FFN = ("--encoder-ffn-embed-dim", "--decoder-ffn-embed-dim")


def vocabulary_words() -> List[str]:
    """The VOCABULARY words "w0", "w1", ... of the generated dictionaries and corpora."""
    return [f"w{i}" for i in range(VOCABULARY)]


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


def with_ffn_width(model_args: Tuple[str, ...], ffn_options: Tuple[str, ...], width: int) -> Tuple[str, ...]:
    """``model_args`` with every option of ``ffn_options`` set to ``width``."""
    return model_args + tuple(a for option in ffn_options for a in (option, str(width)))


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
