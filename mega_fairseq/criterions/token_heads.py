"""What the token-level criteria (``token_classification``, ``span_prediction``) share:
running a model's token head with shape checks, and percentages derived from summed
meters."""

from fairseq import metrics


def token_head_logits(model, sample, head_name: str):
    """Run ``model`` with its token head ``head_name``: (logits B x T x K, extra)."""
    heads = getattr(model, "token_heads", None)
    if heads is None or head_name not in heads:
        raise ValueError(
            f"the model has no token head {head_name!r} (registered: "
            f"{sorted(heads) if heads is not None else 'none'}); build it through the task"
        )
    logits, extra = model(**sample["net_input"], features_only=True, token_head_name=head_name)
    tokens = sample["net_input"]["src_tokens"]
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"token head logits {tuple(logits.shape)} do not match the input "
                         f"{tuple(tokens.shape)} (expected B x T x labels)")
    return logits, extra


def log_percentage(name: str, numerator: str, denominator: str) -> None:
    """Log ``name`` = 100 * sum(numerator) / sum(denominator), derived from summed meters."""
    def derive(meters):
        total = meters[denominator].sum
        return round(100.0 * meters[numerator].sum / total, 2) if total > 0 else float("nan")

    metrics.log_derived(name, derive)
