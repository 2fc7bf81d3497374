"""Count-based baselines that a trained model must beat, computed from the binarised data
the fairseq console scripts read (the trained-model tests and ``scripts/main_job.sh``
compare with them).

``unigram_perplexity``: an add-one smoothed unigram model estimated on the train split and
scored on every token of an evaluation split, end-of-sentence tokens included, in base 2:
the units of ``fairseq-eval-lm``'s ``Loss (base 2)`` / ``Perplexity``.  It ignores all
context, so a language model whose sequence mixing is broken cannot do much better.
``majority_accuracy``: the accuracy (percent) of always predicting the most frequent
training label, for classification.
"""

import math
from collections import Counter
from pathlib import Path
from typing import List

from fairseq.data import Dictionary, data_utils


def split_token_ids(data_dir: Path, split: str, dictionary: Dictionary) -> List[int]:
    """Every token id of ``split`` in ``data_dir`` (a fairseq-preprocess output), each
    line's trailing eos included, in file order."""
    dataset = data_utils.load_indexed_dataset(str(Path(data_dir) / split), dictionary)
    if dataset is None:
        raise FileNotFoundError(f"no binarised split {split!r} in {data_dir}")
    return [token for index in range(len(dataset)) for token in dataset[index].tolist()]


def unigram_loss(data_dir: Path, split: str = "test") -> float:
    """Mean negative log2-probability of ``split``'s tokens under p(w) = (count_train(w) + 1)
    / (N_train + V), V = the size of the fairseq dictionary (specials included)."""
    dictionary = Dictionary.load(str(Path(data_dir) / "dict.txt"))
    counts = Counter(split_token_ids(data_dir, "train", dictionary))
    total, size = sum(counts.values()), len(dictionary)
    tokens = split_token_ids(data_dir, split, dictionary)
    return -sum(math.log2((counts[t] + 1) / (total + size)) for t in tokens) / len(tokens)


def unigram_perplexity(data_dir: Path, split: str = "test") -> float:
    return 2.0 ** unigram_loss(data_dir, split)


def read_labels(path: Path) -> List[str]:
    """One label per line of a plain text label file."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]


def majority_accuracy(train_labels: List[str], eval_labels: List[str]) -> float:
    """Percent of ``eval_labels`` equal to the most frequent of ``train_labels``."""
    majority, _ = Counter(train_labels).most_common(1)[0]
    return 100.0 * sum(label == majority for label in eval_labels) / len(eval_labels)
