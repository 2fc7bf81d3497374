"""numpy >= 2 removed ``numpy.compat``; fairseq 0.12.2 still uses ``np.compat.long`` (which
was ``int``) in ``TokenBlockDataset`` (language-model inference, e.g. ``fairseq-interactive
--task language_modeling``) and ``LanguagePairDataset.num_tokens_vec`` (translation batching).

The fix adds a ``numpy.compat`` namespace holding only ``long = int`` when numpy has none;
with numpy 1.x nothing changes.
"""

import types

import numpy


def needed() -> bool:
    try:
        numpy.compat  # noqa: B018  (numpy 2 raises AttributeError here)
    except AttributeError:
        return True
    return False


def apply() -> None:
    if needed():
        numpy.compat = types.SimpleNamespace(long=int)
