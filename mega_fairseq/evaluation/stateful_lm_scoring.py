"""Score a language model on one long token stream, block by block, in two modes.

* ``independent``: consecutive blocks of ``block_size`` tokens, each scored from an empty
  state (what ``fairseq-eval-lm`` does without ``--context-window``): the first tokens of
  every block see little context.
* ``stateful``: one fairseq ``incremental_state`` is carried across all blocks, so every
  token is scored with the whole stream before it as context.  For Mega this is the EMA's
  recurrent state plus the keys/values of the current attention chunk, so memory stays
  bounded for chunked models; the result equals one full forward over the whole stream.

The stream is a split of a ``fairseq-preprocess --only-source`` directory read as one
sequence, eos tokens between lines included, as ``fairseq-eval-lm`` with
``--sample-break-mode none`` sees it.  Like fairseq, the stream starts with an eos that
serves as the context of the first real token (``leading_eos``); that first stream token
has no context itself and is never scored.  With a stream ``s_0 .. s_N`` both modes score
``s_1 .. s_N``, block ``b`` feeding inputs ``s[b*L : (b+1)*L]`` and predicting
``s[b*L+1 : (b+1)*L+1]``, so with ``block_size = --tokens-per-sample`` the independent
mode reproduces ``fairseq-eval-lm``'s loss.
"""

import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from tqdm import tqdm

from fairseq.data import data_utils
from fairseq.models import FairseqIncrementalDecoder

from mega_fairseq.models.mega_options import StackSettings
from mega_fairseq.modules.layer_settings import MegaLayerSettings

MODES = ("independent", "stateful")


# ----------------------------------------------------------------------- results
@dataclass
class LMScore:
    """The result of scoring one stream in one mode.

    ``nll_nats``: summed negative log-likelihood (natural log) of the ``num_tokens``
    scored tokens; ``log_probs``: their log-probabilities (1-D, length num_tokens, natural
    log) when requested.
    """

    mode: str
    nll_nats: float
    num_tokens: int
    seconds: float
    log_probs: Optional[Tensor] = None

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood in base 2 (bits per token)."""
        return self.nll_nats / max(self.num_tokens, 1) / math.log(2)

    @property
    def perplexity(self) -> float:
        return 2.0 ** self.loss

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        return (f"{self.mode:>11}: {self.num_tokens} tokens | loss (base 2) {self.loss:.4f} | "
                f"perplexity {self.perplexity:.2f} | {self.tokens_per_second:.1f} tokens/s")


# ------------------------------------------------------------------------ stream
def load_token_stream(
    data_path: str,
    split: str,
    dictionary,
    dataset_impl: Optional[str] = None,
    leading_eos: bool = True,
    progress: bool = True,
) -> Tensor:
    """Read ``split`` of a binarised directory as one LongTensor[N] (every line with its
    trailing eos, in file order), preceded by one eos when ``leading_eos``.

    ``data_path`` may list several directories separated by ``:`` as fairseq allows; the
    first is read, as ``fairseq-eval-lm`` does for evaluation splits.
    """
    directory = data_path.split(os.pathsep)[0]
    dataset = data_utils.load_indexed_dataset(os.path.join(directory, split), dictionary, dataset_impl)
    if dataset is None:
        raise FileNotFoundError(f"no binarised split {split!r} in {directory}")
    pieces = [torch.tensor([dictionary.eos()], dtype=torch.long)] if leading_eos else []
    for index in tqdm(range(len(dataset)), desc=f"read {split}", unit="line", disable=not progress):
        pieces.append(dataset[index].long())
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def truncate_stream(stream: Tensor, max_tokens_total: Optional[int]) -> Tensor:
    """Keep the first ``max_tokens_total`` scored tokens: stream[: max_tokens_total + 1]."""
    if max_tokens_total is None:
        return stream
    if max_tokens_total <= 0:
        raise ValueError(f"--max-tokens-total must be positive, got {max_tokens_total}")
    return stream[: max_tokens_total + 1]


def split_stream(stream: Tensor) -> Tuple[Tensor, Tensor]:
    """LongTensor[N] -> (inputs 1 x (N-1), targets 1 x (N-1)): targets[t] = stream[t+1]."""
    if stream.dim() != 1 or stream.numel() < 2:
        raise ValueError(f"need a 1-D stream of at least 2 tokens, got shape {tuple(stream.shape)}")
    return stream[:-1].unsqueeze(0), stream[1:].unsqueeze(0)


def block_spans(length: int, block_size: int) -> List[Tuple[int, int]]:
    """[(start, end)] of consecutive blocks of ``block_size`` covering range(length); the
    last one may be shorter."""
    if block_size <= 0:
        raise ValueError(f"block size must be positive, got {block_size}")
    return [(start, min(start + block_size, length)) for start in range(0, length, block_size)]


# ------------------------------------------------------------------ model checks
def mega_block_settings(model) -> Optional[MegaLayerSettings]:
    """The block settings of a Mega decoder; None for other decoders."""
    stack = getattr(getattr(model, "decoder", None), "settings", None)
    return stack.layer if isinstance(stack, StackSettings) else None


def unchunked_position_limit(model) -> Optional[int]:
    """The longest context the model's blocks can attend over (an unchunked block with the
    'simple' relative bias: its max positions), or None when nothing limits it (chunked or
    rotary blocks attend over any stream; other decoders are not checked here)."""
    settings = mega_block_settings(model)
    return None if settings is None else settings.length_limit


def check_block_size(model, block_size: int) -> None:
    """A block is one forward call: it must fit the model's max positions."""
    limit = model.max_positions()
    if isinstance(limit, tuple):
        limit = limit[0]
    if limit is not None and block_size > limit:
        raise ValueError(f"--block-size {block_size} exceeds the model's max positions {limit}")


def check_stateful_supported(model, num_inputs: int) -> None:
    """Refuse carried state where the model cannot attend over the whole stream.

    num_inputs: the number of input tokens the stateful pass feeds (the context grows up
    to it).  Warns when an unchunked rotary model will cache keys for the whole stream.
    """
    if not isinstance(getattr(model, "decoder", None), FairseqIncrementalDecoder):
        raise ValueError("stateful scoring needs a model whose decoder supports incremental_state")
    limit = unchunked_position_limit(model)
    if limit is not None and num_inputs > limit:
        raise ValueError(
            f"stateful scoring carries the whole context ({num_inputs} tokens), but this "
            f"unchunked model's 'simple' relative position bias covers only {limit} positions. "
            "Evaluate a chunked model (--decoder-chunk-size) or one trained with --rel-pos-bias "
            f"rotary, limit the stream with --max-tokens-total {limit}, or use independent mode."
        )
    settings = mega_block_settings(model)
    if settings is not None and not settings.chunked:
        warnings.warn("unchunked attention caches the keys of the whole stream: memory grows "
                      "linearly and time quadratically with the stream length")


# ----------------------------------------------------------------------- scoring
def target_log_probs(model, net_output, target: Tensor) -> Tensor:
    """Log-probabilities of ``target`` (B x T) under the model output -> B x T, in at least
    float32 (float64 for a float64 model)."""
    decoder = getattr(model, "decoder", model)
    if getattr(decoder, "adaptive_softmax", None) is not None:
        lprobs = model.get_normalized_probs(net_output, log_probs=True, sample={"target": target})
        return lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    logits = net_output[0]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _device_of(model) -> torch.device:
    if model.training:
        raise ValueError("score a model in eval mode (model.eval()): dropout would perturb the scores")
    return next(model.parameters()).device


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _full_block_batches(spans: List[Tuple[int, int]], block_size: int,
                        batch_size: int) -> Iterator[Tuple[int, int, int]]:
    """Group consecutive full blocks: yields (start, end, rows) with end - start = rows *
    block_size; a shorter last block comes alone (rows = 1)."""
    full = [s for s in spans if s[1] - s[0] == block_size]
    for first in range(0, len(full), batch_size):
        group = full[first:first + batch_size]
        yield group[0][0], group[-1][1], len(group)
    for start, end in spans[len(full):]:
        yield start, end, 1


class _Accumulator:
    """Running sum of log-probabilities (float64), optionally keeping them."""

    def __init__(self, keep: bool):
        self.total = 0.0
        self.count = 0
        self.kept: Optional[List[Tensor]] = [] if keep else None

    def add(self, log_probs: Tensor) -> None:
        """log_probs: any shape, in stream order when flattened."""
        flat = log_probs.reshape(-1)
        self.total += float(flat.double().sum())
        self.count += flat.numel()
        if self.kept is not None:
            self.kept.append(flat.detach().cpu())

    def result(self, mode: str, seconds: float) -> LMScore:
        kept = torch.cat(self.kept) if self.kept else None
        return LMScore(mode, -self.total, self.count, seconds, kept)


def score_independent(model, stream: Tensor, block_size: int, batch_size: int = 8,
                      progress: bool = True, keep_log_probs: bool = False) -> LMScore:
    """Score ``stream`` (LongTensor[N]) in blocks of ``block_size`` inputs, each block run
    on its own from an empty state; full blocks are batched ``batch_size`` at a time."""
    check_block_size(model, block_size)
    device = _device_of(model)
    inputs, targets = (t.to(device) for t in split_stream(stream))
    spans = block_spans(inputs.size(1), block_size)
    scores = _Accumulator(keep_log_probs)
    _synchronize(device)
    began = time.perf_counter()
    with torch.no_grad(), tqdm(total=inputs.size(1), desc="independent", unit="tok",
                               disable=not progress) as bar:
        for start, end, rows in _full_block_batches(spans, block_size, batch_size):
            batch_inputs = inputs[0, start:end].view(rows, -1)  # rows x L
            batch_targets = targets[0, start:end].view(rows, -1)
            scores.add(target_log_probs(model, model(batch_inputs), batch_targets))
            bar.update(end - start)
    _synchronize(device)
    return scores.result("independent", time.perf_counter() - began)


def feed_block(model, inputs: Tensor, end: int, incremental_state: Dict):
    """Run the tokens of ``inputs`` (1 x N) up to ``end`` that the decoder has not decoded
    yet, carrying ``incremental_state``.

    The decoder runs ``prev_output_tokens[:, decoded:]``; the prefix is passed as a view
    of the stream, never copied nor recomputed.  Returns the net output for the new
    tokens (1 x L x V logits, ...).
    """
    return model(inputs[:, :end], incremental_state=incremental_state)


def score_stateful(model, stream: Tensor, block_size: int, progress: bool = True,
                   keep_log_probs: bool = False) -> LMScore:
    """Score ``stream`` (LongTensor[N]) in blocks of ``block_size`` inputs carrying one
    incremental state across all blocks: token t is scored given stream[: t]."""
    check_block_size(model, block_size)
    device = _device_of(model)
    inputs, targets = (t.to(device) for t in split_stream(stream))
    check_stateful_supported(model, inputs.size(1))
    incremental_state: Dict = {}
    scores = _Accumulator(keep_log_probs)
    _synchronize(device)
    began = time.perf_counter()
    with torch.no_grad(), tqdm(total=inputs.size(1), desc="stateful", unit="tok",
                               disable=not progress) as bar:
        for start, end in block_spans(inputs.size(1), block_size):
            net_output = feed_block(model, inputs, end, incremental_state)
            if net_output[0].size(1) != end - start:
                raise RuntimeError(
                    f"the decoder returned {net_output[0].size(1)} positions for a block of "
                    f"{end - start} new tokens: it does not run only the undecoded tokens"
                )
            scores.add(target_log_probs(model, net_output, targets[:, start:end]))
            bar.update(end - start)
    _synchronize(device)
    return scores.result("stateful", time.perf_counter() - began)


def full_forward_log_probs(model, stream: Tensor) -> Tensor:
    """Reference: one forward over the whole stream -> log-probs of stream[1:] (1-D)."""
    inputs, targets = (t.to(_device_of(model)) for t in split_stream(stream))
    with torch.no_grad():
        return target_log_probs(model, model(inputs), targets).reshape(-1)


def score(model, stream: Tensor, block_size: int, mode: str, **options) -> LMScore:
    """Dispatch to :func:`score_independent` or :func:`score_stateful`."""
    if mode == "independent":
        return score_independent(model, stream, block_size, **options)
    if mode == "stateful":
        options.pop("batch_size", None)
        return score_stateful(model, stream, block_size, **options)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
