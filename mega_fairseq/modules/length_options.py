"""The one meaning of the optional length settings, the attention chunk size and the EMA
kernel truncation, at every entry point (layers, model options, conversions):
``None``, 0 or -1 turn them off; a positive integer sets the length; anything else is
refused with the option's name."""

from typing import Optional

OFF = (0, -1)


def optional_length(option: str, value) -> Optional[int]:
    """``value`` as a length, or None when it is off (None, 0 or -1).

    Raises ValueError naming ``option`` for other values (other negatives, non-integers)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if value is None or (is_int and value in OFF):
        return None
    if not is_int or value <= 0:
        raise ValueError(f"{option} must be a positive integer, or -1 or 0 (off); got {value!r}")
    return value
