"""The architecture presets of ``mega_encoder`` (``--arch mega_encoder_tiny``,
``mega_lra_*``, ...): small functions that set each size the user did not set."""

from fairseq.models import register_model_architecture

from mega_fairseq.models import mega_encoder_model  # noqa: F401  (registers the model first)
from mega_fairseq.models.model_building import set_arch_defaults, set_stack_sizes


@register_model_architecture("mega_encoder", "mega_encoder_base")
def mega_encoder_base(args):
    """BERT-base class (about 124M parameters with a 50k vocabulary): 12 pre-norm blocks,
    embed 768, hidden = FFN = 2 x embed, z 128, EMA ndim 16 (the Mega paper's ratios: its
    base models use hidden = FFN = 2 x embed and z 128). Pre-norm for stable deep
    pretraining. Same as ``--arch mega_encoder`` (the config defaults)."""
    set_stack_sizes(args, ("encoder",), 768, 1536, 1536, 128, 16, 12)
    set_arch_defaults(
        args,
        normalize_before=True,
        normalization_type="layernorm",
        activation_fn="silu",
        attention_activation_fn="softmax",
        rel_pos_bias="simple",
        dropout=0.1,
        sentence_rep="cls",
    )


@register_model_architecture("mega_encoder", "mega_encoder_tiny")
def mega_encoder_tiny(args):
    """2 small blocks for CPU tests and examples."""
    set_stack_sizes(args, ("encoder",), 64, 128, 128, 32, 4, 2)
    mega_encoder_base(args)


# Long Range Arena presets. Sizes, EMA ndim 16, truncation (1024; Path-X 4096), chunk sizes,
# max positions (ListOps 2002, Text/Retrieval 4002, Image/Pathfinder 1024, Path-X 128*128),
# mean-pooled sentence representation ('mp') and the norms of ListOps/Text/Image/Pathfinder
# come from the authors' architectures (facebookresearch/mega, fairseq/models/lra/model.py:
# mega_lra_*; Retrieval's scalenorm from its training command);
# attention activation (softmax for text, laplace for image tasks), pre-norm for the image
# tasks, dropout (0.1 text, 0.0 image), attention/activation dropout 0.0 come from their
# training commands (examples/mega/README.lra.md), which also pass --norm-type layernorm for
# ListOps (the architecture's default there is scalenorm, kept here) and syncbatchnorm for
# Path-X. The authors train with --weight-decay, linear-decay lr schedules, etc. (see that README).
def _lra(args, embed, hidden, ffn, z, layers, *, norm, prenorm, attention_activation, dropout,
         max_positions, chunk=-1, truncation=1024):
    set_stack_sizes(args, ("encoder",), embed, hidden, ffn, z, 16, layers)
    set_arch_defaults(
        args,
        normalization_type=norm,
        normalize_before=prenorm,
        activation_fn="silu",
        attention_activation_fn=attention_activation,
        rel_pos_bias="simple",
        dropout=dropout,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        activation_dropout=0.0,
        encoder_chunk_size=chunk,
        truncation_length=truncation,
        max_positions=max_positions,
        sentence_rep="mean",
    )


@register_model_architecture("mega_encoder", "mega_lra_listop")
def mega_lra_listop(args):
    _lra(args, 80, 160, 160, 64, 6, norm="scalenorm", prenorm=False,
         attention_activation="softmax", dropout=0.1, max_positions=2002)


@register_model_architecture("mega_encoder", "mega_lra_imdb")
def mega_lra_imdb(args):
    _lra(args, 128, 256, 256, 64, 4, norm="scalenorm", prenorm=False,
         attention_activation="softmax", dropout=0.1, max_positions=4002)


@register_model_architecture("mega_encoder", "mega_lra_aan")
def mega_lra_aan(args):
    _lra(args, 128, 256, 256, 64, 6, norm="scalenorm", prenorm=False,
         attention_activation="softmax", dropout=0.1, max_positions=4002)


@register_model_architecture("mega_encoder", "mega_lra_cifar10")
def mega_lra_cifar10(args):
    _lra(args, 160, 320, 320, 96, 8, norm="batchnorm", prenorm=True,
         attention_activation="laplace", dropout=0.0, max_positions=1024, chunk=1024)


@register_model_architecture("mega_encoder", "mega_lra_pf32")
def mega_lra_pf32(args):
    _lra(args, 128, 256, 256, 64, 6, norm="batchnorm", prenorm=True,
         attention_activation="laplace", dropout=0.0, max_positions=1024, chunk=1024)


@register_model_architecture("mega_encoder", "mega_lra_pf128")
def mega_lra_pf128(args):
    _lra(args, 64, 128, 128, 32, 4, norm="syncbatchnorm", prenorm=True,
         attention_activation="laplace", dropout=0.0, max_positions=128 * 128,
         chunk=128 * 128, truncation=4096)
