"""The command-line option behind each :class:`MegaLayerSettings` field, and the checks
that refuse bad option values naming that option.

The options builder (:func:`mega_fairseq.models.mega_options.layer_settings`) runs these
checks, so a command line or YAML config with, say, ``--decoder-z-dim 0`` fails with
:class:`~mega_fairseq.errors.OptionError` ``--decoder-z-dim must be a positive
integer, got 0`` before any layer is built. The layers check their constructor arguments
again under the arguments' own names (``zdim``) for Python callers.
"""

from typing import Optional

from mega_fairseq.errors import OptionError
from mega_fairseq.modules.length_options import optional_length

# MegaLayerSettings field -> the option it is read from; {side}: 'encoder' or 'decoder',
# {positions}: 'source' for the encoder, 'target' for the decoder
SETTING_OPTIONS = {
    "embed_dim": "--{side}-embed-dim",
    "zdim": "--{side}-z-dim",
    "hdim": "--{side}-hidden-dim",
    "ndim": "--{side}-n-dim",
    "ffn_hidden_dim": "--{side}-ffn-embed-dim",
    "dropout": "--dropout",
    "attention_dropout": "--attention-dropout",
    "hidden_dropout": "--hidden-dropout",
    "activation_dropout": "--activation-dropout",
    "rel_pos_bias": "--rel-pos-bias",
    "max_positions": "--max-{positions}-positions",
    "chunk_size": "--{side}-chunk-size",
    "truncation": "--truncation-length",
}
POSITIVE_SETTINGS = ("embed_dim", "zdim", "hdim", "ndim", "ffn_hidden_dim", "max_positions")
PROBABILITY_SETTINGS = ("dropout", "attention_dropout", "hidden_dropout", "activation_dropout")


def option_name(setting: str, side: str) -> str:
    """The command-line option of ``side`` that sets the ``setting`` field."""
    positions = "source" if side == "encoder" else "target"
    return SETTING_OPTIONS[setting].format(side=side, positions=positions)


def length_option(option: str, value) -> Optional[int]:
    """:func:`optional_length` raising :class:`OptionError` (naming ``option``)."""
    try:
        return optional_length(option, value)
    except ValueError as error:
        raise OptionError(str(error)) from None


def check_positive(option: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OptionError(f"{option} must be a positive integer, got {value!r}")


def check_probability(option: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise OptionError(f"{option} must be a probability in [0, 1), got {value!r}")


def check_layer_settings(settings, side: str) -> None:
    """Refuse settings the layers cannot be built with, naming the options of ``side``."""
    for setting in POSITIVE_SETTINGS:
        check_positive(option_name(setting, side), getattr(settings, setting))
    for setting in PROBABILITY_SETTINGS:
        check_probability(option_name(setting, side), getattr(settings, setting))
    if settings.rel_pos_bias == "rotary" and settings.zdim % 2 != 0:
        raise OptionError(
            f"--rel-pos-bias rotary needs an even {option_name('zdim', side)}, got {settings.zdim}"
        )


def check_stack_options(cfg, side: str) -> None:
    """Refuse a non-positive ``--{side}-layers`` (when the config has that option)."""
    layers = getattr(cfg, f"{side}_layers", None)
    if layers is not None:
        check_positive(f"--{side}-layers", layers)
