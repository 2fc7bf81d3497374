"""Checkpoints of the original Mega code (facebookresearch/mega, a fork of fairseq 0.9.0)
-> mega-fairseq models.

Four model types are mapped; each has the same four steps, usable one by one by a
converter script:

1. :func:`load_original_checkpoint`: the checkpoint dict, loaded with
   ``torch.load(weights_only=True)`` (its pickle needs ``argparse.Namespace`` only).
2. :func:`config_from_original_args`: the original ``args`` Namespace (original option
   names) -> our model config (``MegaLanguageModelConfig``, ``MegaTranslationConfig`` or
   ``MegaEncoderModelConfig``). An option value our model cannot compute the same way is
   refused with a ``ValueError`` naming the option.
3. :func:`build_original_task`: the fairseq task holding the dictionaries, read from the
   original data folder (``dict.txt``; ``dict.<lang>.txt``; ``src-bin/`` + ``label-bin/``).
4. :func:`state_dict_from_original`: the original state dict -> ours (names, shapes).

:func:`convert_original_checkpoint` does all four and returns the model with the weights
loaded (``load_state_dict(strict=True)``), in eval mode.

Model types (``kind``), from ``args.task`` and ``args.arch``:

* ``"lm"``: ``--task language_modeling -a mega_lm*`` -> ``mega_lm``
  (``MegaLanguageModel``);
* ``"translation"``: ``--task translation -a mega*`` -> ``mega`` (``MegaModel``);
* ``"lra"``: ``--task lra-text``/``lra-image``, ``--layer-type mega``, every
  ``mega_lra_*`` architecture -> ``mega_encoder`` (``MegaEncoderModel``) with a
  classification head: token inputs (ListOps, Text) for our ``lra-text`` task, document
  pairs (Retrieval: ``--classifier-in-dim`` twice the embedding) for ``lra-text --paired
  --pair-features concat``, pixel inputs (``--input-type image``: Image, Pathfinder,
  Path-X) for ``lra-image --pixel-input values`` with the original's
  ``--pixel-normalization``;
* ``"sc_raw"``: ``--task speech_commands -a mega_sc_raw*`` (raw waveforms) ->
  ``mega_sc_raw`` (``MegaSCRawModel``) for our ``speech_commands`` task with the
  original's class list (``--sc-all-classes``: 35, else 10); the real-number sample
  embedding ``encoder.encoder.embed_tokens.{weight,bias}`` keeps its names, blocks and
  classifier map as for LRA.

State-dict names (original -> ours), ``L`` the layer index::

    <side>.layers.L.mega_layer.{gamma,beta}        <side>.layers.L.self_attn.{gamma,beta}  2 x z
        row 0 makes the queries, row 1 the keys, in both
    <side>.layers.L.mega_layer.move.<p>            <side>.layers.L.self_attn.ema.<p>
        delta, alpha, beta D' x N x 1; gamma D' x N; omega D (D' = 2D when bidirectional)
    ...mega_layer.{v_proj,mx_proj,h_proj}.*        ...self_attn.{v_proj,mx_proj,h_proj}.*
        mx_proj (2D + z + h) x D: rows [u (D), z and r (z + h), hx (D)] in both
    ...mega_layer.rel_pos_bias.rel_pos_bias        ...self_attn.rel_pos_bias.rel_pos_bias
        2P - 1, same orientation (entry P - 1 + key - query)
    ...mega_layer.rel_pos_bias.{alpha,beta} 1 x z  ...self_attn.rel_pos_bias.{alpha,beta} z
    ...mega_layer.rel_pos_bias._float_tensor       (dropped: an unused dtype carrier)
    ...mega_layer.norm.norm.<n>                    ...self_attn.norm.norm.<n>
    ...nffn.{norm.norm.<n>,fc1.*,fc2.*}            ...ffn.{norm.norm.<n>,fc1.*,fc2.*}
    ...cross_attn.<anything>                       ...cross_attn.<same>
        q_proj (2D + z) x D: rows [u (D), r (D), q (z)] in both
    <n>: weight, bias, running_mean, running_var, num_batches_tracked; scale norm's
        ``scalar`` (1) -> ``weight`` (1)
    <side>.embed_tokens.weight, decoder.output_projection.weight, <side>.final_norm.*
                                                   the same names
    <side>.version                                 (dropped: fairseq 0.9's format version)

LRA classifier (``lra``)::

    encoder.encoder.embed_tokens.embed.weight      encoder.embed_tokens.weight
    encoder.encoder.embed_tokens.{weight,bias} C   encoder.embed_tokens.value_proj.{weight C x 1,
        (pixel inputs: x * weight + bias)          bias}
    encoder.encoder.layers.L.*                     encoder.layers.L.* (as above)
    classifier.0.0.{weight,bias}                   classification_heads.<head>.dense.*
        (pairs: input columns [second, first]      [first, second])
    sentence_projection_layer.weight               classification_heads.<head>.out_proj.weight
    (no bias in the original)                      classification_heads.<head>.out_proj.bias = 0
    (no masked-LM head in the original)            lm_head.{dense,layer_norm,bias}: kept at
                                                   their initial values, lm_head.weight tied
                                                   to the embeddings

Verified against outputs of the original (``tests/test_original_mega_parity.py``): layer
norm, the simple relative bias, softmax attention, silu, pre- and post-norm, chunked and
unchunked attention. The pair head and the pixel embedding are checked against the
original's formulas on top of that verified encoder. Rotary bias, the other norms and
attention functions are mapped by name only.
"""

import argparse
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from mega_fairseq.conversion.converted import ConvertedModel
from mega_fairseq.errors import DataError, MissingDataError

KINDS = ("lm", "translation", "lra", "sc_raw")
LRA_CLS_SYMBOL = "<CLS>"


# ------------------------------------------------------------------ checkpoint
def load_original_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint dict of the original code (keys ``args``, ``model``, ...), on CPU.

    Loaded with ``weights_only=True``: the pickle may refer to ``argparse.Namespace``
    besides tensors and containers, and to nothing else."""
    # A ``safe_globals`` context would remove the namespace again on exit, also from the
    # process-wide allow-list that mega_fairseq_compat installs for fairseq's checkpoints.
    if argparse.Namespace not in torch.serialization.get_safe_globals():
        torch.serialization.add_safe_globals([argparse.Namespace])
    if not os.path.isfile(path):
        raise MissingDataError(f"INPUT {path} is not a file (expected a checkpoint .pt of the original Mega code)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - explained, named by file
        from mega_fairseq_compat.checkpoint_diagnosis import load_failure_problem

        raise DataError(f"INPUT {path} {load_failure_problem(path, error)}") from None
    if not isinstance(checkpoint, dict):
        raise DataError(f"INPUT {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    for key in ("args", "model"):
        if key not in checkpoint:
            raise ValueError(f"{path} is not a checkpoint of the original Mega code: it has no {key!r} "
                             f"(keys: {sorted(checkpoint)})")
    if not isinstance(checkpoint["args"], argparse.Namespace):
        raise ValueError(f"{path}: 'args' is a {type(checkpoint['args']).__name__}, not an argparse.Namespace "
                         "(a checkpoint of hydra-era fairseq, not of the original Mega code?)")
    return checkpoint


def original_kind(args: argparse.Namespace) -> str:
    """``"lm"``, ``"translation"`` or ``"lra"``, from ``args.task`` and ``args.arch``."""
    task, arch = getattr(args, "task", None), str(getattr(args, "arch", ""))
    if task == "language_modeling" and arch.startswith("mega_lm"):
        return "lm"
    if task == "translation" and arch.startswith("mega"):
        return "translation"
    if task in ("lra-text", "lra-image") and arch.startswith("mega_lra"):
        return "lra"
    if task == "speech_commands" and arch in ("sc_raw", "mega_sc_raw", "mega_sc_raw_base", "mega_sc_raw_big"):
        return "sc_raw"
    raise ValueError(f"args.task={task!r} with args.arch={arch!r} is not a Mega model of the original code "
                     f"that can be converted (language_modeling + mega_lm*, translation + mega*, "
                     "lra-text/lra-image + mega_lra_*, speech_commands + mega_sc_raw*)")


# ------------------------------------------------------------------ args -> cfg
def _get(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


class ReadOptions(argparse.Namespace):
    """The original's ``args`` that records which options the conversion reads
    (``read``); the others are training, data and logging options that do not change
    what the model computes."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(**vars(args))
        object.__setattr__(self, "read", set())

    def __getattribute__(self, name: str):
        if not name.startswith("_") and name != "read" and name in object.__getattribute__(self, "__dict__"):
            object.__getattribute__(self, "read").add(name)
        return object.__getattribute__(self, name)

    def unread(self) -> list:
        return sorted(k for k in vars(self) if k != "read" and k not in self.read)


def _refuse(option: str, value: Any, why: str) -> None:
    raise ValueError(f"original option --{option.replace('_', '-')}={value!r} cannot be converted: {why}")


def _require(args: argparse.Namespace, option: str, allowed: Tuple, why: str, default: Any = None) -> None:
    value = _get(args, option, default)
    if value not in allowed:
        _refuse(option, value, why)


def _length_option(args: argparse.Namespace, option: str) -> Optional[int]:
    """EMA truncation: None (full kernel) or a positive length. The original's 0 gives an
    empty causal kernel (the EMA switched off) and crashes bidirectional layers, where ours
    reads 0 as 'no truncation'; both are refused."""
    value = _get(args, option)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        _refuse(option, value, "the original needs a positive length (0 switches its causal EMA off, and crashes "
                "its bidirectional EMA) or no value")
    return value


def _chunk_option(args: argparse.Namespace, option: str) -> int:
    """-1 (no chunking) or a positive chunk size."""
    value = _get(args, option, -1)
    if value is None or value < 0:
        return -1
    if value == 0:
        _refuse(option, value, "a chunk size must be positive, or negative for no chunking")
    return int(value)


def _choice(args: argparse.Namespace, option: str, choices: Tuple[str, ...], default: str) -> str:
    value = _get(args, option, default)
    if value not in choices:
        _refuse(option, value, f"our model offers {list(choices)}")
    return value


def _common_options(args: argparse.Namespace, norm_option: str = "normalization_type",
                    activation_dropout_option: str = "activation_dropout") -> Dict[str, Any]:
    """Options every Mega model shares, original name -> our field."""
    from mega_fairseq.modules.activations import ACTIVATIONS, ATTENTION_ACTIVATIONS
    from mega_fairseq.modules.relative_position import REL_POS_BIAS_TYPES
    from mega_fairseq.modules.sequence_norm import NORM_TYPES

    _require(args, "normalize_embedding", (False, None), "embedding norms are not mapped")
    return dict(
        dropout=float(_get(args, "dropout", 0.0)),
        attention_dropout=float(_get(args, "attention_dropout", 0.0)),
        hidden_dropout=float(_get(args, "hidden_dropout", 0.0) or 0.0),
        activation_dropout=float(_get(args, activation_dropout_option, 0.0) or 0.0),
        feature_dropout=bool(_get(args, "feature_dropout", False)),
        activation_fn=_choice(args, "activation_fn", tuple(ACTIVATIONS), "silu"),
        attention_activation_fn=_choice(args, "attention_activation_fn", tuple(ATTENTION_ACTIVATIONS), "softmax"),
        normalization_type=_choice(args, norm_option, tuple(NORM_TYPES), "layernorm"),
        rel_pos_bias=_choice(args, "rel_pos_bias", tuple(REL_POS_BIAS_TYPES), "simple"),
        truncation_length=_length_option(args, "truncation_length"),
        normalize_embedding=False,
    )


def _side_sizes(args: argparse.Namespace, side: str) -> Dict[str, Any]:
    names = ("embed_dim", "hidden_dim", "z_dim", "n_dim", "ffn_embed_dim", "layers")
    return {f"{side}_{name}": int(_get(args, f"{side}_{name}")) for name in names}


def _lm_config(args: argparse.Namespace):
    from mega_fairseq.models.mega_lm import MegaLanguageModelConfig

    input_dim = _get(args, "decoder_input_dim", args.decoder_embed_dim)
    if input_dim != args.decoder_embed_dim:
        _refuse("decoder_input_dim", input_dim, f"our decoder needs it equal to --decoder-embed-dim "
                f"({args.decoder_embed_dim})")
    return MegaLanguageModelConfig(
        **_common_options(args),
        **_side_sizes(args, "decoder"),
        decoder_chunk_size=_chunk_option(args, "decoder_chunk_size"),
        normalize_before=bool(args.normalize_before),
        no_affine_final_norm=bool(_get(args, "no_affine_final_norm", False)),
        no_scale_embedding=bool(_get(args, "no_scale_embedding", False)),
        share_decoder_input_output_embed=bool(_get(args, "share_decoder_input_output_embed", False)),
        max_target_positions=int(args.max_target_positions),
        tokens_per_sample=int(args.tokens_per_sample),
        **_adaptive_options(args),
    )


def _adaptive_options(args: argparse.Namespace) -> Dict[str, Any]:
    """Adaptive input / softmax options (the WikiText-103 models); fairseq's modules, the
    same in the original's fork and here."""
    options = dict(
        adaptive_input=bool(_get(args, "adaptive_input", False)),
        adaptive_softmax_cutoff=_get(args, "adaptive_softmax_cutoff", None),
        tie_adaptive_weights=bool(_get(args, "tie_adaptive_weights", False)),
        tie_adaptive_proj=bool(_get(args, "tie_adaptive_proj", False)),
    )
    if options["adaptive_input"]:
        options.update(adaptive_input_factor=float(_get(args, "adaptive_input_factor", 4)),
                       adaptive_input_cutoff=_get(args, "adaptive_input_cutoff", None))
    if options["adaptive_softmax_cutoff"] is not None:
        options.update(adaptive_softmax_factor=float(_get(args, "adaptive_softmax_factor", 4)),
                       adaptive_softmax_dropout=float(_get(args, "adaptive_softmax_dropout", 0.0) or 0.0))
    return options


def _translation_config(args: argparse.Namespace):
    from mega_fairseq.models.mega_translation import MegaTranslationConfig

    _require(args, "adaptive_input", (False, None), "the translation model has no adaptive input")
    _require(args, "adaptive_softmax_cutoff", (None,), "the translation model has no adaptive softmax")
    for side in ("encoder", "decoder"):
        embed_dim = _get(args, f"{side}_embed_dim")
        if _get(args, f"{side}_input_dim", embed_dim) != embed_dim:
            _refuse(f"{side}_input_dim", _get(args, f"{side}_input_dim"),
                    f"must equal --{side}-embed-dim ({embed_dim})")
    return MegaTranslationConfig(
        **_common_options(args),
        **_side_sizes(args, "encoder"),
        **_side_sizes(args, "decoder"),
        encoder_chunk_size=_chunk_option(args, "encoder_chunk_size"),
        decoder_chunk_size=_chunk_option(args, "decoder_chunk_size"),
        normalize_before=bool(args.normalize_before),
        no_affine_final_norm=bool(_get(args, "no_affine_final_norm", False)),
        no_scale_embedding=bool(_get(args, "no_scale_embedding", False)),
        share_all_embeddings=bool(_get(args, "share_all_embeddings", False)),
        share_decoder_input_output_embed=bool(_get(args, "share_decoder_input_output_embed", False)),
        max_source_positions=int(args.max_source_positions),
        max_target_positions=int(args.max_target_positions),
    )


@dataclass
class LRAHeadSettings:
    """The original LRA classifier: Linear(input_multiplier * embed, inner_dim) ->
    activation (the model config's ``pooler_activation_fn``) -> Linear(inner_dim,
    num_classes, no bias). ``input_multiplier`` 2: a Retrieval head over the concatenated
    sentence vectors of the two documents; ``pixels``: the input is an image (LRA Image,
    Pathfinder), embedded as a linear map of its normalised pixel values."""

    num_classes: int
    inner_dim: int
    input_multiplier: int = 1
    pixels: bool = False
    pixel_normalization: Tuple[float, float] = (0.5, 0.5)


def _lra_config(args: argparse.Namespace):
    from mega_fairseq.models.mega_encoder_model import POOLER_ACTIVATIONS, MegaEncoderModelConfig

    _require(args, "layer_type", ("mega",), "only Mega layers are mapped")
    _require(args, "input_type", ("text", "image"), "only token (lra-text) and pixel (lra-image) inputs exist")
    _require(args, "sen_rep_type", ("mp",), "only mean pooling ('mp') is mapped")
    _require(args, "use_p", (False, None), "the use_p sentence representation is not mapped")
    _require(args, "classifier_layers", (1,), "the classifier is mapped with exactly one hidden layer")
    _require(args, "regression_target", (False, None), "only classification heads are mapped")
    embed_dim = int(args.encoder_embed_dim)
    pair = args.input_type == "text" and _get(args, "classifier_in_dim", embed_dim) == 2 * embed_dim
    if _get(args, "classifier_in_dim", embed_dim) != embed_dim and not pair:
        _refuse("classifier_in_dim", args.classifier_in_dim,
                f"must equal --encoder-embed-dim ({embed_dim}), or twice it for a text pair (Retrieval)")
    return MegaEncoderModelConfig(
        **_common_options(args, norm_option="norm_type", activation_dropout_option="act_dropout"),
        encoder_embed_dim=embed_dim,
        encoder_hidden_dim=int(args.encoder_hidden_dim),
        encoder_z_dim=int(args.z_dim),
        encoder_n_dim=int(args.n_dim),
        encoder_ffn_embed_dim=int(args.encoder_ffn_embed_dim),
        encoder_layers=int(args.encoder_layers),
        encoder_chunk_size=_chunk_option(args, "chunk_size"),
        normalize_before=bool(_get(args, "encoder_normalize_before", False)),
        no_affine_final_norm=False,
        no_scale_embedding=True,  # the original LRA embedding is not scaled
        max_source_positions=int(args.max_positions),
        sentence_rep="mean",
        pooler_activation_fn=_choice(args, "classifier_activation_fn", POOLER_ACTIVATIONS, "gelu"),
        pooler_dropout=0.0,
        classification_head_inner_dim=int(_get(args, "classifier_out_dim", embed_dim)),
    )


def lra_head_settings(args: argparse.Namespace) -> LRAHeadSettings:
    """The classification head and input kind of an original LRA model."""
    embed_dim = int(args.encoder_embed_dim)
    normalization = _get(args, "pixel_normalization", None) or (0.5, 0.5)
    if len(normalization) != 2:
        _refuse("pixel_normalization", normalization, "must be a mean and a std")
    return LRAHeadSettings(
        num_classes=int(args.sentence_class_num), inner_dim=int(args.classifier_out_dim),
        input_multiplier=int(_get(args, "classifier_in_dim", embed_dim)) // embed_dim,
        pixels=_get(args, "input_type", "text") == "image",
        pixel_normalization=(float(normalization[0]), float(normalization[1])),
    )


def _sc_raw_config(args: argparse.Namespace):
    """The original's raw Speech Commands classifier (``sc_raw`` model) -> ``mega_sc_raw``."""
    from mega_fairseq.models.mega_sc_raw import POOLER_ACTIVATIONS, MegaSCRawConfig

    _require(args, "layer_type", ("mega", None), "only Mega layers are mapped")
    _require(args, "sen_rep_type", ("mp", None), "only mean pooling ('mp') is mapped")
    _require(args, "classifier_layers", (1,), "the classifier is mapped with exactly one hidden layer", 1)
    _require(args, "mfcc", (False, None), "only raw waveforms are mapped, not MFCC features")
    embed_dim = int(args.encoder_embed_dim)
    if _get(args, "classifier_in_dim", embed_dim) != embed_dim:
        _refuse("classifier_in_dim", args.classifier_in_dim, f"must equal --encoder-embed-dim ({embed_dim})")
    return MegaSCRawConfig(
        **_common_options(args, norm_option="norm_type", activation_dropout_option="act_dropout"),
        encoder_embed_dim=embed_dim,
        encoder_hidden_dim=int(args.encoder_hidden_dim),
        encoder_z_dim=int(args.z_dim),
        encoder_n_dim=int(args.n_dim),
        encoder_ffn_embed_dim=int(_get(args, "encoder_ffn_embed_dim", args.encoder_hidden_dim)),
        encoder_layers=int(args.encoder_layers),
        encoder_chunk_size=_chunk_option(args, "chunk_size"),
        normalize_before=bool(_get(args, "encoder_normalize_before", True)),
        max_source_positions=int(_get(args, "max_positions", 16000)),
        classification_head_inner_dim=int(_get(args, "classifier_out_dim", 2 * embed_dim)),
        pooler_activation_fn=_choice(args, "classifier_activation_fn", POOLER_ACTIVATIONS, "gelu"),
        pooler_dropout=0.0,
    )


_CONFIG_BUILDERS: Dict[str, Callable] = {"lm": _lm_config, "translation": _translation_config, "lra": _lra_config,
                                         "sc_raw": _sc_raw_config}


def config_from_original_args(args: argparse.Namespace):
    """Our model config for the original ``args`` (see :func:`original_kind`)."""
    return _CONFIG_BUILDERS[original_kind(args)](args)


# ---------------------------------------------------------------- state dicts
# sub-module renames inside one block: original prefix -> ours (first match wins)
_BLOCK_RENAMES: Tuple[Tuple[str, str], ...] = (
    ("mega_layer.move.", "self_attn.ema."),
    ("mega_layer.", "self_attn."),
    ("nffn.", "ffn."),
    ("cross_attn.", "cross_attn."),
)
# every key an original block may have
_NORM_NAMES = r"norm\.norm\.(weight|bias|scalar|running_mean|running_var|num_batches_tracked)"
_BIAS_NAMES = r"rel_pos_bias\.(rel_pos_bias|alpha|beta|_float_tensor)"
_ORIGINAL_BLOCK_KEY = re.compile(
    r"mega_layer\.(gamma|beta|move\.(delta|alpha|beta|gamma|omega)|(v|mx|h)_proj\.(weight|bias)"
    rf"|{_BIAS_NAMES}|{_NORM_NAMES})"
    rf"|nffn\.(fc[12]\.(weight|bias)|{_NORM_NAMES})"
    rf"|cross_attn\.([qkvh]_proj\.(weight|bias)|{_BIAS_NAMES}|{_NORM_NAMES})"
)
_ROTARY_VECTORS = ("rel_pos_bias.alpha", "rel_pos_bias.beta")
_ROTARY_DTYPE_BUFFER = "rel_pos_bias._float_tensor"
_SCALE_NORM_SUFFIX = ".norm.norm.scalar"


def block_state_from_original(block_state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """State dict of one original block (keys without the ``layers.L.`` prefix) -> ours.
    Tensors are not copied (the rotary vectors become 1-D views)."""
    unknown = sorted(key for key in block_state if not _ORIGINAL_BLOCK_KEY.fullmatch(key))
    if unknown:
        raise ValueError(f"unknown keys in an original Mega block: {unknown}")
    ours: Dict[str, Tensor] = {}
    for key, value in block_state.items():
        if key.endswith(_ROTARY_DTYPE_BUFFER):
            continue
        original_prefix, our_prefix = next(pair for pair in _BLOCK_RENAMES if key.startswith(pair[0]))
        new_key = our_prefix + key[len(original_prefix):]
        if new_key.endswith(_ROTARY_VECTORS):
            value = value.reshape(-1)
        if new_key.endswith(_SCALE_NORM_SUFFIX):
            new_key = new_key[: -len("scalar")] + "weight"
        ours[new_key] = value
    return ours


def _split_layer_key(key: str, layers_prefix: str) -> Optional[Tuple[str, str]]:
    """'<layers_prefix>L.rest' -> ('L', 'rest'); None for other keys."""
    if not key.startswith(layers_prefix):
        return None
    index, _, rest = key[len(layers_prefix):].partition(".")
    return index, rest


def _stack_state(original: Mapping[str, Tensor], original_side: str, our_side: str,
                 renames: Mapping[str, str], same_names: Tuple[str, ...] = ()) -> Dict[str, Tensor]:
    """The blocks and the named non-block keys of one stack. ``renames`` maps the other
    original keys (after ``original_side.``) to ours (after ``our_side.``); keys starting
    with one of ``same_names`` keep their name (fairseq's adaptive input / softmax);
    ``version`` is dropped; anything else is an error."""
    original_prefix = original_side + "."
    blocks: Dict[str, Dict[str, Tensor]] = {}
    ours: Dict[str, Tensor] = {}
    for key, value in original.items():
        if not key.startswith(original_prefix):
            continue
        split = _split_layer_key(key, original_prefix + "layers.")
        local = key[len(original_prefix):]
        if split is not None:
            blocks.setdefault(split[0], {})[split[1]] = value
        elif local == "version":
            continue
        elif local in renames:
            ours[f"{our_side}.{renames[local]}"] = value
        elif same_names and local.startswith(same_names):
            ours[f"{our_side}.{local}"] = value
        elif local.startswith("final_norm."):
            ours[f"{our_side}.{local}"] = value
        else:
            raise ValueError(f"unknown key in the original checkpoint: {key!r}")
    for index, block in blocks.items():
        for key, value in block_state_from_original(block).items():
            ours[f"{our_side}.layers.{index}.{key}"] = value
    return ours


def _check_only_prefixes(original: Mapping[str, Tensor], prefixes: Tuple[str, ...]) -> None:
    unknown = sorted(k for k in original if not k.startswith(prefixes))
    if unknown:
        raise ValueError(f"unknown keys in the original checkpoint: {unknown[:8]}")


def lm_state_dict(original: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Original ``mega_lm`` state dict -> ``MegaLanguageModel`` state dict."""
    _check_only_prefixes(original, ("decoder.",))
    names = {"embed_tokens.weight": "embed_tokens.weight", "output_projection.weight": "output_projection.weight"}
    return _stack_state(original, "decoder", "decoder", names,
                        same_names=("embed_tokens.embeddings.", "adaptive_softmax."))


def translation_state_dict(original: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Original ``mega`` encoder-decoder state dict -> ``MegaModel`` state dict."""
    _check_only_prefixes(original, ("encoder.", "decoder."))
    embed = {"embed_tokens.weight": "embed_tokens.weight"}
    ours = _stack_state(original, "encoder", "encoder", embed)
    ours.update(_stack_state(original, "decoder", "decoder",
                             dict(embed, **{"output_projection.weight": "output_projection.weight"})))
    return ours


def lra_state_dict(original: Mapping[str, Tensor], head_name: str,
                   head: Optional[LRAHeadSettings] = None) -> Dict[str, Tensor]:
    """Original LRA classifier state dict -> ``MegaEncoderModel`` state dict without the
    masked-LM head (see :func:`convert_original_checkpoint`): the encoder, and the
    classification head ``head_name`` with a zero output bias.

    Pixel inputs: the original's real-number embedding ``x * weight + bias`` (weight, bias:
    C) is ``PixelValueEmbedding.value_proj`` (weight C x 1). A Retrieval pair head reads
    [v, u] in the original (second document first) and [u, v] here: its input columns
    are swapped."""
    head = head or LRAHeadSettings(num_classes=0, inner_dim=0)
    _check_only_prefixes(original, ("encoder.encoder.", "classifier.", "sentence_projection_layer."))
    if head.pixels:
        renames = {"embed_tokens.weight": "embed_tokens.value_proj.weight",
                   "embed_tokens.bias": "embed_tokens.value_proj.bias"}
    else:
        renames = {"embed_tokens.embed.weight": "embed_tokens.weight"}
    ours = _stack_state(original, "encoder.encoder", "encoder", renames)
    if head.pixels:
        weight = ours.get("encoder.embed_tokens.value_proj.weight")
        if weight is None or weight.dim() != 1:
            raise ValueError("an original image (pixel) LRA model has encoder.encoder.embed_tokens.weight "
                             f"of shape [C]; got {None if weight is None else list(weight.shape)}")
        ours["encoder.embed_tokens.value_proj.weight"] = weight.unsqueeze(-1)
    ours.update(_classifier_state(original, head_name, head.input_multiplier))
    return ours


def _classifier_state(original: Mapping[str, Tensor], head_name: str, input_multiplier: int = 1) -> Dict[str, Tensor]:
    """The original's classifier (LRA and speech models) -> our classification head
    ``head_name`` (a zero output bias; a pair head's input columns reordered)."""
    ours: Dict[str, Tensor] = {}
    prefix = f"classification_heads.{head_name}."
    expected = {"classifier.0.0.weight", "classifier.0.0.bias", "sentence_projection_layer.weight"}
    present = {k for k in original if k.startswith(("classifier.", "sentence_projection_layer."))}
    if present != expected:
        raise ValueError(f"the original LRA classifier must have exactly {sorted(expected)}, got {sorted(present)}")
    dense = original["classifier.0.0.weight"]
    if input_multiplier == 2:
        second, first = dense.chunk(2, dim=1)
        dense = torch.cat([first, second], dim=1)
    ours[prefix + "dense.weight"] = dense
    ours[prefix + "dense.bias"] = original["classifier.0.0.bias"]
    projection = original["sentence_projection_layer.weight"]
    ours[prefix + "out_proj.weight"] = projection
    ours[prefix + "out_proj.bias"] = projection.new_zeros(projection.size(0))
    return ours


def sc_raw_state_dict(original: Mapping[str, Tensor], head_name: str) -> Dict[str, Tensor]:
    """Original ``sc_raw`` state dict -> ``MegaSCRawModel``: the raw-sample embedding
    ``x * weight + bias`` keeps its names, the blocks and classifier map as for LRA."""
    _check_only_prefixes(original, ("encoder.encoder.", "classifier.", "sentence_projection_layer."))
    ours = _stack_state(original, "encoder.encoder", "encoder",
                        {"embed_tokens.weight": "embed_tokens.weight", "embed_tokens.bias": "embed_tokens.bias"})
    ours.update(_classifier_state(original, head_name))
    return ours


def state_dict_from_original(kind: str, original: Mapping[str, Tensor], head_name: Optional[str] = None,
                             head: Optional[LRAHeadSettings] = None) -> Dict[str, Tensor]:
    """Original state dict of model type ``kind`` -> ours (``head_name``, ``head``: LRA only)."""
    if kind == "lm":
        return lm_state_dict(original)
    if kind == "translation":
        return translation_state_dict(original)
    if kind == "lra":
        if head_name is None:
            raise ValueError("the LRA state dict needs the classification head name")
        return lra_state_dict(original, head_name, head)
    if kind == "sc_raw":
        if head_name is None:
            raise ValueError("the speech state dict needs the classification head name")
        return sc_raw_state_dict(original, head_name)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


# ---------------------------------------------------------------------- tasks
def _lm_task(args: argparse.Namespace, data_dir: str):
    from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

    cfg = LanguageModelingConfig(data=data_dir, tokens_per_sample=int(args.tokens_per_sample),
                                 sample_break_mode=_get(args, "sample_break_mode", "none") or "none")
    return LanguageModelingTask.setup_task(cfg)


def _translation_task(args: argparse.Namespace, data_dir: str):
    from fairseq.tasks.translation import TranslationConfig, TranslationTask

    cfg = TranslationConfig(
        data=data_dir, source_lang=args.source_lang, target_lang=args.target_lang,
        left_pad_source=bool(_get(args, "left_pad_source", True)),
        left_pad_target=bool(_get(args, "left_pad_target", False)),
        max_source_positions=int(args.max_source_positions), max_target_positions=int(args.max_target_positions),
    )
    return TranslationTask.setup_task(cfg)


def lra_dictionaries(data_dir: str):
    """(input dictionary, label dictionary) of an original ``lra-text`` data folder:
    ``src-bin/dict.txt`` with ``<CLS>`` appended (as the original task does) and
    ``label-bin/dict.txt``."""
    from fairseq.data import Dictionary

    source = Dictionary.load(os.path.join(data_dir, "src-bin", "dict.txt"))
    source.add_symbol(LRA_CLS_SYMBOL)
    labels = Dictionary.load(os.path.join(data_dir, "label-bin", "dict.txt"))
    return source, labels


def _lra_task(args: argparse.Namespace, data_dir: str):
    """lra-text (with ``--paired --pair-features concat`` for a Retrieval model), or
    lra-image with the original's pixel normalisation for image inputs (``--image-size``:
    the square root of the original's ``--max-positions``)."""
    from mega_fairseq.tasks.lra_common import DEFAULT_HEAD_NAME

    head = lra_head_settings(args)
    if head.pixels:
        from mega_fairseq.tasks.lra_image import LRAImageConfig, LRAImageTask

        side = math.isqrt(int(args.max_positions))
        if side * side != int(args.max_positions):
            _refuse("max_positions", args.max_positions, "an image model needs a square number of pixels")
        mean, std = head.pixel_normalization
        cfg = LRAImageConfig(data=data_dir, num_classes=head.num_classes, image_size=side, pixel_input="values",
                             pixel_mean=mean, pixel_std=std, classification_head_name=DEFAULT_HEAD_NAME,
                             seed=int(_get(args, "seed", 1)))
        return LRAImageTask.setup_task(cfg)
    from mega_fairseq.tasks.lra_text import LRATextConfig, LRATextTask

    source, labels = lra_dictionaries(data_dir)
    cfg = LRATextConfig(data=data_dir, num_classes=head.num_classes, paired=head.input_multiplier == 2,
                        pair_features="concat", max_positions=int(args.max_positions),
                        classification_head_name=DEFAULT_HEAD_NAME, seed=int(_get(args, "seed", 1)))
    return LRATextTask(cfg, source, labels)


def _sc_raw_task(args: argparse.Namespace, data_dir: str):
    """``speech_commands`` with the original's class list (``--sc-all-classes``: its 35
    classes with short clips zero-padded; else its 10 with short clips dropped) and clip
    length; the normalisation statistics come from the train split of the data it is used
    with, as in the original."""
    from mega_fairseq.tasks.lra_common import DEFAULT_HEAD_NAME
    from mega_fairseq.tasks.speech_commands import SpeechCommandsConfig, SpeechCommandsTask

    rate = _get(args, "sc_dropped_rate", 0.0) or 0.0
    if rate != 0.0:
        _refuse("sc_dropped_rate", rate, "the original's sample dropping is not mapped")
    all_classes = bool(_get(args, "sc_all_classes", False))
    cfg = SpeechCommandsConfig(data=data_dir, labels="sc35" if all_classes else "sc10",
                               num_classes=int(args.sentence_class_num), clip_length=int(_get(args, "max_positions", 16000)),
                               short_clips="pad" if all_classes else "drop",
                               classification_head_name=DEFAULT_HEAD_NAME, seed=int(_get(args, "seed", 1)))
    return SpeechCommandsTask.setup_task(cfg)


_TASK_BUILDERS: Dict[str, Callable] = {"lm": _lm_task, "translation": _translation_task, "lra": _lra_task,
                                       "sc_raw": _sc_raw_task}


def build_original_task(args: argparse.Namespace, data_dir: str):
    """The fairseq task with the dictionaries of the original data folder ``data_dir``
    (``language_modeling``: dict.txt; ``translation``: dict.<src>.txt, dict.<tgt>.txt;
    ``lra-text``: src-bin/dict.txt + ``<CLS>``, label-bin/dict.txt)."""
    return _TASK_BUILDERS[original_kind(args)](args, data_dir)


# ---------------------------------------------------------------------- models
def build_model(kind: str, cfg, task, head: Optional[LRAHeadSettings] = None):
    """Our model for config ``cfg`` (randomly initialised), with the LRA head ``head``."""
    if kind == "lm":
        from mega_fairseq.models.mega_lm import MegaLanguageModel
        return MegaLanguageModel.build_model(cfg, task)
    if kind == "translation":
        from mega_fairseq.models.mega_translation import MegaModel
        return MegaModel.build_model(cfg, task)
    from mega_fairseq.tasks.lra_common import classification_head_name

    if head is None:
        raise ValueError("an LRA or speech model needs its head settings (lra_head_settings(args))")
    if kind == "sc_raw":
        from mega_fairseq.models.mega_sc_raw import MegaSCRawModel

        model = MegaSCRawModel.build_model(cfg, task)
        model.register_classification_head(classification_head_name(task.cfg), num_classes=head.num_classes,
                                           inner_dim=head.inner_dim)
        return model
    from mega_fairseq.models.mega_encoder_model import MegaEncoderModel

    model = MegaEncoderModel.build_model(cfg, task)
    if head.pixels:
        task.use_pixel_values(model)
    model.register_classification_head(classification_head_name(task.cfg), num_classes=head.num_classes,
                                       inner_dim=head.inner_dim, input_multiplier=head.input_multiplier)
    return model


_FINGERPRINT_SUFFIX = "dictionary_fingerprint"
# buffers of ours without a value of their own (fairseq's dtype carriers and format versions
# of its adaptive modules), taken from the model when the original's state lacks them
_FILLED_SUFFIXES = (_FINGERPRINT_SUFFIX, "._float_tensor", "adaptive_softmax.version")


def _complete_state(model: torch.nn.Module, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``state`` plus the entries of ``model`` the original has no counterpart for, taken
    from the model itself: the masked-LM head of ``mega_encoder`` (unused by
    classification) and the stacks' ``dictionary_fingerprint`` buffers, which hold the
    fingerprints of the task's dictionaries the model was built with (what
    ``mega_fairseq.models.dictionary_fingerprint.stamp_dictionary_fingerprint`` writes), and
    the value-less buffers of ``_FILLED_SUFFIXES``."""
    completed = dict(state)
    for key, value in model.state_dict().items():
        if key not in completed and (key.startswith("lm_head.") or key.endswith(_FILLED_SUFFIXES)):
            completed[key] = value
    if "lm_head.weight" in completed and "encoder.embed_tokens.weight" in state:
        completed["lm_head.weight"] = state["encoder.embed_tokens.weight"]
    return completed


def _check_tied(state: Mapping[str, Tensor], names: Tuple[str, ...]) -> None:
    present = [n for n in names if n in state]
    for name in present[1:]:
        if not torch.equal(state[name], state[present[0]]):
            raise ValueError(f"{name} differs from {present[0]}: the checkpoint's embeddings are not tied "
                             "as its options say")


def load_original_weights(model: torch.nn.Module, kind: str, state: Dict[str, Tensor], cfg) -> None:
    """Load our-format ``state`` into ``model`` strictly (tied embeddings checked first)."""
    if kind == "translation" and cfg.share_all_embeddings:
        _check_tied(state, ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                            "decoder.output_projection.weight"))
    elif kind in ("lm", "translation") and cfg.share_decoder_input_output_embed:
        _check_tied(state, ("decoder.embed_tokens.weight", "decoder.output_projection.weight"))
    ours = model.state_dict()
    for key in ("decoder.embed_tokens.weight", "encoder.embed_tokens.weight"):
        if key in state and key in ours and state[key].size(0) != ours[key].size(0):
            raise DataError(
                f"dictionary mismatch: the checkpoint's {key.split('.')[0]} embedding has "
                f"{state[key].size(0)} rows but the dictionary read from --data has {ours[key].size(0)} "
                "symbols (fairseq's 4 specials included); point --data at the folder of the "
                "dictionaries the model was trained with")
    completed = _complete_state(model, state)
    misfits = [f"{k} {list(v.shape)} (the options make {list(ours[k].shape)})"
               for k, v in completed.items() if k in ours and v.shape != ours[k].shape]
    if misfits:
        raise DataError(f"the checkpoint's tensors do not fit its own options (args): "
                        f"{'; '.join(misfits[:5])}{' ...' if len(misfits) > 5 else ''}")
    model.load_state_dict(completed, strict=True)


def convert_original_checkpoint(path: str, data_dir: str) -> ConvertedModel:
    """Our model with the weights of the original checkpoint ``path`` (dictionaries from
    the original data folder ``data_dir``), in eval mode."""
    checkpoint = load_original_checkpoint(path)
    args = ReadOptions(checkpoint["args"])
    kind = original_kind(args)
    cfg = config_from_original_args(args)
    task = build_original_task(args, data_dir)
    head = lra_head_settings(args) if kind in ("lra", "sc_raw") else None
    model = build_model(kind, cfg, task, head)
    head_name = None
    if kind in ("lra", "sc_raw"):
        from mega_fairseq.tasks.lra_common import classification_head_name
        head_name = classification_head_name(task.cfg)
    state = state_dict_from_original(kind, checkpoint["model"], head_name, head)
    load_original_weights(model, kind, state, cfg)
    notes = original_notes(kind, args)
    notes.append(f"{len(args.read)} original options were read; the other {len(args.unread())} "
                 f"(training, data and logging options that do not change the model) were ignored: "
                 f"{', '.join(args.unread())}")
    return ConvertedModel(kind=kind, model=model.eval(), cfg=cfg, task=task, notes=notes)


def original_notes(kind: str, args: argparse.Namespace) -> list:
    """What the converted model computes differently from the original code: the
    original's defects, which this code does not reproduce."""
    notes = []
    truncation = _get(args, "truncation_length", None)
    if kind in ("lm", "translation") and truncation is not None and truncation > 0:
        notes.append(
            f"the original's incremental decoding ignores --truncation-length {truncation} (its "
            "recurrent EMA uses the whole history); ours truncates in both the full pass and "
            f"incremental decoding, so step-by-step outputs differ from the original's once a "
            f"sequence is longer than {truncation} tokens")
    if kind in ("lm", "translation"):
        notes.append(
            "the original's incremental attention never carries the padding mask of earlier "
            "steps (it writes prev_key_padding_mask but reads prev_padding_mask); ours masks them")
    if kind == "translation":
        notes.append(
            "the original counts cross-attention source positions from the start of the padded "
            "row, so with left-padded sources its relative bias depends on the padding; ours counts "
            "from the first real token (outputs equal for unpadded sources)")
    if kind in ("lra", "sc_raw"):
        notes.append(
            "the original requires inputs to be a multiple of the chunk size or at most one chunk; "
            "ours pads the last chunk and accepts any length")
    if kind == "sc_raw":
        notes.append(
            "the normalisation statistics (mean, std) are computed from the train split of the data "
            "the converted model is used with, as the original does; pass --audio-mean/--audio-std "
            "to fix them")
    return notes
