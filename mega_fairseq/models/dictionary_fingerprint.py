"""Dictionary identity in checkpoints: a fingerprint of the ordered symbols of the dictionary
an encoder or decoder stack was built with, saved in its state dict and checked on load.

A model's state dict fixes the meaning of every token id only together with the dictionary
it was trained with. Two dictionaries of the same size but with other symbols or another
order (e.g. ``dict.txt`` rebuilt from other data) load without any shape error and give
nonsense. The stacks therefore carry a persistent ``uint8`` buffer
``dictionary_fingerprint`` (``FINGERPRINT_BYTES`` bytes of the sha256 of the symbols,
specials included) and a load-state-dict pre-hook that runs on every loading path
(fairseq-train resume, fairseq-eval-lm / generate / validate / interactive, hub
``from_pretrained``, ``checkpoint_utils.load_model_ensemble``, plain ``load_state_dict``):

* same fingerprint: loads;
* another fingerprint: :class:`DictionaryMismatchError`, naming both fingerprints, the
  dictionary (source / target) and the ``fairseq-preprocess`` option that fixes it;
* no fingerprint (checkpoints saved before it existed, state dicts converted from other
  code): loads with a warning that the dictionary cannot be checked; the current
  dictionary's fingerprint is filled in, so the next save carries it.

Converters that write a checkpoint for a known dictionary call
:func:`stamp_dictionary_fingerprint`.
"""

import functools
import hashlib
import logging
from typing import Dict, Optional

import torch
import torch.nn as nn
from torch import Tensor

logger = logging.getLogger(__name__)

BUFFER_NAME = "dictionary_fingerprint"
FINGERPRINT_BYTES = 8  # 16 hex digits

# the dictionary a stack's role binarises with, and the fairseq-preprocess option for it
_ROLES = {
    "source": ("source dictionary", "--srcdict"),
    "target": ("target dictionary", "--tgtdict"),
    "lm": ("dictionary", "--only-source --srcdict"),
}


class DictionaryMismatchError(ValueError):
    """A checkpoint was trained with another dictionary than the one the model was built
    with (same size or not): its token ids mean other symbols."""

    user_facing = True


def dictionary_fingerprint(dictionary) -> str:
    """Hex digest (``2 * FINGERPRINT_BYTES`` digits) of the sha256 of ``dictionary.symbols``
    in order, special symbols included; every symbol is length-prefixed, so no choice of
    symbols makes two different lists hash the same bytes. Counts are not included."""
    digest = hashlib.sha256()
    for symbol in dictionary.symbols:
        encoded = str(symbol).encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()[: 2 * FINGERPRINT_BYTES]


def fingerprint_tensor(fingerprint: str) -> Tensor:
    """The ``FINGERPRINT_BYTES`` uint8 tensor that stores a hex ``fingerprint``."""
    return torch.tensor(list(bytes.fromhex(fingerprint)), dtype=torch.uint8)


def fingerprint_from_tensor(tensor: Tensor) -> Optional[str]:
    """The hex fingerprint a stored tensor holds (any integer-valued dtype, e.g. a float
    copy from an fp32 EMA); None for a tensor without values (the ``meta`` device)."""
    if tensor.device.type == "meta":
        return None
    values = tensor.detach().reshape(-1).to(device="cpu")
    if values.is_floating_point():
        values = values.round()
    values = values.to(torch.int64).tolist()
    if any(v < 0 or v > 255 for v in values):
        return "invalid:" + ",".join(map(str, values[:FINGERPRINT_BYTES]))
    return bytes(values).hex()


def stamp_dictionary_fingerprint(state_dict: Dict[str, Tensor], prefix: str, dictionary) -> None:
    """Adds the fingerprint of ``dictionary`` to ``state_dict`` for the stack whose keys
    start with ``prefix`` (``"decoder."``, ``"encoder."``): for converters writing a
    checkpoint whose token ids follow ``dictionary``."""
    state_dict[prefix + BUFFER_NAME] = fingerprint_tensor(dictionary_fingerprint(dictionary))


def attach_dictionary_fingerprint(module: nn.Module, dictionary, role: str) -> None:
    """Registers the fingerprint buffer of ``dictionary`` on ``module`` (an encoder or
    decoder stack) and the check on load. ``role``: ``"source"``, ``"target"`` (translation
    sides, also ``"source"`` for a standalone encoder) or ``"lm"`` (a language model)."""
    if role not in _ROLES:
        raise ValueError(f"dictionary role must be one of {sorted(_ROLES)}, got {role!r}")
    fingerprint = dictionary_fingerprint(dictionary)
    module.register_buffer(BUFFER_NAME, fingerprint_tensor(fingerprint), persistent=True)
    module.register_load_state_dict_pre_hook(
        functools.partial(_check_on_load, fingerprint=fingerprint, size=len(dictionary),
                          role=role)
    )


def _check_on_load(module, state_dict, prefix, local_metadata, strict, missing_keys,
                   unexpected_keys, error_msgs, *, fingerprint: str, size: int, role: str):
    """Load-state-dict pre-hook of a stack (torch's hook signature): compares the
    checkpoint's fingerprint with the current dictionary's before any tensor is copied."""
    key = prefix + BUFFER_NAME
    label, option = _ROLES[role]
    stored = state_dict.get(key)
    if stored is None:
        logger.warning(
            "the checkpoint has no fingerprint of its %s (%s; saved before mega-fairseq "
            "stored one, or converted without one): the %s cannot be checked against the "
            "current one (%d symbols, fingerprint %s); make sure the data was binarised with "
            "the model's own dictionary (fairseq-preprocess %s <the model's dict.txt>). The "
            "next save stores the current fingerprint",
            label, key, label, size, fingerprint, option,
        )
        state_dict[key] = fingerprint_tensor(fingerprint)
        return
    checkpoint = fingerprint_from_tensor(stored)
    if checkpoint is None or checkpoint == fingerprint:
        return
    raise DictionaryMismatchError(
        f"{label} mismatch: the checkpoint was trained with a {label} of fingerprint "
        f"{checkpoint}, but the current {label} ({size} symbols, read from the data "
        f"directory) has fingerprint {fingerprint}: its symbols differ or are in another "
        f"order, so token ids would mean other words. Binarise the data with the model's "
        f"own dictionary: fairseq-preprocess {option} <the model's dict.txt> (the dictionary "
        f"file of the data it was trained on), or train from scratch in a new --save-dir"
    )
