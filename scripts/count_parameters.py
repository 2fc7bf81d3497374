#!/usr/bin/env python
"""Count the parameters of a fairseq model built from a data directory and model options,
and optionally size a fairseq ``transformer`` baseline to the same count.

Two counts are printed: the parameters the model registers and those a training step
really uses (they receive a gradient). They differ for fairseq 0.12.2's transformer
encoder layers, which register a second copy of their weights (``in_proj_weight``,
``fc1_weight``, ...) for an inference fast path; baselines are matched on the used count.

    python scripts/count_parameters.py DATA --task translation -s en -t de \\
        --model --arch mega_tiny --share-all-embeddings
    python scripts/count_parameters.py DATA --task translation -s en -t de \\
        --model --arch mega_tiny --share-all-embeddings \\
        --match --arch transformer --encoder-layers 2 --decoder-layers 2 ...
The ``--match`` run searches the FFN width (``--encoder-ffn-embed-dim`` =
``--decoder-ffn-embed-dim``; only the first for models without a decoder option, e.g.
``roberta``) of the second model that comes closest to the first and prints it as JSON on
the last line.

Sentence-level tasks (``sentence_prediction``, ``lra-text``, ...: the task registers a
classification head) are counted through the task's criterion, as a training step uses
the model there (the head, not the masked-LM head):

    python scripts/count_parameters.py BIN --task sentence_prediction --num-classes 2 \
        --max-positions 256 --model --arch mega_encoder_tiny \
        --match --arch roberta --encoder-layers 2 --encoder-embed-dim 128 ...
"""

import json
import logging
import sys
from pathlib import Path
from typing import Callable, List, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]


def parse(common: List[str], model_args: List[str], parse_known: bool = False):
    from fairseq import options

    parser = options.get_training_parser()
    return options.parse_args_and_arch(
        parser, input_args=[*common, "--user-dir", str(REPO / "mega_fairseq"), *model_args],
        parse_known=parse_known,
    )


def build_model(common: List[str], model_args: List[str]):
    """(model, task) exactly as fairseq-train builds them from the command line; the
    criterion is ``task.counting_criterion``."""
    from fairseq import tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    cfg = convert_namespace_to_omegaconf(parse(common, model_args))
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    task.counting_criterion = task.build_criterion(cfg.criterion)
    return model, task


def _sentence_level(model) -> bool:
    return bool(getattr(model, "classification_heads", None))


def count(model, task) -> Tuple[int, int]:
    """(registered, used): parameters, and those receiving a gradient from one training
    step on a dummy batch of two 5-token sentences."""
    registered = sum(p.numel() for p in model.parameters())
    dictionary = task.source_dictionary or task.target_dictionary
    tokens = torch.full((2, 5), dictionary.nspecial, dtype=torch.long)
    tokens[:, -1] = dictionary.eos()
    model.train()
    model.zero_grad()
    criterion = getattr(task, "counting_criterion", None)
    if criterion is not None and _sentence_level(model):
        # a classification step through the criterion (one label per sentence)
        tokens[:, 0] = dictionary.bos()
        sample = {"id": torch.arange(2), "nsentences": 2, "ntokens": 10,
                  "net_input": {"src_tokens": tokens, "src_lengths": torch.tensor([5, 5])},
                  "target": torch.zeros(2, dtype=torch.long)}
        output = criterion(model, sample)
    elif task.target_dictionary is not None and hasattr(model, "encoder"):
        output = model(tokens, torch.tensor([5, 5]), tokens)
    else:
        output = model(tokens)
    output[0].float().sum().backward()
    used = sum(p.numel() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return registered, used


FFN_WIDTH_OPTIONS = ("--encoder-ffn-embed-dim", "--decoder-ffn-embed-dim")


def ffn_width_option_names(common: List[str], model_args: List[str]) -> List[str]:
    """The FFN width options the model accepts: both for encoder-decoder models, only
    ``--decoder-ffn-embed-dim`` for ``transformer_lm``, only the encoder's for ``roberta``."""
    names = []
    for option in FFN_WIDTH_OPTIONS:
        _, unknown = parse(common, model_args + [option, "1"], parse_known=True)
        if option not in unknown:
            names.append(option)
    if not names:
        raise SystemExit(f"error: the model accepts none of {', '.join(FFN_WIDTH_OPTIONS)}")
    return names


def width_options(common: List[str], model_args: List[str], width: int) -> List[str]:
    """Every FFN width option the model accepts, set to ``width``."""
    return [part for option in ffn_width_option_names(common, model_args) for part in (option, str(width))]


def closest_ffn_width(used_with: Callable[[int], int], target_used: int) -> Tuple[int, int]:
    """(width >= 1, used_with(width)) with the used-parameter count closest to
    ``target_used``. The count is affine in the width (every FFN adds two matrices and a
    bias), so two counts give the line; the widths around its solution are then counted."""
    low, high = 1, 1025
    used_low, used_high = used_with(low), used_with(high)
    per_width = (used_high - used_low) / (high - low)
    estimate = max(1, round(low + (target_used - used_low) / per_width))
    counts = {width: used_with(width) for width in (estimate - 1, estimate, estimate + 1) if width >= 1}
    if per_width * (estimate - low) + used_low != counts[estimate]:
        raise RuntimeError("the used-parameter count is not affine in the FFN width for this model")
    best = min(counts, key=lambda width: (abs(counts[width] - target_used), width))
    return best, counts[best]


def match_ffn_width(common, target_used: int, model_args: List[str]) -> Tuple[int, int]:
    """FFN width (>= 1) whose used-parameter count is closest to ``target_used``, every FFN
    width option the model accepts set to it."""

    names = ffn_width_option_names(common, model_args)

    def used_with(width: int) -> int:
        options = [part for option in names for part in (option, str(width))]
        model, task = build_model(common, model_args + options)
        return count(model, task)[1]

    return closest_ffn_width(used_with, target_used)


def split_argv(argv: List[str]):
    """common options | --model ... | --match ..."""
    if "--model" not in argv:
        raise SystemExit("error: give the model's options after --model (see --help)")
    common, rest = argv[: argv.index("--model")], argv[argv.index("--model") + 1:]
    match = None
    if "--match" in rest:
        rest, match = rest[: rest.index("--match")], rest[rest.index("--match") + 1:]
    return common, rest, match


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    logging.disable(logging.INFO)
    common, model_args, match_args = split_argv(argv)
    model, task = build_model(common, model_args)
    registered, used = count(model, task)
    result = {"model": model_args, "registered": registered, "used": used}
    print(f"model: {' '.join(model_args)}\n  registered {registered:,}  used {used:,}")
    if match_args is not None:
        width, matched = match_ffn_width(common, used, match_args)
        result["match"] = {"args": match_args, "ffn_embed_dim": width, "used": matched}
        print(f"baseline: {' '.join(match_args + width_options(common, match_args, width))}\n"
              f"  used {matched:,} "
              f"({100.0 * (matched - used) / used:+.2f}%)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
