"""The command-line option behind each block and stack setting: the one table from which
the settings builder (:func:`mega_fairseq.models.mega_options.stack_settings`) reads a
model side's sizes and with which it names options in errors, and from which the
architecture presets set them (:func:`mega_fairseq.models.model_building.set_stack_sizes`).

``{side}`` is 'encoder' or 'decoder'; ``{positions}`` is 'source' for the encoder and
'target' for the decoder.
"""

# MegaLayerSettings field -> the option it is set by
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
    "activation": "--activation-fn",
    "attention_activation": "--attention-activation-fn",
    "norm_type": "--normalization-type",
    "rel_pos_bias": "--rel-pos-bias",
    "max_positions": "--max-{positions}-positions",
    "cross_max_positions": "--max-source-positions/--max-target-positions",
    "chunk_size": "--{side}-chunk-size",
    "truncation": "--truncation-length",
    "prenorm": "--normalize-before",
    "ema_type": "--ema-type",
    "timestep_norm_groups": "--timestep-norm-groups",
    "normalized_attention": "--normalized-attention",
    "update_gate": "--no-update-gate",
    "two_hop_residual": "--two-hop-residual",
    "ffn_type": "--ffn-type",
}
# StackSettings field -> option
STACK_OPTIONS = {"num_layers": "--{side}-layers"}
# the settings every model side has its own option for
SIDE_SETTINGS = ("embed_dim", "zdim", "hdim", "ndim", "ffn_hidden_dim", "chunk_size", "num_layers")


def option_name(setting: str, side: str) -> str:
    """The command-line option of ``side`` that sets ``setting`` (the field name itself
    for settings no option sets)."""
    template = SETTING_OPTIONS.get(setting, STACK_OPTIONS.get(setting, setting))
    positions = "source" if side == "encoder" else "target"
    return template.format(side=side, positions=positions)


def option_attribute(setting: str, side: str) -> str:
    """The config attribute of :func:`option_name` (``--decoder-z-dim`` -> ``decoder_z_dim``)."""
    return option_name(setting, side)[2:].replace("-", "_")
