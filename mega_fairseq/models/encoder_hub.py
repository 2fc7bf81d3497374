"""The hub interface of ``mega_encoder`` models (``MegaEncoderModel.from_pretrained``),
in the form of fairseq's RoBERTa hub: ``encode`` / ``decode`` text, ``extract_features``,
``predict`` with a named classification head, ``register_classification_head`` and
``fill_mask``.

What comes from fairseq's :class:`~fairseq.models.roberta.hub_interface.RobertaHubInterface`
unchanged: the construction (``cfg``, ``task``, ``model``, the bpe built from ``cfg.bpe``),
``device`` and the body of ``extract_features`` (our model's ``forward`` takes its
``features_only`` / ``return_all_hiddens`` keywords and returns B x T x C features with
T x B x C inner states, as RoBERTa's does).  What is written here, and why:

* ``encode`` / ``decode``: RoBERTa's need a bpe; ours also work without one (the text is
  then whitespace-separated dictionary symbols, what ``fairseq-preprocess`` was given).
* ``predict``: RoBERTa's applies the head to the B x T x C features (its head takes the
  first token itself); a Mega head takes the sentence vector pooled per
  ``--sentence-rep`` (``cls`` or ``mean`` over the real tokens), so the model pools.
* ``register_classification_head``: Mega's options (``inner_dim``, ``input_multiplier``)
  instead of RoBERTa's ``embedding_size``, which our heads do not have.
* ``fill_mask``: also without a bpe, with the mask symbol of any task whose dictionary
  has one, the masked-LM head at the masked position only, and ValueErrors for bad input
  where RoBERTa's asserts.

Inherited as they are and not exercised here: ``extract_features_aligned_to_words``
(needs the GPT-2 bpe and spaCy) and ``disambiguate_pronoun`` (needs fairseq's WSC task).
"""

from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from fairseq import utils
from fairseq.models.roberta.hub_interface import RobertaHubInterface

MASK_SYMBOL = "<mask>"


class MegaEncoderHubInterface(RobertaHubInterface):
    """A trained ``mega_encoder`` for inference (returned in eval mode by
    ``MegaEncoderModel.from_pretrained``; ``.train()`` to fine-tune).

    Token tensors are 1-D (one sequence: ``<s> ... </s>``) or B x T batches padded with
    the dictionary's pad; feature and logit outputs of a left-padded batch are
    right-aligned (see ``MegaEncoder``).

    Args:
        cfg: the checkpoint's config (``cfg.bpe`` selects the bpe, None for none)
        task: the task the checkpoint was loaded with (its ``source_dictionary``)
        model: a :class:`~mega_fairseq.models.mega_encoder_model.MegaEncoderModel`
    """

    @property
    def dictionary(self):
        return self.task.source_dictionary

    # ------------------------------------------------------------------ text
    def encode(self, sentence: str, *addl_sentences: str, no_separator: bool = False) -> Tensor:
        """Text -> a 1-D LongTensor ``<s> A </s>`` (one sentence) or ``<s> A </s> </s> B
        </s>`` (more; without the extra ``</s>`` separator when ``no_separator``), as
        RoBERTa lays out sentence pairs.  Each sentence is bpe-encoded when the hub has a
        bpe, else split at whitespace into dictionary symbols; unknown pieces become
        ``<unk>``."""
        sentences = (sentence, *addl_sentences)
        for position, text in enumerate(sentences):
            if not isinstance(text, str):
                raise TypeError(f"encode takes strings; sentence {position} is a {type(text).__name__}")
        ids = [self.dictionary.bos()]
        for position, text in enumerate(sentences):
            if position > 0 and not no_separator:
                ids.append(self.dictionary.eos())
            ids.extend(self._symbol_ids(text).tolist())
            ids.append(self.dictionary.eos())
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, tokens: Tensor) -> Union[str, List[str]]:
        """A 1-D token tensor -> its text (``<s>``, ``</s>`` and padding left out; the
        bpe undone when the hub has one); a list of texts when it holds several sentences
        (ends ``</s> </s>`` between them, as :meth:`encode` writes them)."""
        if not torch.is_tensor(tokens) or tokens.dim() != 1:
            shape = tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
            raise ValueError(f"decode takes one 1-D token tensor, got {shape}; decode the rows "
                             "of a batch one by one")
        ids = tokens.tolist()
        eos = self.dictionary.eos()
        if ids and ids[0] == self.dictionary.bos():
            ids = ids[1:]
        pieces, start = [], 0
        for position in range(len(ids) - 1):
            if ids[position] == eos and ids[position + 1] == eos:  # end of a sentence + separator
                pieces.append(ids[start:position + 1])
                start = position + 1
        pieces.append(ids[start:])
        texts = [self._text(piece) for piece in pieces]
        return texts[0] if len(texts) == 1 else texts

    # ------------------------------------------------------------------ features and heads
    def extract_features(self, tokens: Tensor, return_all_hiddens: bool = False):
        """tokens: T or B x T -> final states B x T x C (a 1-D input is a batch of one);
        with ``return_all_hiddens`` the list of B x T x C states after each block instead.
        Runs in the hub's current mode (eval after ``from_pretrained``).  fairseq's
        RoBERTa implementation after the input checks."""
        return super().extract_features(self._checked(tokens), return_all_hiddens=return_all_hiddens)

    def register_classification_head(self, name: str, num_classes: int, inner_dim: int = None,
                                     input_multiplier: int = 1) -> None:
        """A new sentence head ``name`` (B x num_classes logits; see
        ``MegaEncoderModel.register_classification_head``), in the hub's mode and device."""
        self.model.register_classification_head(
            name, num_classes=num_classes, inner_dim=inner_dim, input_multiplier=input_multiplier
        )

    def predict(self, head: str, tokens: Tensor, return_logits: bool = False) -> Tensor:
        """tokens: T or B x T -> B x num_classes log-probabilities (logits with
        ``return_logits``) of the classification head ``head`` over the sentence vector
        (pooled per the model's ``--sentence-rep``).  Pair heads (``input_multiplier`` 2 or 4)
        take two inputs: use ``hub.model.classify_pair``."""
        logits, _ = self.model(self._checked(tokens).to(device=self.device),
                               classification_head_name=head)
        return logits if return_logits else F.log_softmax(logits, dim=-1)

    # ------------------------------------------------------------------ masked LM
    def fill_mask(self, masked_input: str, topk: int = 5) -> List[Tuple[str, float, str]]:
        """The ``topk`` most probable fillers of the one ``<mask>`` in ``masked_input``,
        most probable first, as ``(filled text, probability, filler)``: the masked-LM
        head's softmax at the masked position (in eval mode).

        With a bpe the filler is the decoded piece, with a leading space when the piece
        begins a word (it then takes the place of ``" <mask>"``); without one it is the
        dictionary symbol, put in place of ``<mask>``."""
        if not isinstance(masked_input, str) or masked_input.count(MASK_SYMBOL) != 1:
            count = masked_input.count(MASK_SYMBOL) if isinstance(masked_input, str) else "no"
            raise ValueError(
                f"fill_mask takes a string with exactly one {MASK_SYMBOL}, e.g. "
                f"'the cat {MASK_SYMBOL} on the mat'; got {count} in {masked_input!r}"
            )
        vocabulary = len(self.dictionary)
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= vocabulary:
            raise ValueError(f"topk must be an integer from 1 to the vocabulary size "
                             f"{vocabulary}, got {topk!r}")
        mask_index = self._mask_index()
        before, after = masked_input.split(MASK_SYMBOL)
        if self.bpe is not None:  # the space before a word belongs to its piece (GPT-2)
            before, after = before.rstrip(), after.rstrip()
        ids = torch.cat([
            torch.tensor([self.dictionary.bos()]),
            self._symbol_ids(before),
            torch.tensor([mask_index]),
            self._symbol_ids(after),
            torch.tensor([self.dictionary.eos()]),
        ]).long()
        tokens = self._checked(ids).to(device=self.device)
        with utils.model_eval(self.model), torch.no_grad():
            logits, _ = self.model(tokens, masked_tokens=tokens.eq(mask_index))  # 1 x V
        probabilities, indices = logits[0].float().softmax(dim=-1).topk(topk)
        results = []
        for probability, index in zip(probabilities.tolist(), indices.tolist()):
            filler = self._filler(index)
            if self.bpe is None:
                filled = masked_input.replace(MASK_SYMBOL, filler)
            elif f" {MASK_SYMBOL}" in masked_input:
                filled = masked_input.replace(f" {MASK_SYMBOL}", filler)
            else:  # the mask opens the text or follows no space
                filled = masked_input.replace(MASK_SYMBOL, filler.lstrip())
            results.append((filled, probability, filler))
        return results

    # ------------------------------------------------------------------ helpers
    def _symbol_ids(self, text: str) -> Tensor:
        """1-D ids of ``text``'s pieces (bpe-encoded, or whitespace-split), no specials."""
        pieces = self.bpe.encode(text) if self.bpe is not None else text
        return self.dictionary.encode_line(pieces, append_eos=False, add_if_not_exist=False).long()

    def _text(self, ids: Sequence[int]) -> str:
        text = self.dictionary.string(torch.tensor(ids, dtype=torch.long))
        return self.bpe.decode(text) if self.bpe is not None else text

    def _filler(self, index: int) -> str:
        symbol = self.dictionary[index]
        if self.bpe is None:
            return symbol
        if index < self.dictionary.nspecial or symbol == MASK_SYMBOL:
            return f" {symbol}"  # a special symbol stands apart
        text = self.bpe.decode(symbol).strip()
        begins_word = getattr(self.bpe, "is_beginning_of_word", None)
        return f" {text}" if begins_word is not None and begins_word(symbol) else text

    def _mask_index(self) -> int:
        index = getattr(self.task, "mask_idx", None)
        if index is not None:
            return index
        if MASK_SYMBOL not in self.dictionary:
            raise ValueError(
                f"fill_mask needs the {MASK_SYMBOL} symbol, and the dictionary of task "
                f"{type(self.task).__name__} ({len(self.dictionary)} symbols) has none; load "
                "a model trained with --task masked_lm"
            )
        return self.dictionary.index(MASK_SYMBOL)

    def _checked(self, tokens: Tensor) -> Tensor:
        """T or B x T integer token ids within the model's length limit -> B x T."""
        if (not torch.is_tensor(tokens) or tokens.dtype.is_floating_point
                or tokens.dtype == torch.bool):
            kind = tokens.dtype if torch.is_tensor(tokens) else type(tokens).__name__
            raise TypeError("tokens must be an integer tensor of token ids (hub.encode(text)), "
                            f"got {kind}")
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2 or tokens.size(1) == 0:
            raise ValueError(f"tokens must be T or B x T token ids, got shape {tuple(tokens.shape)}")
        # (a task may put another input embedding in place of the token table: no check then)
        rows = getattr(self.model.encoder.embed_tokens, "num_embeddings", None)
        low, high = int(tokens.min()), int(tokens.max())
        if rows is not None and (low < 0 or high >= rows):
            raise ValueError(f"token ids must lie in [0, {rows - 1}] (the token embedding's "
                             f"rows), got ids from {low} to {high}")
        if tokens.size(1) > self.model.max_positions():
            raise ValueError(f"{tokens.size(1)} tokens exceed the model's maximum length "
                             f"{self.model.max_positions()}")
        return tokens.long()
