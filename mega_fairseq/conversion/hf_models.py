"""Whole models of the Hugging Face port of Mega (``save_pretrained`` folders of
``transformers==4.40.2``) -> this plugin's fairseq models, and back.

* :func:`convert_hf_folder`: a folder with ``config.json`` and the weights
  (``model.safetensors`` or ``pytorch_model.bin``, sharded ones with their index file)
  -> :class:`~mega_fairseq.conversion.converted.ConvertedModel` (model in eval mode,
  float32). Nothing here imports ``transformers``; nothing is written.
* :func:`export_to_hf`: our ``mega_encoder`` / ``mega_lm`` -> a folder the port's
  ``from_pretrained`` loads (``config.json``, the weights, ``vocab.json``), written all at
  once (a temporary folder renamed onto the target), for the configurations the port
  computes correctly; the others are refused with every reason.
* :func:`export_checkpoint_to_hf`: the same for a checkpoint file of this plugin.

The port's classes (config.json ``architectures``) and what they become
(``ConvertedModel.kind``, the fairseq task holding the dictionary)::

    MegaForMaskedLM                mega_encoder, masked-LM head        masked_lm       masked_lm
    MegaForSequenceClassification  mega_encoder, classification head   classification  sentence_prediction
                                   'sentence_classification_head'
    MegaForCausalLM                mega_lm                             lm              language_modeling
    MegaModel, is_decoder false    mega_encoder (features; the pooler  encoder         masked_lm
                                   as classification head 'hf_pooler')
    MegaModel, is_decoder true     mega_lm (features; output           lm              language_modeling
                                   projection tied to the embeddings,
                                   the pooler dropped)

MegaModel follows ``is_decoder``: the port builds its causal mask from ``is_decoder``
alone, and ``bidirectional`` must agree (false for decoders, true for encoders), as for
the other classes; other combinations are refused. The port's other classes (multiple
choice, token classification, question answering) are refused.

Whole-model structure, port -> ours (blocks: :mod:`mega_fairseq.conversion.hf_mega`):

* embeddings: not scaled, no embedding norm, no embedding dropout -> ``--no-scale-embedding``;
  token types summed with the token embeddings -> ``--type-vocab-size``;
* no norm after the last block, also for pre-norm models -> ``--no-final-norm``;
* masked-LM head: [Linear(C, C) -> tanh] -> Linear(C, V) with bias, tied to the
  embeddings when ``tie_word_embeddings`` -> ``--lm-head-type dense_tanh`` / ``linear``;
* causal-LM head: the same -> ``mega_lm --lm-head-type dense_tanh`` / ``linear`` with
  ``--output-projection-bias``;
* sequence classification: first token -> dense C x C -> tanh -> out_proj -> ours with
  ``--sentence-rep cls``, ``--pooler-activation-fn tanh``, inner dim = C;
* MegaModel's pooler (dense + tanh over the first token): a classification head
  ``hf_pooler`` whose out_proj is the identity with zero bias, so
  ``model(tokens, classification_head_name='hf_pooler')`` is its ``pooler_output``;
* the port takes an ``attention_mask``; ours masks the dictionary's ``<pad>`` (id 1). The
  outputs agree where the port is given ``attention_mask = input_ids != pad_token_id``,
  at real positions (at padded ones both are meaningless; ours are zeros for encoders).

State-dict names (``P`` = ``mega.`` for the head classes, empty for MegaModel; ``side`` =
``encoder`` or ``decoder``)::

    P embedding_layer.word_embeddings.weight        side.embed_tokens.weight
    P embedding_layer.token_type_embeddings.weight  encoder.embed_token_types.weight
    P embedding_layer.token_type_ids                (dropped: a buffer of zeros)
    P layers.L.<block>                              side.layers.L.<block> (hf_mega)
    dense.{weight,bias}  (masked LM)                lm_head.dense.*
    mlm_head.{weight,bias}                          lm_head.{weight,bias}
    dense.{weight,bias}  (causal LM)                decoder.output_dense.*
    lm_head.{weight,bias}                           decoder.output_projection.{weight,bias}
    classifier.{dense,out_proj}.{weight,bias}       classification_heads.sentence_classification_head.*
    pooler.dense.{weight,bias}  (MegaModel)         classification_heads.hf_pooler.dense.*
                                                    (out_proj: identity, zero bias)

A tied output weight (``tie_word_embeddings``, the port's default) is the embedding
(``model.safetensors`` omits it; a stored copy must equal the embedding).
The simple relative bias of a block is read by the port around entry W - 1 of its
2 max_positions - 1 entries, W = chunk_size when chunk_size >= 0 (even without
use_chunking), else max_positions; ours holds the 2 W - 1 entries it reads.

config.json fields (a field config.json omits takes the default of 4.40.2's
``MegaConfig``, as ``from_pretrained`` does):

* mapped: vocab_size (dictionary size), hidden_size, num_hidden_layers,
  intermediate_size, ema_projection_size, shared_representation_size, nffn_hidden_size
  (the ``--{encoder,decoder}-*`` sizes), use_chunking + chunk_size (chunk size),
  truncation, normalize_before_mega = normalize_before_ffn (``--normalize-before``),
  normalization_type, norm_affine, activation, attention_activation,
  relative_positional_bias, max_positions (``--max-{source,target}-positions``, the
  relative bias), dropout_prob, hidden_dropout_prob, attention_probs_dropout_prob,
  nffn_activation_dropout_prob, use_feature_dropout, classifier_dropout (the dropouts),
  add_token_type_embeddings + type_vocab_size, add_lm_hidden_dense_layer,
  tie_word_embeddings, is_decoder + bidirectional (the model), id2label / label2id /
  num_labels + problem_type (the classification head and the task's labels),
  pad_token_id / bos_token_id / eos_token_id (must be fairseq's 1 / 0 / 2);
* refused: normalization_type rmsnorm (the port's MegaRMSNorm does not normalise),
  use_normalized_ffn false (our blocks always end with the normalized FFN),
  normalize_before_mega != normalize_before_ffn, add_cross_attention /
  is_encoder_decoder true, non-empty pruned_heads, token types in a causal LM, chunk
  sizes the port cannot run (chunk_size 0, chunked without a positive chunk_size, a simple
  bias window above max_positions), values outside what our options allow (named);
* ignored (no effect on what the model computes): initializer_range,
  ema_delta_alpha_range, ema_beta_range, ema_gamma_omega_range (initialisation),
  num_attention_heads (fixed at 1, unused), use_cache (see the notes on truncation),
  torch_dtype (weights become float32), transformers_version, and the generic
  ``PretrainedConfig`` fields of outputs, generation and bookkeeping (:data:`IGNORED_FIELDS`);
  fields unknown to 4.40.2 are ignored by the port and here, with a note.

Dictionary: index i is the port's token id i. Symbols come from the folder's tokenizer
vocabulary (``tokenizer.json``, else ``vocab.json`` with ``added_tokens.json``, else
``vocab.txt``), else placeholders ``<hf_token_i>``; ids 0-3 are named fairseq's ``<s>``,
``<pad>``, ``</s>``, ``<unk>`` whatever the tokenizer calls them, and the tokenizer's mask
token (``special_tokens_map.json`` / ``tokenizer_config.json``) becomes ``<mask>``.
Configs whose pad/bos/eos ids are not fairseq's 1/0/2 are refused (no rows are permuted).
fairseq's masked_lm and sentence_prediction tasks add ``<mask>`` to the dictionary they
load, so encoder models need a vocabulary with a mask token.
"""

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mega_fairseq.conversion.converted import ConvertedModel
from mega_fairseq.conversion.output_folder import new_output_folder
from mega_fairseq.conversion.hf_mega import (
    TRANSFORMERS_REQUIREMENT,
    _refusals,
    hf_block_state_to_mega_layer_state,
    hf_config_kwargs,
    mega_layer_state_to_hf_block_state,
)
from mega_fairseq.errors import DataError, MissingDataError, OptionError

logger = logging.getLogger(__name__)

TRANSFORMERS_VERSION = TRANSFORMERS_REQUIREMENT.split("==")[1]
CLASSIFICATION_HEAD = "sentence_classification_head"  # fairseq's sentence_prediction default
HF_POOLER_HEAD = "hf_pooler"
CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
VOCAB_JSON = "vocab.json"
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3 of every fairseq Dictionary
MASK_SYMBOL = "<mask>"

ARCHITECTURES = ("MegaForMaskedLM", "MegaForSequenceClassification", "MegaForCausalLM", "MegaModel")

# transformers 4.40.2 MegaConfig: the defaults of its Mega fields
MEGA_CONFIG_DEFAULTS: Dict[str, Any] = dict(
    vocab_size=30522, hidden_size=128, num_hidden_layers=4, intermediate_size=256,
    ema_projection_size=16, bidirectional=True, shared_representation_size=64,
    use_chunking=False, chunk_size=-1, truncation=None, normalize_before_mega=True,
    normalization_type="scalenorm", norm_affine=True, activation="silu",
    attention_activation="softmax", dropout_prob=0.1, hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1, use_feature_dropout=False, use_normalized_ffn=True,
    nffn_hidden_size=256, normalize_before_ffn=True, nffn_activation_dropout_prob=0.1,
    max_positions=2048, add_token_type_embeddings=False, type_vocab_size=2,
    initializer_range=0.02, ema_delta_alpha_range=0.2, ema_beta_range=0.02,
    ema_gamma_omega_range=1.0, relative_positional_bias="rotary", classifier_dropout=None,
    use_cache=True, add_lm_hidden_dense_layer=True,
    # PretrainedConfig fields whose MegaConfig defaults differ from PretrainedConfig's
    pad_token_id=1, bos_token_id=0, eos_token_id=2,
)
# PretrainedConfig defaults of the generic fields that decide the model
GENERIC_DEFAULTS: Dict[str, Any] = dict(
    architectures=None, model_type=None, is_decoder=False, add_cross_attention=False,
    is_encoder_decoder=False, tie_word_embeddings=True, pruned_heads={}, problem_type=None,
    id2label=None, label2id=None, num_labels=None,
)
# fields that change nothing the converted model computes: field -> why
IGNORED_FIELDS: Dict[str, str] = {
    **{name: "initialisation only" for name in (
        "initializer_range", "ema_delta_alpha_range", "ema_beta_range", "ema_gamma_omega_range")},
    "num_attention_heads": "fixed at 1 by MegaConfig, unused",
    "use_cache": "the port's incremental-decoding switch (see the note on truncation)",
    "torch_dtype": "the weights are converted to float32",
    "transformers_version": "the mapping is that of 4.40.2's port",
    "_name_or_path": "bookkeeping",
    "tokenizer_class": "bookkeeping", "finetuning_task": "bookkeeping", "prefix": "bookkeeping",
    "task_specific_params": "bookkeeping", "chunk_size_feed_forward": "unused by the Mega port",
    "cross_attention_hidden_size": "cross-attention only (refused)",
    "tie_encoder_decoder": "encoder-decoder models only (refused)",
    "decoder_start_token_id": "encoder-decoder generation only", "sep_token_id": "tokenizer only",
    **{name: "output format only" for name in (
        "output_attentions", "output_hidden_states", "return_dict", "torchscript",
        "use_bfloat16", "tf_legacy_loss")},
    **{name: "generation settings" for name in (
        "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
        "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
        "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
        "output_scores", "return_dict_in_generate", "forced_bos_token_id",
        "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
        "suppress_tokens", "begin_suppress_tokens")},
}

_OUR_ACTIVATIONS = ("silu", "relu", "linear", "gelu", "gelu_accurate")
_OUR_ATTENTION_ACTIVATIONS = ("softmax", "laplace", "relu2")
_OUR_NORMS = ("layernorm", "scalenorm", "batchnorm", "syncbatchnorm")


# ====================================================================== config.json
class _Config:
    """config.json's fields with 4.40.2's defaults; every read is checked and recorded, and
    errors name the file and the field."""

    def __init__(self, raw: Dict[str, Any], path: str):
        self.raw, self.path, self.read = raw, path, set()

    def __getitem__(self, name: str) -> Any:
        self.read.add(name)
        if name in self.raw:
            return self.raw[name]
        return MEGA_CONFIG_DEFAULTS[name] if name in MEGA_CONFIG_DEFAULTS else GENERIC_DEFAULTS[name]

    def refuse(self, name: str, why: str) -> None:
        raise DataError(f"{self.path}: {name}={self[name]!r} cannot be converted: {why}")

    def flag(self, name: str) -> bool:
        value = self[name]
        if not isinstance(value, bool):
            self.refuse(name, "must be true or false")
        return value

    def positive(self, name: str) -> int:
        value = self[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.refuse(name, "must be a positive integer")
        return value

    def probability(self, name: str) -> float:
        value = self[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            self.refuse(name, "must be a probability in [0, 1)")
        return float(value)

    def choice(self, name: str, allowed: Sequence[str], why: str = "") -> str:
        value = self[name]
        if value not in allowed:
            self.refuse(name, why or f"our models offer {list(allowed)}")
        return value


@dataclass
class _Layout:
    """What a port class's state dict holds and where it goes in ours."""

    architecture: str
    kind: str  # masked_lm, classification, lm, encoder
    side: str  # encoder, decoder
    prefix: str  # "mega." or ""
    num_layers: int
    token_types: bool
    head: Optional[str]  # mlm, clm, classifier, pooler, None
    dense: bool  # the hidden dense + tanh layer of the LM heads
    tied: bool  # the LM head's weight is the embedding
    positions_window: Optional[int] = None  # W of the simple bias (None: rotary)
    hf_max_positions: int = 0
    head_name: str = CLASSIFICATION_HEAD  # our classification head of the classifier


def read_hf_config(folder: str) -> Dict[str, Any]:
    """config.json of a ``save_pretrained`` folder as a dict (DataError / MissingDataError
    naming the folder or file)."""
    if not os.path.isdir(folder):
        raise MissingDataError(f"INPUT {folder} is not a folder (expected a Hugging Face save_pretrained "
                               f"folder with {CONFIG_NAME} and the weights)")
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise MissingDataError(f"INPUT {folder} has no {CONFIG_NAME}: not a Hugging Face save_pretrained folder")
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not a JSON file: {error}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path} holds a JSON {type(raw).__name__}, not an object of config fields")
    return raw


def _architecture(config: _Config) -> str:
    if config["model_type"] != "mega":
        config.refuse("model_type", "not a Mega model (expected 'mega')")
    architectures = config["architectures"]
    if not isinstance(architectures, list) or len(architectures) != 1:
        raise DataError(f"{config.path}: architectures={architectures!r} must name exactly one model class, "
                        f"one of {list(ARCHITECTURES)}")
    if architectures[0] not in ARCHITECTURES:
        raise DataError(f"{config.path}: architectures={architectures!r}: {architectures[0]} is not converted; "
                        f"convertible classes: {list(ARCHITECTURES)}")
    return architectures[0]


def _layout(config: _Config, architecture: str, has_pooler: bool) -> _Layout:
    """The family and head from the class and is_decoder / bidirectional."""
    decoder, bidirectional = config.flag("is_decoder"), config.flag("bidirectional")
    if architecture == "MegaModel":
        kind = "lm" if decoder else "encoder"
    else:
        kind = {"MegaForMaskedLM": "masked_lm", "MegaForSequenceClassification": "classification",
                "MegaForCausalLM": "lm"}[architecture]
    if kind == "lm":
        if not decoder:
            config.refuse("is_decoder", f"{architecture} without is_decoder has no causal mask (its attention "
                          "sees later tokens), which a language model cannot compute")
        if bidirectional:
            config.refuse("bidirectional", "a decoder's moving average must be unidirectional "
                          "(bidirectional=true sees later tokens)")
    else:
        if decoder:
            config.refuse("is_decoder", f"{architecture} with causal attention is not converted "
                          "(mega_encoder attends to the whole sequence)")
        if not bidirectional:
            config.refuse("bidirectional", "mega_encoder's moving average runs in both directions")
    prefix = "" if architecture == "MegaModel" else "mega."
    head = {"masked_lm": "mlm", "classification": "classifier", "encoder": "pooler" if has_pooler else None,
            "lm": "clm" if architecture == "MegaForCausalLM" else None}[kind]
    token_types = config.flag("add_token_type_embeddings")
    if token_types and kind == "lm":
        config.refuse("add_token_type_embeddings", "mega_lm has no token-type embeddings")
    if token_types:
        config.positive("type_vocab_size")
    with_dense = head in ("mlm", "clm") and config.flag("add_lm_hidden_dense_layer")
    tied = head in ("mlm", "clm") and config.flag("tie_word_embeddings")
    return _Layout(architecture, kind, "decoder" if kind == "lm" else "encoder", prefix,
                   config.positive("num_hidden_layers"), token_types, head, with_dense, tied)


def _refuse_generic(config: _Config) -> None:
    for name in ("add_cross_attention", "is_encoder_decoder"):
        if config.flag(name):
            config.refuse(name, "cross-attention and encoder-decoder models are not converted")
    if config["pruned_heads"]:
        config.refuse("pruned_heads", "Mega has no attention heads to prune")
    for name, fairseq_id, symbol in (("pad_token_id", 1, "<pad>"), ("bos_token_id", 0, "<s>"),
                                     ("eos_token_id", 2, "</s>")):
        if config[name] != fairseq_id:
            config.refuse(name, f"fairseq's {symbol} is index {fairseq_id}; a model with its {name[:3]} "
                          f"token elsewhere is not converted (rows are not permuted)")


def _positions(config: _Config, layout: _Layout) -> int:
    """Our --max-{source,target}-positions; records the simple bias window."""
    max_positions = config.positive("max_positions")
    layout.hf_max_positions = max_positions
    chunk_size, use_chunking = config["chunk_size"], config.flag("use_chunking")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        config.refuse("chunk_size", "must be an integer (-1: no chunking)")
    if use_chunking and chunk_size <= 0:
        config.refuse("chunk_size", "use_chunking=true needs a positive chunk_size")
    if config["relative_positional_bias"] != "simple":
        return max_positions
    if chunk_size == 0:
        config.refuse("chunk_size", "the port's simple relative bias covers chunk_size positions when "
                      "chunk_size >= 0: with 0 it accepts no input")
    window = chunk_size if chunk_size > 0 else max_positions
    if window > max_positions:
        config.refuse("chunk_size", f"the port reads its simple bias table (2 max_positions - 1 = "
                      f"{2 * max_positions - 1} entries) around entry chunk_size - 1, past its end for "
                      f"inputs longer than {2 * max_positions - chunk_size}")
    layout.positions_window = window
    return max_positions if use_chunking else window


def _common_options(config: _Config) -> Dict[str, Any]:
    """The options every Mega model shares, from config.json."""
    norm = config.choice("normalization_type", _OUR_NORMS, "the port's MegaRMSNorm does not normalise "
                         "(it returns x * weight), a function no model should reproduce"
                         if config["normalization_type"] == "rmsnorm" else "")
    if not config.flag("use_normalized_ffn"):
        config.refuse("use_normalized_ffn", "our Mega blocks always end with the normalized feed-forward layer")
    if config.flag("normalize_before_mega") != config.flag("normalize_before_ffn"):
        config.refuse("normalize_before_ffn", f"differs from normalize_before_mega="
                      f"{config['normalize_before_mega']}; our blocks are pre-norm or post-norm throughout")
    truncation = config["truncation"]
    if truncation is not None and (isinstance(truncation, bool) or not isinstance(truncation, int)
                                   or truncation <= 0):
        config.refuse("truncation", "must be a positive integer or null")
    bias = config.choice("relative_positional_bias", ("simple", "rotary"))
    hidden, z = config.positive("hidden_size"), config.positive("shared_representation_size")
    if bias == "rotary" and (hidden % 2 or z % 2):
        config.refuse("hidden_size" if hidden % 2 else "shared_representation_size",
                      "the rotary bias needs an even hidden_size and shared_representation_size")
    return dict(
        dropout=config.probability("dropout_prob"),
        attention_dropout=config.probability("attention_probs_dropout_prob"),
        hidden_dropout=config.probability("hidden_dropout_prob"),
        activation_dropout=config.probability("nffn_activation_dropout_prob"),
        feature_dropout=config.flag("use_feature_dropout"),
        activation_fn=config.choice("activation", _OUR_ACTIVATIONS),
        attention_activation_fn=config.choice("attention_activation", _OUR_ATTENTION_ACTIVATIONS),
        normalization_type=norm,
        normalize_before=config["normalize_before_mega"],
        no_affine_norm=not config.flag("norm_affine"),
        no_affine_final_norm=False,
        no_final_norm=True,
        rel_pos_bias=bias,
        truncation_length=truncation,
        no_scale_embedding=True,
        normalize_embedding=False,
    )


def _side_sizes(config: _Config, side: str) -> Dict[str, Any]:
    sizes = dict(embed_dim="hidden_size", hidden_dim="intermediate_size", z_dim="shared_representation_size",
                 n_dim="ema_projection_size", ffn_embed_dim="nffn_hidden_size", layers="num_hidden_layers")
    options = {f"{side}_{ours}": config.positive(theirs) for ours, theirs in sizes.items()}
    options[f"{side}_chunk_size"] = config["chunk_size"] if config["use_chunking"] else -1
    return options


def _labels(config: _Config) -> Tuple[List[str], bool]:
    """(label names by id, regression) of a sequence classifier."""
    id2label, num_labels = config["id2label"], config["num_labels"]  # label2id: id2label's inverse
    if id2label is None:
        count = 2 if num_labels is None else config.positive("num_labels")
        names = [f"LABEL_{i}" for i in range(count)]
    else:
        if not isinstance(id2label, dict) or not id2label:
            config.refuse("id2label", "must map the label ids 0..n-1 to names")
        try:
            by_id = {int(key): value for key, value in id2label.items()}
        except ValueError:
            config.refuse("id2label", "its keys must be the label ids 0..n-1")
        if sorted(by_id) != list(range(len(by_id))):
            config.refuse("id2label", f"its ids must be 0..{len(by_id) - 1}")
        names = [str(by_id[i]) for i in range(len(by_id))]
        if num_labels is not None and num_labels != len(names):
            config.refuse("num_labels", f"differs from the {len(names)} labels of id2label")
    bad = [name for name in names if not name or "\n" in name or "\r" in name or name in FAIRSEQ_SPECIALS]
    if bad or len(set(names)) != len(names):
        config.refuse("id2label", "label names must be unique, non-empty, single-line and not one of "
                      f"fairseq's special symbols {list(FAIRSEQ_SPECIALS)}")
    problem = config["problem_type"]
    if problem not in (None, "regression", "single_label_classification", "multi_label_classification"):
        config.refuse("problem_type", "must be regression, single_label_classification or "
                      "multi_label_classification")
    regression = problem == "regression" or (problem is None and len(names) == 1)
    return names, regression


def _ignored_notes(config: _Config) -> List[str]:
    unknown = sorted(set(config.raw) - config.read - set(IGNORED_FIELDS) - set(MEGA_CONFIG_DEFAULTS)
                     - set(GENERIC_DEFAULTS))
    notes = []
    if unknown:
        notes.append(f"{config.path}: fields unknown to transformers {TRANSFORMERS_VERSION}'s MegaConfig, "
                     f"which its port ignores, are ignored: {unknown}")
    version = config.raw.get("transformers_version")
    if version is not None and version != TRANSFORMERS_VERSION:
        notes.append(f"the folder was saved by transformers {version}; it is converted as "
                     f"{TRANSFORMERS_VERSION}'s port computes it")
    return notes


# ====================================================================== weights
def _load_safetensors(path: str) -> Dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise MissingDataError(f"{path} is a safetensors file, and the safetensors package is not installed: "
                               'pip install safetensors (or mega-fairseq\'s "hf" extra)') from None
    try:
        return load_file(path, device="cpu")
    except Exception as error:  # noqa: BLE001 - any failure means an unreadable file
        raise DataError(f"{path} is not a readable safetensors file: {error}") from None


def _load_bin(path: str) -> Dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means an unreadable file
        raise DataError(f"{path} is not a PyTorch state dict readable with torch.load(weights_only=True): "
                        f"{error}") from None
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise DataError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def read_hf_weights(folder: str) -> Tuple[Dict[str, Tensor], str]:
    """(state dict, file name) of a save_pretrained folder: ``model.safetensors`` first (as
    ``from_pretrained``), else ``pytorch_model.bin``, either possibly sharded with its
    ``.index.json``."""
    for name, load in ((SAFETENSORS_NAME, _load_safetensors), (BIN_NAME, _load_bin)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return load(path), name
        index = path + ".index.json"
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as handle:
                    shards = sorted(set(json.load(handle)["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                raise DataError(f"{index} is not a weight index (a JSON object with a weight_map): "
                                f"{error}") from None
            state: Dict[str, Tensor] = {}
            for shard in shards:
                shard_path = os.path.join(folder, shard)
                if not os.path.isfile(shard_path):
                    raise MissingDataError(f"{index} names the shard {shard}, which {folder} lacks")
                state.update(load(shard_path))
            return state, os.path.basename(index)
    raise MissingDataError(f"INPUT {folder} has no weights: expected {SAFETENSORS_NAME} or {BIN_NAME} "
                           "(or a sharded one with its .index.json)")


# ====================================================================== vocabulary
def _json_file(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not a JSON file: {error}") from None


def _token_ids(path: str, mapping: Any) -> Dict[int, str]:
    """{id: token} of a {token: id} mapping, checked."""
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: the vocabulary must map tokens to ids")
    by_id: Dict[int, str] = {}
    for token, index in mapping.items():
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise DataError(f"{path}: token {token!r} has id {index!r}, not a non-negative integer")
        if index in by_id and by_id[index] != token:
            raise DataError(f"{path}: id {index} belongs to both {by_id[index]!r} and {token!r}")
        by_id[index] = token
    return by_id


def _tokenizer_json_vocabulary(path: str) -> Dict[int, str]:
    data = _json_file(path)
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...] in id order
        if not all(isinstance(entry, list) and entry and isinstance(entry[0], str) for entry in vocab):
            raise DataError(f"{path}: model.vocab must list [piece, score] pairs")
        by_id = {index: entry[0] for index, entry in enumerate(vocab)}
    elif isinstance(vocab, dict):
        by_id = _token_ids(path, vocab)
    else:
        raise DataError(f"{path} has no model.vocab (a tokenizers JSON file holds one)")
    for added in data.get("added_tokens") or []:
        if not isinstance(added, dict) or not isinstance(added.get("content"), str):
            raise DataError(f"{path}: added_tokens entries must have a content string")
        by_id.update(_token_ids(path, {added["content"]: added.get("id")}))
    return by_id


def _vocab_json_vocabulary(path: str) -> Dict[int, str]:
    by_id = _token_ids(path, _json_file(path))
    added = os.path.join(os.path.dirname(path), "added_tokens.json")
    if os.path.isfile(added):
        for index, token in _token_ids(added, _json_file(added)).items():
            if by_id.get(index, token) != token:
                raise DataError(f"{added}: id {index} is {token!r}, but {path} gives it to {by_id[index]!r}")
            by_id[index] = token
    return by_id


def _vocab_txt_vocabulary(path: str) -> Dict[int, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return {index: line.rstrip("\n") for index, line in enumerate(handle)}
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not a readable text file: {error}") from None


_VOCABULARY_FILES = (("tokenizer.json", _tokenizer_json_vocabulary), (VOCAB_JSON, _vocab_json_vocabulary),
                     ("vocab.txt", _vocab_txt_vocabulary))


def _declared_special(folder: str, name: str) -> Optional[str]:
    """The tokenizer's ``name`` token (mask_token, unk_token) from special_tokens_map.json
    or tokenizer_config.json, if either declares it."""
    for file_name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(folder, file_name)
        if not os.path.isfile(path):
            continue
        data = _json_file(path)
        value = data.get(name) if isinstance(data, dict) else None
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


def read_vocabulary(folder: str, size: int, notes: List[str]) -> Tuple[List[str], Optional[str]]:
    """(symbols by token id, the file they came from, None for placeholders) of ``size``
    tokens, named as the fairseq dictionary will name them (see the module docstring)."""
    for file_name, read in _VOCABULARY_FILES:
        path = os.path.join(folder, file_name)
        if os.path.isfile(path):
            by_id = read(path)
            break
    else:
        notes.append(f"{folder} has no tokenizer vocabulary (tokenizer.json, vocab.json, vocab.txt): the "
                     f"dictionary's symbols are placeholders <hf_token_i>; tokenize with the model's own "
                     "tokenizer")
        return list(FAIRSEQ_SPECIALS[:min(size, 4)]) + [f"<hf_token_{i}>" for i in range(4, size)], None
    if len(by_id) != size or sorted(by_id) != list(range(size)):
        missing = sorted(set(range(len(by_id))) - set(by_id))[:5]
        raise DataError(f"{path} has {len(by_id)} tokens but the model's embedding has {size} rows"
                        if len(by_id) != size else f"{path}: token ids must be 0..{size - 1}; missing {missing}")
    symbols = [by_id[i] for i in range(size)]
    renamed = [f"{i}: {symbols[i]!r} -> {FAIRSEQ_SPECIALS[i]!r}" for i in range(min(size, 4))
               if symbols[i] != FAIRSEQ_SPECIALS[i]]
    symbols[:4] = FAIRSEQ_SPECIALS[:min(size, 4)]
    mask = _declared_special(folder, "mask_token")
    if MASK_SYMBOL not in symbols and mask in symbols:
        renamed.append(f"{symbols.index(mask)}: {mask!r} -> {MASK_SYMBOL!r}")
        symbols[symbols.index(mask)] = MASK_SYMBOL
    if renamed:
        notes.append(f"tokens renamed to fairseq's special symbols (id: token -> symbol): {', '.join(renamed)}")
    unk = _declared_special(folder, "unk_token")
    if unk is not None and unk in symbols[4:]:
        notes.append(f"the tokenizer's unknown token {unk!r} is id {symbols.index(unk)}; fairseq maps unknown "
                     "symbols to id 3 (<unk>)")
    seen: Dict[str, int] = {}
    for index, symbol in enumerate(symbols):
        if not isinstance(symbol, str) or "\n" in symbol or "\r" in symbol:
            raise DataError(f"{path}: token id {index} ({symbol!r}) cannot be a fairseq dictionary symbol "
                            "(dict.txt holds one symbol per line)")
        if symbol in seen:
            raise DataError(f"{path}: ids {seen[symbol]} and {index} are both the symbol {symbol!r}")
        seen[symbol] = index
    return symbols, path


def build_dictionary(symbols: Sequence[str]):
    """A fairseq ``Dictionary`` whose index i is ``symbols[i]``; ``symbols[:4]`` must be
    fairseq's ``<s> <pad> </s> <unk>``."""
    from fairseq.data import Dictionary

    if tuple(symbols[:4]) != FAIRSEQ_SPECIALS:
        raise ValueError(f"the first four symbols must be {list(FAIRSEQ_SPECIALS)}, got {list(symbols[:4])}")
    dictionary = Dictionary()
    for symbol in symbols[4:]:
        dictionary.add_symbol(symbol)
    if len(dictionary) != len(symbols):
        raise ValueError("the symbols must be unique")
    return dictionary


# ====================================================================== state dicts
def _fixed_names(layout: _Layout) -> Dict[str, str]:
    """our name -> port name of everything but the blocks."""
    p, side = layout.prefix, layout.side
    names = {f"{side}.embed_tokens.weight": p + "embedding_layer.word_embeddings.weight"}
    if layout.token_types:
        names["encoder.embed_token_types.weight"] = p + "embedding_layer.token_type_embeddings.weight"
    dense = {"mlm": "lm_head.dense.", "clm": "decoder.output_dense."}.get(layout.head)
    if dense is not None and layout.dense:
        names.update({dense + kind: "dense." + kind for kind in ("weight", "bias")})
    if layout.head == "mlm":
        names.update({"lm_head.weight": "mlm_head.weight", "lm_head.bias": "mlm_head.bias"})
    elif layout.head == "clm":
        names.update({"decoder.output_projection.weight": "lm_head.weight",
                      "decoder.output_projection.bias": "lm_head.bias"})
    elif layout.head == "classifier":
        names.update({f"classification_heads.{layout.head_name}.{part}.{kind}": f"classifier.{part}.{kind}"
                      for part in ("dense", "out_proj") for kind in ("weight", "bias")})
    elif layout.head == "pooler":
        names.update({f"classification_heads.{HF_POOLER_HEAD}.dense.{kind}": f"pooler.dense.{kind}"
                      for kind in ("weight", "bias")})
    return names


def _tied_hf_name(layout: _Layout) -> Optional[str]:
    return {"mlm": "mlm_head.weight", "clm": "lm_head.weight"}.get(layout.head) if layout.tied else None


def our_state_to_hf(our_state: Mapping[str, Tensor], layout: _Layout) -> Dict[str, Tensor]:
    """Our state dict -> the port's (``layout``'s class). Entries the port has no place for
    (dictionary fingerprints, a masked-LM head of the classification/encoder kinds, the
    pooler head's identity out_proj, a tied output weight) are left out; an output
    projection without bias gets the port's lm_head.bias as zeros. Tensors are not copied."""
    names = _fixed_names(layout)
    hf: Dict[str, Tensor] = {}
    for ours, theirs in names.items():
        if theirs == _tied_hf_name(layout):
            continue
        if ours in our_state:
            hf[theirs] = our_state[ours]
        elif ours == "decoder.output_projection.bias":
            hf[theirs] = our_state["decoder.output_projection.weight"].new_zeros(
                our_state["decoder.output_projection.weight"].size(0))
    for index in range(layout.num_layers):
        ours = f"{layout.side}.layers.{index}."
        block = {k[len(ours):]: v for k, v in our_state.items() if k.startswith(ours)}
        hf.update({f"{layout.prefix}layers.{index}.{k}": v
                   for k, v in mega_layer_state_to_hf_block_state(block).items()})
    return hf


def _dtype_buffer(name: str) -> bool:
    return name.endswith("rel_pos_bias._float_tensor")


def _check_hf_state(hf_state: Mapping[str, Tensor], expected: Mapping[str, Tensor], layout: _Layout,
                    weights: str, config_path: str) -> None:
    """The file's keys and shapes against the port state our model implies (DataError
    listing missing and unexpected keys, or naming a shape)."""
    optional = {layout.prefix + "embedding_layer.token_type_ids", _tied_hf_name(layout)}
    if layout.kind == "lm" and layout.head is None:
        optional |= {"pooler.dense.weight", "pooler.dense.bias"}  # dropped (see the notes)
    missing = sorted(k for k in expected if k not in hf_state and not _dtype_buffer(k))
    unexpected = sorted(k for k in hf_state if k not in expected and k not in optional)
    if missing or unexpected:
        parts = [f"missing keys {missing[:12]}" if missing else "", f"unexpected keys {unexpected[:12]}"
                 if unexpected else ""]
        raise DataError(f"{weights} does not hold a {layout.architecture} of {config_path}: "
                        + "; ".join(p for p in parts if p))
    tied, embedding = _tied_hf_name(layout), hf_state.get(layout.prefix + "embedding_layer.word_embeddings.weight")
    if tied in hf_state and embedding is not None and not torch.equal(hf_state[tied], embedding):
        raise DataError(f"{weights}: {tied} differs from the embeddings, but {config_path} has "
                        "tie_word_embeddings=true (one tensor for both): the port would load whichever comes "
                        "last into both; store equal tensors or set tie_word_embeddings to false")
    for key, tensor in expected.items():
        if key in hf_state and tuple(hf_state[key].shape) != tuple(tensor.shape):
            raise DataError(f"{weights}: {key} has shape {tuple(hf_state[key].shape)}, but {config_path} "
                            f"(hidden_size, intermediate_size, ..., vocab_size) needs {tuple(tensor.shape)}")


def hf_state_to_ours(hf_state: Mapping[str, Tensor], layout: _Layout,
                     model_state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """The port's state dict (keys checked) -> ours, complete: the entries the port has no
    counterpart for come from ``model_state`` (our freshly built model), the pooler head's
    out_proj is the identity with zero bias, and tied weights are the embedding."""
    inverse = {theirs: ours for ours, theirs in _fixed_names(layout).items()}
    ours: Dict[str, Tensor] = dict(model_state)
    blocks: Dict[int, Dict[str, Tensor]] = {}
    layers = layout.prefix + "layers."
    for key, value in hf_state.items():
        if key.startswith(layers):
            index, _, rest = key[len(layers):].partition(".")
            blocks.setdefault(int(index), {})[rest] = value
        elif key in inverse and key != _tied_hf_name(layout):
            ours[inverse[key]] = value
    for index, block in blocks.items():
        prefix = f"{layout.side}.layers.{index}."
        ours.update({prefix + k: v for k, v in hf_block_state_to_mega_layer_state(block).items()})
    embedding = ours[f"{layout.side}.embed_tokens.weight"]
    tied = {"mlm": "lm_head.weight", "clm": "decoder.output_projection.weight"}.get(layout.head)
    if layout.tied:
        ours[tied] = embedding
    if layout.kind in ("classification", "encoder"):
        ours["lm_head.weight"] = embedding  # the linear masked-LM head, tied
    if layout.kind == "lm" and layout.head is None:
        ours["decoder.output_projection.weight"] = embedding  # MegaModel decoder: tied
    if layout.head == "pooler":
        out_proj = f"classification_heads.{HF_POOLER_HEAD}.out_proj."
        size = embedding.size(1)
        ours[out_proj + "weight"] = torch.eye(size, dtype=embedding.dtype)
        ours[out_proj + "bias"] = embedding.new_zeros(size)
    return ours


def _slice_simple_bias(hf_state: Dict[str, Tensor], layout: _Layout, notes: List[str]) -> None:
    """Keep the 2 W - 1 entries of each simple bias table the port reads (W < max_positions)."""
    window, full = layout.positions_window, 2 * layout.hf_max_positions - 1
    if window is None or window == layout.hf_max_positions:
        return
    sliced = False
    for key, value in hf_state.items():
        if key.endswith("mega_layer.rel_pos_bias.rel_pos_bias") and tuple(value.shape) == (full,):
            hf_state[key] = value[: 2 * window - 1]
            sliced = True
    if sliced:
        notes.append(f"the simple relative bias covers {window} positions (chunk_size): the port reads "
                     f"entries 0..{2 * window - 2} of its {full}-entry tables, which are kept; the rest, "
                     "never read, is dropped")


# ====================================================================== models and tasks
def _build_task(kind: str, dictionary, folder: str, positions: int, labels: Optional[List[str]],
                regression: bool):
    """The fairseq task holding the dictionary (nothing is read from or written to
    ``folder``, recorded as the task's data folder)."""
    if kind == "lm":
        from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

        return LanguageModelingTask(LanguageModelingConfig(data=folder, tokens_per_sample=positions),
                                    dictionary, dictionary)
    if MASK_SYMBOL not in dictionary.symbols:
        raise DataError(f"INPUT {folder}: the vocabulary has no mask token, which fairseq's masked_lm and "
                        f"sentence_prediction tasks add as {MASK_SYMBOL!r} to the dictionary they load (one "
                        "row more than the embedding); put the model's tokenizer files (tokenizer.json or "
                        "vocab.json, with special_tokens_map.json naming its mask_token) into the folder")
    if kind == "classification":
        from fairseq.data import Dictionary
        from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

        label_dictionary = dictionary
        if not regression:
            label_dictionary = Dictionary()
            for name in labels:
                label_dictionary.add_symbol(name)
        # RoBERTa's convention, which fairseq's sentence_prediction data follows: <s> A </s> [</s> B </s>]
        cfg = SentencePredictionConfig(data=folder, num_classes=len(labels), init_token=dictionary.bos(),
                                       separator_token=dictionary.eos(), max_positions=positions,
                                       regression_target=regression, classification_head_name=CLASSIFICATION_HEAD)
        return SentencePredictionTask(cfg, dictionary, label_dictionary)
    from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask

    return MaskedLMTask(MaskedLMConfig(data=folder, tokens_per_sample=positions), dictionary)


def _our_config(config: _Config, layout: _Layout, positions: int):
    common = _common_options(config)
    if layout.kind == "lm":
        from mega_fairseq.models.mega_lm import MegaLanguageModelConfig

        return MegaLanguageModelConfig(
            **common, **_side_sizes(config, "decoder"),
            share_decoder_input_output_embed=layout.tied or layout.head is None,
            max_target_positions=positions, tokens_per_sample=positions,
            lm_head_type="dense_tanh" if layout.dense else "linear",
            output_projection_bias=layout.head == "clm",
        )
    from mega_fairseq.models.mega_encoder_model import MegaEncoderModelConfig

    classifier_dropout = config["classifier_dropout"]
    return MegaEncoderModelConfig(
        **common, **_side_sizes(config, "encoder"),
        max_source_positions=positions,
        type_vocab_size=config["type_vocab_size"] if layout.token_types else 0,
        sentence_rep="cls",
        untie_lm_head=layout.head == "mlm" and not layout.tied,
        lm_head_type="dense_tanh" if layout.dense else "linear",
        pooler_activation_fn="tanh",
        pooler_dropout=(config.probability("hidden_dropout_prob") if classifier_dropout is None
                        else config.probability("classifier_dropout")),
        load_checkpoint_heads=True,  # the pooler head of MegaModel travels with the checkpoint
    )


def _conversion_notes(config: _Config, layout: _Layout, hf_state: Mapping[str, Tensor],
                      dtypes: List[str]) -> List[str]:
    notes = [f"{layout.architecture} -> {'mega_lm' if layout.kind == 'lm' else 'mega_encoder'} ({layout.kind}); "
             "outputs agree with the port given attention_mask = (input_ids != 1), at real positions"]
    if layout.head == "pooler":
        notes.append(f"the pooler (dense + tanh of the first token) is the classification head "
                     f"{HF_POOLER_HEAD!r} with an identity out_proj: its output is the port's pooler_output")
    if layout.kind == "lm" and layout.head is None and any(k.startswith("pooler.") for k in hf_state):
        notes.append("the decoder MegaModel's pooler (dense + tanh over the first token) is dropped: "
                     "mega_lm has no sentence heads")
    if layout.kind == "lm" and layout.head is None:
        notes.append("MegaModel has no LM head: the output projection is tied to the embeddings")
    if layout.kind in ("classification", "encoder"):
        notes.append("the masked-LM head, which the port's class lacks, is a projection tied to the "
                     "embeddings with zero bias (--lm-head-type linear)")
    if layout.kind == "classification" and config["problem_type"] == "multi_label_classification":
        notes.append("problem_type=multi_label_classification: the logits are the port's, but fairseq's "
                     "sentence_prediction task trains and scores single-label classification")
    if dtypes:
        notes.append(f"weights stored as {sorted(set(dtypes))} are converted to float32")
    if layout.kind == "lm" and config["truncation"] is not None:
        notes.append(f"the port's decoder forward with use_cache=true (its default, and in generation) runs "
                     f"the recurrent EMA, which ignores truncation={config['truncation']}; ours truncates "
                     "always, as the port's forward with use_cache=false or labels (training) does")
    if layout.kind == "lm" and (config["attention_activation"] != "softmax" or config["use_chunking"]):
        notes.append("the port's incremental decoding is wrong for laplace/relu2 attention and for chunked "
                     "decoders; ours decodes step by step what its full forward computes")
    if config["use_chunking"]:
        notes.append("the port needs inputs no longer than chunk_size or a multiple of it; ours pads the "
                     "last chunk and accepts any length")
    if config["normalization_type"] == "layernorm" and not config["norm_affine"]:
        notes.append("non-affine layer norms: the port's MegaModel cannot be built with them (its weight "
                     "initialiser fails); converted as config.json describes them")
    notes.append("training differs from the port's (eval outputs are equal): ours drops embeddings with "
                 "--dropout, drops attn * r instead of the values with --hidden-dropout, and leaves "
                 "padding out of batch-norm statistics")
    return notes


def convert_hf_folder(path: str) -> ConvertedModel:
    """Our model (eval mode, float32) computing what the port's model in the
    ``save_pretrained`` folder ``path`` computes; see the module docstring for the mapping.

    Bad input raises :class:`~mega_fairseq.errors.DataError` or
    :class:`~mega_fairseq.errors.MissingDataError` naming the file and the field or key."""
    raw = read_hf_config(path)
    config = _Config(raw, os.path.join(path, CONFIG_NAME))
    architecture = _architecture(config)
    _refuse_generic(config)
    hf_state, weights_name = read_hf_weights(path)
    weights = os.path.join(path, weights_name)
    dtypes = [str(v.dtype) for v in hf_state.values() if v.is_floating_point() and v.dtype != torch.float32]
    hf_state = {k: (v.float() if v.is_floating_point() else v) for k, v in hf_state.items()}
    layout = _layout(config, architecture, has_pooler=any(k.startswith("pooler.") for k in hf_state))
    positions = _positions(config, layout)
    labels, regression = _labels(config) if layout.kind == "classification" else (None, False)
    cfg = _our_config(config, layout, positions)

    vocab_size = config.positive("vocab_size")
    embedding = hf_state.get(layout.prefix + "embedding_layer.word_embeddings.weight")
    if embedding is not None and embedding.dim() == 2 and embedding.size(0) != vocab_size:
        raise DataError(f"{weights}: the embedding has {embedding.size(0)} rows but {config.path} has "
                        f"vocab_size={vocab_size}")
    notes: List[str] = []
    symbols, _ = read_vocabulary(path, vocab_size, notes)
    dictionary = build_dictionary(symbols)
    task = _build_task(layout.kind, dictionary, os.path.abspath(path), positions, labels, regression)
    model = _build_model(layout, cfg, task, len(labels) if labels else 0)
    _slice_simple_bias(hf_state, layout, notes)
    model_state = model.state_dict()
    _check_hf_state(hf_state, our_state_to_hf(model_state, layout), layout, weights, config.path)
    remaining = _refusals(_stack(model).settings.layer, allow_known_defects=False)
    if remaining:  # excluded by the field checks above; kept as the mapping's own guard
        raise DataError(f"{config.path}: the port computes this configuration wrongly: " + "; ".join(remaining))
    model.load_state_dict(hf_state_to_ours(hf_state, layout, model_state), strict=True)
    notes = _conversion_notes(config, layout, hf_state, dtypes) + notes + _ignored_notes(config)
    return ConvertedModel(kind=layout.kind, model=model.eval(), cfg=cfg, task=task, notes=notes)


def _build_model(layout: _Layout, cfg, task, num_labels: int):
    if layout.kind == "lm":
        from mega_fairseq.models.mega_lm import MegaLanguageModel

        return MegaLanguageModel.build_model(cfg, task)
    from mega_fairseq.models.mega_encoder_model import MegaEncoderModel

    model = MegaEncoderModel.build_model(cfg, task)
    if layout.kind == "classification":
        model.register_classification_head(CLASSIFICATION_HEAD, num_classes=num_labels)
    if layout.head == "pooler":
        model.register_classification_head(HF_POOLER_HEAD, num_classes=cfg.encoder_embed_dim)
    return model


def _stack(model):
    return model.decoder if hasattr(model, "decoder") else model.encoder


# ====================================================================== export
def _family(model) -> str:
    from mega_fairseq.models.mega_encoder_model import MegaEncoderModel
    from mega_fairseq.models.mega_lm import MegaLanguageModel

    if isinstance(model, MegaLanguageModel):
        return "lm"
    if isinstance(model, MegaEncoderModel):
        return "encoder"
    raise OptionError(f"only mega_encoder and mega_lm models are exported to the Hugging Face port, got "
                      f"{type(model).__name__}")


def _sentence_heads(model) -> List[str]:
    return sorted(name for name in model.classification_heads if name != HF_POOLER_HEAD)


def _default_architecture(model, kind: Optional[str]) -> str:
    if _family(model) == "lm":
        return "MegaForCausalLM"
    by_kind = {"masked_lm": "MegaForMaskedLM", "classification": "MegaForSequenceClassification",
               "encoder": "MegaModel"}
    if kind in by_kind:
        return by_kind[kind]
    if _sentence_heads(model):
        return "MegaForSequenceClassification"
    return "MegaModel" if HF_POOLER_HEAD in model.classification_heads else "MegaForMaskedLM"


def _export_layout(model, architecture: str, head_name: Optional[str], reasons: List[str]) -> _Layout:
    """The port layout of ``model`` as ``architecture``; what the port cannot compute is
    appended to ``reasons``."""
    import torch.nn as nn

    family = _family(model)
    stack = _stack(model)
    settings = stack.settings
    if architecture not in ARCHITECTURES:
        raise OptionError(f"architecture must be one of {list(ARCHITECTURES)}, got {architecture!r}")
    if (family == "lm") != (architecture == "MegaForCausalLM"):
        raise OptionError(f"a {'mega_lm' if family == 'lm' else 'mega_encoder'} model is not exported as "
                          f"{architecture} (mega_lm -> MegaForCausalLM; mega_encoder -> MegaForMaskedLM, "
                          "MegaForSequenceClassification or MegaModel)")
    reasons.extend(_refusals(settings.layer, allow_known_defects=False))
    if settings.scale_embedding:
        reasons.append("the embeddings are scaled by sqrt(embed dim) (no --no-scale-embedding); the port "
                       "does not scale them")
    if settings.normalize_embedding:
        reasons.append("--normalize-embedding: the port has no embedding norm")
    if stack.final_norm is not None:
        reasons.append("a norm follows the last block (pre-norm without --no-final-norm); the port's models "
                       "have none")
    if settings.layer.norm_type == "layernorm" and not settings.layer.norm_affine:
        reasons.append("non-affine layer norms (--no-affine-norm): the port's MegaModel cannot be built with "
                       "them (its weight initialiser zeroes LayerNorm.bias, which is then None)")
    if type(stack.embed_tokens) is not nn.Embedding:
        reasons.append(f"the token embedding is a {type(stack.embed_tokens).__name__} (adaptive input or a "
                       "replaced embedding); the port has an nn.Embedding")
    token_types = family == "encoder" and model.encoder.embed_token_types is not None
    layout = _Layout(architecture, "", "decoder" if family == "lm" else "encoder",
                     "" if architecture == "MegaModel" else "mega.", settings.num_layers, token_types,
                     None, False, False)
    if architecture == "MegaForCausalLM":
        decoder = model.decoder
        if decoder.adaptive_softmax is not None:
            reasons.append("an adaptive softmax; the port's lm_head is one Linear layer")
        else:
            layout.tied = decoder.output_projection.weight is decoder.embed_tokens.weight
        layout.kind, layout.head, layout.dense = "lm", "clm", decoder.output_dense is not None
    elif architecture == "MegaForMaskedLM":
        head = model.lm_head
        if head.head_type == "dense_norm":
            reasons.append("the masked-LM head has a LayerNorm (--lm-head-type dense_norm); the port's is "
                           "[dense -> tanh] -> projection (--lm-head-type dense_tanh or linear)")
        layout.kind, layout.head, layout.dense = "masked_lm", "mlm", head.head_type == "dense_tanh"
        layout.tied = head.weight is model.encoder.embed_tokens.weight
    elif architecture == "MegaForSequenceClassification":
        layout.kind, layout.head = "classification", "classifier"
        heads = _sentence_heads(model)
        name = head_name or (heads[0] if len(heads) == 1 else None)
        if name is None or name not in model.classification_heads:
            raise OptionError(f"choose the classification head to export (head_name): the model has "
                              f"{heads or 'none'}")
        head = model.classification_heads[name]
        embed_dim = model.embed_dim
        if (head.input_multiplier, head.dense.out_features) != (1, embed_dim):
            reasons.append(f"classification head {name!r} is not the port's (one sentence, inner dim = "
                           f"{embed_dim}): input_multiplier {head.input_multiplier}, inner dim "
                           f"{head.dense.out_features}")
        if model.sentence_rep != "cls" or model.pooler_activation_fn != "tanh":
            reasons.append(f"--sentence-rep {model.sentence_rep} --pooler-activation-fn "
                           f"{model.pooler_activation_fn}: the port's classifier pools the first token with tanh")
        layout.head_name = name
    else:  # MegaModel
        layout.kind = "encoder"
        if HF_POOLER_HEAD not in model.classification_heads:
            reasons.append(f"MegaModel has a pooler, and the model has no {HF_POOLER_HEAD!r} head holding it")
        else:
            pooler = model.classification_heads[HF_POOLER_HEAD]
            identity = torch.eye(model.embed_dim, dtype=pooler.out_proj.weight.dtype)
            if (pooler.out_proj.weight.shape != identity.shape or not torch.equal(pooler.out_proj.weight, identity)
                    or bool(pooler.out_proj.bias.detach().abs().max() != 0) or model.pooler_activation_fn != "tanh"):
                reasons.append(f"head {HF_POOLER_HEAD!r} is not the port's pooler (dense -> tanh, identity "
                               "out_proj with zero bias)")
            layout.head = "pooler"
    return layout


def _export_notes(model, layout: _Layout) -> List[str]:
    notes = []
    if layout.side == "encoder":
        left_out = [name for name in model.classification_heads
                    if not (layout.head == "pooler" and name == HF_POOLER_HEAD)
                    and not (layout.head == "classifier" and name == layout.head_name)]
        if left_out:
            notes.append(f"classification heads not exported: {left_out}")
        if len(model.token_heads):
            notes.append(f"token heads not exported: {sorted(model.token_heads)}")
        if layout.head != "mlm":
            notes.append("the masked-LM head is not exported: the port's class has none")
    elif model.decoder.output_projection is not None and model.decoder.output_projection.bias is None:
        notes.append("the output projection has no bias; the port's lm_head.bias is written as zeros")
    return notes


def _hf_config(model, layout: _Layout, dictionary, labels: Optional[List[str]], regression: bool) -> Dict:
    stack = _stack(model)
    rows = stack.embed_tokens.weight.size(0)
    kwargs = hf_config_kwargs(stack.settings.layer, vocab_size=rows)
    config = dict(MEGA_CONFIG_DEFAULTS)
    config.update(kwargs)
    config.update(
        architectures=[layout.architecture], model_type="mega", transformers_version=TRANSFORMERS_VERSION,
        torch_dtype="float32", num_hidden_layers=stack.settings.num_layers,
        pad_token_id=dictionary.pad(), bos_token_id=dictionary.bos(), eos_token_id=dictionary.eos(),
        add_token_type_embeddings=layout.token_types,
        tie_word_embeddings=layout.tied, add_lm_hidden_dense_layer=layout.dense,
    )
    if layout.token_types:
        config["type_vocab_size"] = model.encoder.embed_token_types.num_embeddings
    if layout.side == "encoder":
        config["classifier_dropout"] = float(model.pooler_dropout)
    if layout.head == "classifier":
        config["id2label"] = {str(i): name for i, name in enumerate(labels)}
        config["label2id"] = {name: i for i, name in enumerate(labels)}
        if regression:
            config["problem_type"] = "regression"
    return config


def _labels_for_export(model, head_name: str, task, label_dictionary) -> Tuple[List[str], bool]:
    count = model.classification_heads[head_name].out_proj.out_features
    regression = bool(getattr(getattr(task, "cfg", None), "regression_target", False)) if task else False
    labels = label_dictionary if label_dictionary is not None else getattr(task, "label_dictionary", None)
    if regression or labels is None or labels is getattr(task, "source_dictionary", None):
        return [f"LABEL_{i}" for i in range(count)], regression
    names = list(labels.symbols[labels.nspecial: labels.nspecial + count])
    if len(names) != count:
        raise OptionError(f"the label dictionary has {len(names)} labels, the head {head_name!r} {count} classes")
    return names, regression


def _write_weights(state: Dict[str, Tensor], folder: str, safe_serialization: Optional[bool]) -> str:
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    if safe_serialization is None:
        safe_serialization = importlib.util.find_spec("safetensors") is not None
        if not safe_serialization:
            logger.warning("safetensors is not installed: the weights are written as %s", BIN_NAME)
    if safe_serialization:
        from safetensors.torch import save_file

        save_file(tensors, os.path.join(folder, SAFETENSORS_NAME), metadata={"format": "pt"})
        return SAFETENSORS_NAME
    torch.save(tensors, os.path.join(folder, BIN_NAME))
    return BIN_NAME


def export_to_hf(converted_or_model, dictionary=None, out_dir: str = None, architecture: Optional[str] = None,
                 head_name: Optional[str] = None, label_dictionary=None,
                 safe_serialization: Optional[bool] = None) -> str:
    """Write our model as a ``save_pretrained`` folder of the port; returns ``out_dir``.

    ``converted_or_model``: a :class:`ConvertedModel` (its kind picks the class, its task
    gives the dictionary and the labels) or a ``mega_encoder`` / ``mega_lm`` model.
    ``dictionary``: the model's fairseq dictionary (default: the converted task's source
    dictionary); written as ``vocab.json`` (symbol -> id; not a tokenizer: the model's
    tokenizer files are not part of the checkpoint). ``architecture``: the port class
    (default: MegaForCausalLM for mega_lm; for mega_encoder MegaForSequenceClassification
    with one sentence head, MegaModel with the 'hf_pooler' head, else MegaForMaskedLM);
    ``head_name``: the classification head to export; ``label_dictionary``: its label
    names (default: the task's). ``safe_serialization``: model.safetensors (True) or
    pytorch_model.bin (False); default safetensors when installed.

    Configurations the port cannot compute, or computes wrongly, raise ``OptionError``
    listing every reason; ``out_dir`` must be new or empty and appears only complete."""
    if out_dir is None:
        raise OptionError("export_to_hf needs out_dir, the folder to write")
    converted = converted_or_model if isinstance(converted_or_model, ConvertedModel) else None
    model = converted.model if converted else converted_or_model
    task = converted.task if converted else None
    if dictionary is None:
        dictionary = getattr(task, "source_dictionary", None)
        if dictionary is None:
            raise OptionError("export_to_hf needs the model's dictionary (pass dictionary=...)")
    architecture = architecture or _default_architecture(model, converted.kind if converted else None)
    reasons: List[str] = []
    layout = _export_layout(model, architecture, head_name, reasons)
    weight = getattr(_stack(model).embed_tokens, "weight", None)
    rows = len(dictionary) if weight is None else weight.size(0)  # no weight: refused above
    if (dictionary.bos(), dictionary.pad(), dictionary.eos()) != (0, 1, 2):
        reasons.append(f"the dictionary's <s>/<pad>/</s> are {dictionary.bos()}/{dictionary.pad()}/"
                       f"{dictionary.eos()}, not fairseq's 0/1/2")
    if len(dictionary) != rows:
        reasons.append(f"the dictionary has {len(dictionary)} symbols but the embedding {rows} rows")
    if reasons:
        raise OptionError(f"cannot export to the Hugging Face port's {architecture}: " + "; ".join(reasons))
    labels, regression = None, False
    if layout.head == "classifier":
        labels, regression = _labels_for_export(model, layout.head_name, task, label_dictionary)
    config = _hf_config(model, layout, dictionary, labels, regression)
    hf_state = our_state_to_hf(model.state_dict(), layout)
    for note in _export_notes(model, layout):
        logger.warning("note: %s", note)

    out_dir = os.path.abspath(out_dir)
    with new_output_folder(out_dir) as temporary:
        with open(os.path.join(temporary, CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
            handle.write("\n")
        with open(os.path.join(temporary, VOCAB_JSON), "w", encoding="utf-8") as handle:
            json.dump({symbol: index for index, symbol in enumerate(dictionary.symbols)}, handle,
                      ensure_ascii=False, indent=0)
            handle.write("\n")
        _write_weights(hf_state, temporary, safe_serialization)
    return out_dir


def export_checkpoint_to_hf(checkpoint: str, out_dir: str, data_dir: Optional[str] = None) -> str:
    """A fairseq checkpoint of this plugin's mega_encoder / mega_lm (with its dictionaries
    in ``data_dir``, default the checkpoint's folder) -> a port folder (see
    :func:`export_to_hf`); returns ``out_dir``."""
    import mega_fairseq  # noqa: F401  (registers the models and tasks)
    from fairseq import checkpoint_utils

    if not os.path.isfile(checkpoint):
        raise MissingDataError(f"INPUT {checkpoint} is not a file (expected a checkpoint .pt of this plugin)")
    data_dir = data_dir or os.path.dirname(os.path.abspath(checkpoint))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint], arg_overrides={"data": data_dir, "load_checkpoint_heads": True})
    model = models[0].eval()
    if _family(model) == "lm":
        kind = "lm"
    elif type(task).__name__ == "SentencePredictionTask":
        kind = "classification"
    else:
        kind = "encoder" if HF_POOLER_HEAD in model.classification_heads else "masked_lm"
    converted = ConvertedModel(kind=kind, model=model, cfg=cfg.model, task=task)
    return export_to_hf(converted, task.source_dictionary, out_dir)
