"""Building small Mega language models directly (no data files) for unit tests."""

from types import SimpleNamespace

import torch
from fairseq.data import Dictionary

from mega_fairseq.models.mega_lm import MegaLanguageModel, MegaLanguageModelConfig


def make_dictionary(size: int = 20) -> Dictionary:
    dictionary = Dictionary()
    for i in range(size):
        dictionary.add_symbol(f"w{i}")
    return dictionary


def build_lm(dictionary=None, **options) -> MegaLanguageModel:
    dictionary = dictionary or make_dictionary()
    defaults = dict(
        decoder_embed_dim=16, decoder_hidden_dim=24, decoder_ffn_embed_dim=20, decoder_z_dim=8,
        decoder_n_dim=4, decoder_layers=2, tokens_per_sample=64, dropout=0.0,
        normalize_before=True,
    )
    defaults.update(options)
    cfg = MegaLanguageModelConfig(**defaults)
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    return MegaLanguageModel.build_model(cfg, task)


def random_tokens(dictionary, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(dictionary.nspecial, len(dictionary), (batch, length), generator=generator)
