"""``fairseq-eval-lm`` fails instead of reporting a perplexity of nothing.

fairseq 0.12.2's ``eval_lm_dataloader`` always skips samples longer than the model's
max positions (``ignore_invalid_inputs=True``, only a warning is logged), and when every
sample is skipped it prints ``Evaluated 0 tokens ... Perplexity: 1.00`` and exits with
status 0. A ``--context-window`` not smaller than ``--tokens-per-sample`` ends in
``negative dimensions`` or ``ZeroDivisionError``.

While ``fairseq_cli.eval_lm.main`` runs, :func:`apply`'s wrappers

* refuse ``--context-window`` >= ``--tokens-per-sample`` before anything is loaded,
  naming both options (every model);
* count the samples the task's size filter drops; for a model of the ``mega_fairseq``
  plugin any dropped sample is an error giving the count, raised before scoring starts
  (other models keep fairseq's warning);
* raise an error when no token was scored (every model).

Errors are :class:`EvalLmError`, a ``ValueError`` with ``user_facing = True`` (one line
on stderr, see :mod:`mega_fairseq_compat.user_errors`). Calls of ``eval_lm()`` from
Python outside the console script are unchanged.
"""

import functools
import sys
from argparse import Namespace
from typing import Optional

PLUGIN_PACKAGE = "mega_fairseq"
_MARK = "_mega_fairseq_eval_lm_checks"


class EvalLmError(ValueError):
    """fairseq-eval-lm cannot give a meaningful result for these options and data."""

    user_facing = True


class _Run:
    """What one ``fairseq-eval-lm`` run filtered and scored."""

    def __init__(self, split: str):
        self.split = split
        self.samples = 0  # samples offered to the size filter
        self.skipped = 0  # samples it dropped
        self.max_positions = None
        self.tokens = 0  # tokens in the batches handed to the scorer


_active: Optional[_Run] = None


def is_plugin_model(model) -> bool:
    """Whether ``model``'s class comes from the ``mega_fairseq`` package."""
    return type(model).__module__.split(".")[0] == PLUGIN_PACKAGE


def check_context_window(cfg) -> None:
    """Refuse a context window that leaves no token of a sample to score."""
    window = cfg.eval_lm.context_window
    tokens = getattr(cfg.task, "tokens_per_sample", None)
    if window is not None and tokens is not None and 0 < tokens <= window:
        raise EvalLmError(
            f"--context-window {window} must be smaller than --tokens-per-sample {tokens}: "
            "each sample holds the context window plus the tokens scored, so lower "
            "--context-window or raise --tokens-per-sample"
        )


def _skip_message(run: _Run) -> str:
    return (
        f"{run.skipped:,} of {run.samples:,} samples of split '{run.split}' are longer than "
        f"the model's max positions ({run.max_positions}) and would be skipped; evaluate with "
        "--tokens-per-sample at most that (with --sample-break-mode none), or use a model "
        "without a length limit (trained with --rel-pos-bias rotary or --decoder-chunk-size)"
    )


def check_skipped(run: _Run, models) -> None:
    """For plugin models, any sample dropped by the size filter is an error."""
    if run.skipped and any(is_plugin_model(model) for model in models):
        raise EvalLmError(_skip_message(run))


def check_scored(run: _Run) -> None:
    """Zero scored tokens is an error for every model."""
    if run.tokens > 0:
        return
    reason = (f"all {run.skipped:,} samples were longer than the model's max positions "
              f"({run.max_positions}) and skipped" if run.skipped
              else "the split holds no tokens to score")
    raise EvalLmError(f"evaluated 0 tokens of split '{run.split}': {reason}")


def _counted(batches, run: _Run):
    for sample in batches:
        if "net_input" in sample:
            run.tokens += int(sample["ntokens"])
        yield sample


def _wrap_main(main):
    @functools.wraps(main)
    def checked_main(cfg, **kwargs):
        global _active
        if isinstance(cfg, Namespace):
            from fairseq.dataclass.utils import convert_namespace_to_omegaconf

            cfg = convert_namespace_to_omegaconf(cfg)
        check_context_window(cfg)
        previous, _active = _active, _Run(cfg.dataset.gen_subset)
        try:
            return main(cfg, **kwargs)
        finally:
            _active = previous

    setattr(checked_main, _MARK, True)
    return checked_main


def _wrap_eval_lm(eval_lm):
    @functools.wraps(eval_lm)
    def checked_eval_lm(models, source_dictionary, batch_iterator, *args, **kwargs):
        run = _active
        if run is None:
            return eval_lm(models, source_dictionary, batch_iterator, *args, **kwargs)
        check_skipped(run, models)
        result = eval_lm(models, source_dictionary, _counted(batch_iterator, run), *args, **kwargs)
        check_scored(run)
        return result

    setattr(checked_eval_lm, _MARK, True)
    return checked_eval_lm


def _wrap_filter(filter_indices_by_size):
    @functools.wraps(filter_indices_by_size)
    def counting_filter(self, indices, dataset, max_positions=None, ignore_invalid_inputs=False):
        kept = filter_indices_by_size(self, indices, dataset, max_positions, ignore_invalid_inputs)
        run = _active
        if run is not None:
            run.samples += len(indices)
            run.skipped += len(indices) - len(kept)
            run.max_positions = max_positions
        return kept

    setattr(counting_filter, _MARK, True)
    return counting_filter


def apply() -> None:
    """Wrap ``fairseq_cli.eval_lm.main``/``eval_lm`` and the task size filter (idempotent)."""
    from fairseq.tasks.fairseq_task import FairseqTask

    cli = sys.modules["fairseq_cli.eval_lm"]

    if not getattr(cli.main, _MARK, False):
        cli.main = _wrap_main(cli.main)
    if not getattr(cli.eval_lm, _MARK, False):
        cli.eval_lm = _wrap_eval_lm(cli.eval_lm)
    if not getattr(FairseqTask.filter_indices_by_size, _MARK, False):
        FairseqTask.filter_indices_by_size = _wrap_filter(FairseqTask.filter_indices_by_size)
