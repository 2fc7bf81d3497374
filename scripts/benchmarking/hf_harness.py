"""Builds and runs a Hugging Face ``MegaBlock`` (``transformers==4.40.2``) next to our
:class:`MegaLayer` on the same weights: the support of the equivalence tests
(``tests/test_hf_port_equivalence.py``) and of the benchmark section "hf"
(:mod:`benchmarking.hf_port`). The weights move through the state-dict mapping of
:mod:`mega_fairseq.conversion.hf_mega`, which also turns settings into the port's config
and refuses the settings the port cannot express. ``transformers`` is imported on the
first :func:`build_hf_block` call, not at import time.

Defects of the port met when running it, and what this harness does about them:

1. Incremental decoding: laplace/relu2 single-token steps and chunked decoding compute
   wrong results. Nothing here uses the port's incremental decoding: :func:`run_hf_block`
   runs full-sequence forwards only (``use_cache=False``).
2. ``MegaBlock`` does not build the causal mask (``MegaModel`` does, and for a chunked
   decoder builds a chunk_size x chunk_size mask even for shorter inputs, which then
   fails). :func:`run_hf_block` builds a min(T, chunk_size) square mask itself.
3. Chunked attention needs T <= chunk_size or T a multiple of chunk_size (ours pads the
   last chunk). :func:`run_hf_block` raises ``ValueError`` for other lengths.
4. Float64 blocks are only float32-accurate (differences of order 1e-7): the EMA
   convolution always runs in float32 (``fft_convolution`` calls ``.float()``) and the
   rotary sin/cos tables are computed in float32. Left as is.
5. The laplace attention function uses mu = 0.707107 and sigma = 0.282095 (sqrt(1/2) and
   sqrt(1/(4 pi)) rounded to six digits): differences of order 1e-7. Left as is.
6. In eval mode the EMA kernel is cached on the module and never invalidated: it goes
   stale when weights change in place, and a kernel cached with autograd on cannot be
   backpropagated through twice. :func:`run_hf_block` drops the cache before and after
   every call with autograd enabled; after changing the weights of an eval-mode block
   otherwise, call :func:`reset_hf_ema_cache`.
7. Training mode differs (equality holds in eval mode only): the port's batch norm
   statistics include padded positions, its hidden dropout drops the values v instead
   of attn * r, and its feature dropout goes through ``dropout2d`` on 3-D tensors.
   Left as is.
8. Padding. Outputs at padded positions differ (the port adds omega * x of the
   unmasked input to the EMA output there); both call them meaningless, and outputs at
   real positions agree for right padding. Left padding of causal layers differs: with
   softmax the port's padded queries see only masked keys and give NaN, which the next
   block's EMA (input * mask) spreads to every later token; with laplace/relu2 the port
   divides by position + 1, counting padded keys. Left as is (use right padding).
9. ``MegaModel`` cannot be built with non-affine layer norms (its weight initialiser
   zeroes ``LayerNorm.bias``, which is then None). :func:`build_hf_block` builds the
   model with affine norms and swaps in the port's own non-affine ``MegaSequenceNorm``.
"""

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from mega_fairseq.conversion.hf_mega import (
    TRANSFORMERS_REQUIREMENT,
    hf_block_state_to_mega_layer_state,
    hf_config_kwargs,
)
from mega_fairseq.modules.mega_layer import MegaLayer, MegaLayerSettings


def _import_transformers_mega():
    """(``MegaConfig``, ``MegaModel``) of ``transformers``; ``ImportError`` naming the
    release to install when it is missing."""
    try:
        from transformers import MegaConfig, MegaModel
    except ImportError as error:
        raise ImportError(
            "the Hugging Face Mega port needs transformers 4.40.2, the last release with Mega: "
            f'pip install "{TRANSFORMERS_REQUIREMENT}" (or the "benchmark" extra of mega-fairseq)'
        ) from error
    return MegaConfig, MegaModel


def build_hf_block(settings: MegaLayerSettings, seed: int = 0, allow_known_defects: bool = False) -> nn.Module:
    """A Hugging Face ``MegaBlock`` configured like ``MegaLayer(settings)``, in eval mode.

    Built as the only layer of a ``transformers.MegaModel`` (a bare ``MegaBlock`` leaves its
    parameters uninitialised) from parameters drawn under ``torch.manual_seed(seed)``; the
    global random state is left untouched. Settings the port cannot express raise
    ``ValueError``; ``allow_known_defects``: see
    :func:`mega_fairseq.conversion.hf_mega.hf_config_kwargs`.
    """
    MegaConfig, MegaModel = _import_transformers_mega()
    kwargs = hf_config_kwargs(settings, allow_known_defects=allow_known_defects)
    plain_layer_norms = kwargs["normalization_type"] == "layernorm" and not kwargs["norm_affine"]
    if plain_layer_norms:
        kwargs["norm_affine"] = True  # defect 9: swapped for plain norms below
    config = MegaConfig(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MegaModel(config, add_pooling_layer=False)
    block = model.layers[0]
    if plain_layer_norms:
        _use_plain_layer_norms(block)
    return block.eval()


def _use_plain_layer_norms(hf_block: nn.Module) -> None:
    """Replace both norms of an (affine) layer-norm block by the port's own non-affine
    ones, which its constructor would have built with ``norm_affine=False``."""
    config = hf_block.mega_layer.config
    config.norm_affine = False
    for sublayer in (hf_block.mega_layer, hf_block.nffn):
        norm_class = type(sublayer.norm)
        sublayer.norm = norm_class(config.normalization_type, config.hidden_size, affine=False)


def _check_block_matches(hf_block: nn.Module, settings: MegaLayerSettings) -> None:
    """``ValueError`` listing every config field of ``hf_block`` that differs from the
    config :func:`hf_config_kwargs` gives for ``settings``."""
    expected = hf_config_kwargs(settings, allow_known_defects=True)
    config = hf_block.mega_layer.config
    mismatched = [
        f"{name}: block has {getattr(config, name, None)!r}, settings need {value!r}"
        for name, value in expected.items()
        if name not in ("vocab_size", "num_hidden_layers") and getattr(config, name, None) != value
    ]
    if mismatched:
        raise ValueError("the Hugging Face block is configured differently: " + "; ".join(mismatched))


def mega_layer_from_hf_block(hf_block: nn.Module, settings: MegaLayerSettings) -> MegaLayer:
    """``MegaLayer(settings)`` holding the weights (and batch-norm statistics) of
    ``hf_block``, with its dtype, device and train/eval mode. The block's configuration
    must match ``settings`` (``ValueError`` otherwise); the state is loaded strictly."""
    _check_block_matches(hf_block, settings)
    reference = next(hf_block.parameters())
    layer = MegaLayer(settings).to(device=reference.device, dtype=reference.dtype)
    layer.load_state_dict(hf_block_state_to_mega_layer_state(hf_block.state_dict()), strict=True)
    return layer.train(hf_block.training)


def reset_hf_ema_cache(hf_block: nn.Module) -> None:
    """Drop the EMA kernel and coefficients the port caches in eval mode (defect 6):
    needed after changing the weights of an eval-mode block."""
    ema = hf_block.mega_layer.ema_gate
    ema._kernel = None
    ema._coeffs = None


def _attention_window(config, length: int) -> int:
    """Length of the attention windows of a T = ``length`` input (chunk or sequence);
    ``ValueError`` for the chunked lengths the port cannot reshape (defect 3)."""
    if not config.use_chunking or length <= config.chunk_size:
        return length
    if length % config.chunk_size != 0:
        raise ValueError(
            f"the Hugging Face Mega port needs an input length <= chunk_size or a multiple of "
            f"it; got length {length} with chunk_size {config.chunk_size}"
        )
    return config.chunk_size


def run_hf_block(hf_block: nn.Module, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
    """Full-sequence forward of a Hugging Face ``MegaBlock`` in our conventions.

    x: T x B x C; padding_mask: B x T bool, True = pad (the port's attention_mask is
    the opposite: 1 = real token). Causal blocks (``is_decoder``) get the square causal
    mask of their attention window (defect 2). Returns the block output, T x B x C.
    Differentiable: with autograd enabled the port's eval-mode EMA kernel cache is dropped
    before and after the call (defect 6); without, the port's caching is left as it is.
    """
    if x.dim() != 3:
        raise ValueError(f"expected input of shape T x B x C, got {tuple(x.shape)}")
    length, batch = x.size(0), x.size(1)
    config = hf_block.mega_layer.config
    window = _attention_window(config, length)
    attention_mask = None
    if padding_mask is not None:
        if padding_mask.shape != (batch, length):
            raise ValueError(f"padding_mask must be B x T = {(batch, length)}, got {tuple(padding_mask.shape)}")
        attention_mask = (~padding_mask.to(torch.bool)).to(x.dtype)
    causal_mask = None
    if config.is_decoder:
        causal_mask = torch.tril(torch.ones(window, window, dtype=x.dtype, device=x.device))
    if not torch.is_grad_enabled():
        return hf_block(x, attention_mask=attention_mask, causal_mask=causal_mask, use_cache=False)[0]
    # a kernel cached with autograd on belongs to one graph and to the current weights
    reset_hf_ema_cache(hf_block)
    try:
        return hf_block(x, attention_mask=attention_mask, causal_mask=causal_mask, use_cache=False)[0]
    finally:
        reset_hf_ema_cache(hf_block)
