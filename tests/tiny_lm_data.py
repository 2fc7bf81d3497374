"""A tiny binarised language-modelling corpus written in-process (what
``fairseq-preprocess --only-source`` writes: dict.txt and {train,valid,test}.bin/.idx),
for console-script tests that need data but not its content."""

import random
from pathlib import Path

import torch
from fairseq.data import Dictionary, indexed_dataset


def write_tiny_lm_data(directory: Path, words: int = 30, lines: int = 60, line_length: int = 12,
                       seed: int = 0) -> Path:
    """Random lines of ``line_length`` words over ``words`` symbols, the same lines in every
    split; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    dictionary = Dictionary()
    symbols = [f"w{i}" for i in range(words)]
    for symbol in symbols:
        dictionary.add_symbol(symbol)
    dictionary.save(str(directory / "dict.txt"))
    generator = random.Random(seed)
    text = [" ".join(generator.choice(symbols) for _ in range(line_length)) for _ in range(lines)]
    for split in ("train", "valid", "test"):
        prefix = str(directory / split)
        builder = indexed_dataset.make_builder(prefix + ".bin", "mmap", vocab_size=len(dictionary))
        for line in text:
            builder.add_item(dictionary.encode_line(line, add_if_not_exist=False).to(torch.int64))
        builder.finalize(prefix + ".idx")
    return directory
