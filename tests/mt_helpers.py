"""Building small ``mega`` encoder-decoder models directly (no data files) for unit tests."""

from types import SimpleNamespace

import torch

from lm_helpers import make_dictionary
from mega_fairseq.models.mega_translation import MegaModel, MegaTranslationConfig


def build_translation_model(src_dict=None, tgt_dict=None, **options) -> MegaModel:
    src_dict = src_dict or make_dictionary(24)
    tgt_dict = tgt_dict or src_dict
    sizes = dict(embed_dim=16, hidden_dim=24, ffn_embed_dim=20, z_dim=8, n_dim=4, layers=2)
    defaults = {f"{side}_{k}": v for side in ("encoder", "decoder") for k, v in sizes.items()}
    defaults.update(dropout=0.0, max_source_positions=64, max_target_positions=64)
    defaults.update(options)
    task = SimpleNamespace(source_dictionary=src_dict, target_dictionary=tgt_dict)
    return MegaModel.build_model(MegaTranslationConfig(**defaults), task)


def padded_batch(sequences, pad: int, left: bool) -> torch.Tensor:
    """B x T LongTensor of 1-D token tensors, padded on the left or the right."""
    width = max(len(s) for s in sequences)
    rows = []
    for s in sequences:
        padding = torch.full((width - len(s),), pad, dtype=torch.long)
        rows.append(torch.cat([padding, s]) if left else torch.cat([s, padding]))
    return torch.stack(rows)


def random_sentence(dictionary, length: int, seed: int) -> torch.Tensor:
    """1-D tokens ending with EOS (as fairseq's translation datasets store sources)."""
    generator = torch.Generator().manual_seed(seed)
    words = torch.randint(dictionary.nspecial, len(dictionary), (length - 1,), generator=generator)
    return torch.cat([words, torch.tensor([dictionary.eos()])])
