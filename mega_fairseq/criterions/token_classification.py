"""``token_classification`` criterion: cross-entropy over the labelled tokens.

Batch (from the ``token_classification`` task): ``net_input.src_tokens`` B x T,
``target`` B x T with label indices and ``IGNORE_INDEX`` (-100) where a position has no
label.  The model's token head (name: the task's ``--token-head-name``) returns
B x T x num_labels logits.

Logged: ``loss`` (summed cross-entropy / labelled tokens, in base 2 as fairseq does) and
``accuracy`` (100 * correctly tagged tokens / labelled tokens, derived from the summed
``_ncorrect`` and ``_nlabelled``).  ``sample_size`` is the number of labelled tokens.
"""

import math
from dataclasses import dataclass

import torch.nn.functional as F

from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from mega_fairseq.criterions.token_heads import log_percentage, token_head_logits
from mega_fairseq.tasks.token_data import IGNORE_INDEX


@dataclass
class TokenClassificationCriterionConfig(FairseqDataclass):
    """No options: the head name is the task's ``--token-head-name``."""


@register_criterion("token_classification", dataclass=TokenClassificationCriterionConfig)
class TokenClassificationCriterion(FairseqCriterion):
    def __init__(self, task):
        super().__init__(task)
        self.head_name = task.token_head_name

    def forward(self, model, sample, reduce=True):
        """Returns (summed loss, labelled tokens, logging output)."""
        logits, _ = token_head_logits(model, sample, self.head_name)
        target = sample["target"]
        labelled = target.ne(IGNORE_INDEX)
        selected, gold = logits[labelled].float(), target[labelled]  # N x K, N
        loss = F.cross_entropy(selected, gold, reduction="sum")
        ncorrect = selected.argmax(dim=-1).eq(gold).sum()
        sample_size = int(labelled.sum())
        logging_output = {
            "loss": loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
            "ncorrect": ncorrect.data,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss = utils.item(sum(log.get("loss", 0) for log in logging_outputs))
        labelled = utils.item(sum(log.get("sample_size", 0) for log in logging_outputs))
        ncorrect = utils.item(sum(log.get("ncorrect", 0) for log in logging_outputs))
        metrics.log_scalar("loss", loss / max(labelled, 1) / math.log(2), labelled, round=3)
        metrics.log_scalar_sum("_ncorrect", ncorrect)
        metrics.log_scalar_sum("_nlabelled", labelled)
        log_percentage("accuracy", "_ncorrect", "_nlabelled")

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
