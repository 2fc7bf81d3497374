"""How long an input the built model accepts, asked once for every task that checks its
data or options against it (the model answers through ``max_positions()``, which the Mega
models derive from their validated stack settings)."""

from typing import Optional

from mega_fairseq.errors import OptionError

UNLIMITED = int(1e6)  # fairseq's "no limit" answer of max_positions()


def model_length_limit(model) -> Optional[int]:
    """The longest input ``model`` accepts; None when it accepts any length. For models
    with several inputs (a tuple), the smallest limit."""
    value = model.max_positions() if callable(getattr(model, "max_positions", None)) else None
    if isinstance(value, (tuple, list)):
        limits = [v for v in value if v is not None]
        value = min(limits) if limits else None
    return None if value is None or value >= UNLIMITED else value


def check_model_accepts(model, positions: int, needed_by: str) -> None:
    """Refuse a model that accepts fewer than ``positions``; ``needed_by`` names the
    option that asks for them (``--max-positions=512``)."""
    limit = model_length_limit(model)
    if limit is not None and limit < positions:
        raise OptionError(
            f"the model accepts {limit} positions, fewer than {needed_by}; raise the model's "
            "max positions (--max-positions / --max-source-positions) or choose an "
            "architecture that accepts that many"
        )
