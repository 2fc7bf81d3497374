#!/usr/bin/env python
"""Long-context evaluation of a fairseq language model that carries state across blocks.

Reads a split of a ``fairseq-preprocess --only-source`` directory as one token stream
(eos between lines, as ``fairseq-eval-lm --sample-break-mode none`` sees it) and scores
the same tokens in two modes:

* ``independent``: consecutive blocks of ``--block-size`` tokens, each from an empty
  state (``fairseq-eval-lm`` without ``--context-window``; same loss with
  ``--block-size`` = its ``--tokens-per-sample``);
* ``stateful``: one incremental state (Mega: EMA state + current attention chunk)
  carried across all blocks, so every token has the whole stream before it as context.

Example:

    python scripts/eval_lm_stateful.py data-bin/shakespeare --path checkpoints/checkpoint_best.pt \\
        --block-size 128 --cpu
"""

import argparse
import logging
import os
import sys
from argparse import Namespace

import torch

logger = logging.getLogger("eval_lm_stateful")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="binarised data directory (fairseq-preprocess --only-source)")
    parser.add_argument("--path", required=True, help="model checkpoint")
    parser.add_argument("--user-dir", default=None,
                        help="fairseq plugin directory (default: the installed mega_fairseq package)")
    parser.add_argument("--gen-subset", default="test", help="split to score (default: test)")
    parser.add_argument("--block-size", type=int, default=None,
                        help="tokens scored per forward call (default: the model's tokens_per_sample)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="blocks per forward call in independent mode (default: 8)")
    parser.add_argument("--max-tokens-total", type=int, default=None,
                        help="score only the first N tokens of the split")
    parser.add_argument("--modes", nargs="+", choices=("independent", "stateful"),
                        default=["independent", "stateful"], help="modes to run (default: both)")
    parser.add_argument("--no-leading-eos", action="store_true",
                        help="do not start the stream with an eos (then the split's first token "
                        "is context only, not scored)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    parser.add_argument("--no-progress-bar", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


def import_plugin(user_dir) -> None:
    """Register the Mega models with fairseq (``--user-dir`` or the installed package)."""
    if user_dir is None:
        import mega_fairseq  # noqa: F401  (registers models and architectures)
        return
    from fairseq import utils

    utils.import_user_module(Namespace(user_dir=os.path.abspath(user_dir)))


def load_model(path: str, data: str, use_cuda: bool):
    """Load the checkpoint (with its task, pointed at ``data``) -> (model in eval mode,
    task, block size the model was trained with)."""
    from fairseq import checkpoint_utils
    from fairseq.utils import safe_getattr

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    model = models[0].eval()
    if use_cuda:
        model.cuda()
    trained_block = safe_getattr(cfg.model, "tokens_per_sample", None) or safe_getattr(
        cfg.task, "tokens_per_sample", None)
    return model, task, trained_block


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO, stream=sys.stdout)
    from mega_fairseq.evaluation.stateful_lm_scoring import load_token_stream, score, truncate_stream

    import_plugin(args.user_dir)
    use_cuda = torch.cuda.is_available() and not args.cpu
    model, task, trained_block = load_model(args.path, args.data, use_cuda)
    block_size = args.block_size or trained_block
    if not block_size:
        raise SystemExit("the checkpoint does not record tokens_per_sample: pass --block-size")
    dictionary = task.source_dictionary
    stream = load_token_stream(args.data, args.gen_subset, dictionary,
                               getattr(task.cfg, "dataset_impl", None),
                               leading_eos=not args.no_leading_eos, progress=not args.no_progress_bar)
    stream = truncate_stream(stream, args.max_tokens_total)
    logger.info(f"{args.gen_subset}: {stream.numel() - 1} tokens to score, block size {block_size}, "
                f"{'cuda' if use_cuda else 'cpu'}")

    results = []
    for mode in args.modes:
        try:
            results.append(score(model, stream, block_size, mode, batch_size=args.batch_size,
                                 progress=not args.no_progress_bar))
        except ValueError as error:
            raise SystemExit(f"error ({mode} mode): {error}")
    for result in results:
        print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
