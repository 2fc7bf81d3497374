"""``lra_cross_entropy``: cross-entropy over classes for the Long Range Arena tasks.

Sample format (built by the ``lra-text`` and ``lra-image`` tasks)::

    {
        "id": B,
        "net_input": {"src_tokens": B x T, "src_lengths": B},
        "net_input1": {"src_tokens": B x T1, "src_lengths": B},   # paired inputs only
        "target": B (class ids 0 .. num_classes-1),
        "nsentences": int, "ntokens": int,
    }

Single inputs are classified with ``model(**net_input, features_only=True,
classification_head_name=...)``; a sample with ``net_input1`` (Retrieval/AAN) with
``model.classify_pair(head, net_input, net_input1)``.  The loss is summed over the batch
and the sample size is the number of examples (so gradients are per example, as with
``--sentence-avg``).  Logged: ``loss`` (mean cross-entropy in base 2, fairseq's
convention) and ``accuracy`` (percent).
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass


@dataclass
class LRACrossEntropyConfig(FairseqDataclass):
    classification_head_name: str = field(
        default="lra_classification_head",
        metadata={"help": "name of the classification head (the lra tasks register it)"},
    )


def classify(model, sample, head_name: str) -> torch.Tensor:
    """B x num_classes logits of a (single or paired) sample."""
    if "net_input1" in sample:
        return model.classify_pair(head_name, sample["net_input"], sample["net_input1"])
    logits, _ = model(**sample["net_input"], features_only=True, classification_head_name=head_name)
    return logits


@register_criterion("lra_cross_entropy", dataclass=LRACrossEntropyConfig)
class LRACrossEntropyCriterion(FairseqCriterion):
    def __init__(self, cfg: LRACrossEntropyConfig, task):
        super().__init__(task)
        self.classification_head_name = cfg.classification_head_name

    def forward(self, model, sample, reduce=True):
        """Returns (summed loss, number of examples, logging output)."""
        heads = getattr(model, "classification_heads", None)
        if heads is not None and self.classification_head_name not in heads:
            raise ValueError(
                f"the model has no classification head {self.classification_head_name!r} "
                f"(it has: {', '.join(heads) or 'none'}); --classification-head-name must name "
                "the head the task registered"
            )
        logits = classify(model, sample, self.classification_head_name)
        targets = sample["target"].view(-1)
        if logits.dim() != 2 or logits.size(0) != targets.numel():
            raise ValueError(f"expected B x num_classes logits for {targets.numel()} targets, "
                             f"got shape {tuple(logits.shape)}")
        lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        loss = F.nll_loss(lprobs, targets, reduction="sum" if reduce else "none")
        sample_size = targets.numel()
        logging_output = {
            "loss": loss.data,
            "ncorrect": (lprobs.argmax(dim=-1) == targets).sum().data,
            "ntokens": sample["ntokens"],
            "nsentences": sample_size,
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        ncorrect = sum(log.get("ncorrect", 0) for log in logging_outputs)
        nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        if sample_size > 0:
            metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
        if nsentences > 0:
            metrics.log_scalar("accuracy", 100.0 * ncorrect / nsentences, nsentences, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
