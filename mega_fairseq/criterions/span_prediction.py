"""``span_prediction`` criterion: start/end cross-entropy for extractive QA.

Batch (from the ``span_prediction`` task): ``net_input.src_tokens`` B x T, ``target`` B x 2
(gold start and end positions in the input), ``context_mask`` B x T (True at the positions
an answer may occupy; without it, every non-padding position).  The model's token head
(the task's ``--token-head-name``, 2 labels) returns B x T x 2 logits: ``[..., 0]`` start,
``[..., 1]`` end.  Both softmaxes run over the candidate positions only.

loss = (CE(start) + CE(end)) / 2 per example, summed; ``sample_size`` = examples.
Logged: ``loss`` (base 2, per example), and in percent of examples:

- ``exact_match``: argmax start == gold start and argmax end == gold end (each taken alone);
- ``span_exact_match``: the best valid span, the (i, j) with i <= j, both candidates, that
  maximises start_logit[i] + end_logit[j], equals the gold span;
- ``start_accuracy`` / ``end_accuracy``: argmax start / argmax end alone.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from mega_fairseq.criterions.token_heads import log_percentage, token_head_logits

COUNTS = {"n_exact": "exact_match", "n_span_exact": "span_exact_match",
          "n_start": "start_accuracy", "n_end": "end_accuracy"}


@dataclass
class SpanPredictionCriterionConfig(FairseqDataclass):
    """No options: the head name is the task's ``--token-head-name``."""


def best_valid_span(start_logits: torch.Tensor, end_logits: torch.Tensor):
    """start/end logits B x T (non-candidates at -inf) -> (start B, end B) of the span
    i <= j maximising start_logits[i] + end_logits[j], in O(T) via a running maximum."""
    best_start, best_start_at = torch.cummax(start_logits, dim=-1)  # best i <= j, for each j
    end = (best_start + end_logits).argmax(dim=-1)
    return best_start_at.gather(1, end[:, None]).squeeze(1), end


@register_criterion("span_prediction", dataclass=SpanPredictionCriterionConfig)
class SpanPredictionCriterion(FairseqCriterion):
    def __init__(self, task):
        super().__init__(task)
        self.head_name = task.token_head_name

    def forward(self, model, sample, reduce=True):
        """Returns (summed loss, examples, logging output)."""
        logits, _ = token_head_logits(model, sample, self.head_name)
        if logits.size(-1) != 2:
            raise ValueError(f"span prediction needs a token head with 2 labels, got {logits.size(-1)}")
        candidates = sample.get("context_mask")
        if candidates is None:
            candidates = sample["net_input"]["src_tokens"].ne(self.padding_idx)
        gold = sample["target"]  # B x 2
        if not candidates.gather(1, gold).all():
            raise ValueError("a gold span position is not a candidate position (padding or outside the context)")
        logits = logits.float().masked_fill(~candidates.unsqueeze(-1), float("-inf"))
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        loss = (F.cross_entropy(start_logits, gold[:, 0], reduction="sum")
                + F.cross_entropy(end_logits, gold[:, 1], reduction="sum")) / 2

        start_ok = start_logits.argmax(dim=-1).eq(gold[:, 0])
        end_ok = end_logits.argmax(dim=-1).eq(gold[:, 1])
        span_start, span_end = best_valid_span(start_logits, end_logits)
        span_ok = span_start.eq(gold[:, 0]) & span_end.eq(gold[:, 1])
        sample_size = gold.size(0)
        logging_output = {
            "loss": loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample_size,
            "sample_size": sample_size,
            "n_exact": (start_ok & end_ok).sum().data,
            "n_span_exact": span_ok.sum().data,
            "n_start": start_ok.sum().data,
            "n_end": end_ok.sum().data,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss = utils.item(sum(log.get("loss", 0) for log in logging_outputs))
        examples = utils.item(sum(log.get("sample_size", 0) for log in logging_outputs))
        metrics.log_scalar("loss", loss / max(examples, 1) / math.log(2), examples, round=3)
        metrics.log_scalar_sum("_nexamples", examples)
        for count, name in COUNTS.items():
            metrics.log_scalar_sum(f"_{count}", utils.item(sum(log.get(count, 0) for log in logging_outputs)))
            log_percentage(name, f"_{count}", "_nexamples")

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
