"""``lra-image``: classification of images read as pixel sequences (LRA Image = grey-scale
CIFAR-10, 32x32 = 1024 pixels; Pathfinder 32x32; Path-X 128x128).

Data (no fairseq-preprocess; ``scripts/images_to_pixel_sequences.py`` writes it)::

    DATA/{split}.input      one image per line: H*W integers 0-255 separated by spaces
                            (row-major); or DATA/{split}.input.npy, a uint8 N x (H*W)
                            array, which is memory-mapped and preferred when present
    DATA/{split}.label      one integer class id 0 .. num_classes-1 per line

Every image must have exactly ``--image-size``\\ ² pixels (an error otherwise).  The task
builds its own 260-symbol dictionary: fairseq's 4 specials, then the symbols ``"0"`` ..
``"255"`` (pixel ``p`` = index ``p + 4``).  Samples: ``net_input`` =
``{"src_tokens": B x H*W pixel tokens, "src_lengths": B}``, ``target``: B class ids; no
``</s>`` is added.

``--pixel-input tokens``: each intensity is a vocabulary symbol with its own learned
embedding (the LRA baseline).  ``--pixel-input values`` (Mega's setting): the model's token
embedding is replaced by :class:`PixelValueEmbedding`, a linear projection of the
normalised value ``(p / 255 - mean) / std`` (``--pixel-mean``/``--pixel-std``; Mega used
0.48/0.24 for CIFAR-10 and 0.5/0.5 for Pathfinder).  Since the pixels are integers, a
lookup of the value by token followed by ``nn.Linear(1, C)`` is exactly a linear
projection of the float pixels, so samples stay integer tokens.
"""

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from omegaconf import II, MISSING

from fairseq.data import Dictionary, FairseqDataset
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

from mega_fairseq.errors import DataError, MissingDataError, OptionError
from mega_fairseq.tasks import binarized_data as bd
from mega_fairseq.tasks.model_limits import check_model_accepts
from mega_fairseq.tasks.lra_common import (
    check_num_classes,
    check_targets,
    classification_dataset,
    classification_head_name,
    warn_if_cls_pooling,
)

logger = logging.getLogger(__name__)

PIXEL_INPUTS = ChoiceEnum(["tokens", "values"])
NUM_INTENSITIES = 256


@dataclass
class LRAImageConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "directory with {split}.input and {split}.label"})
    num_classes: int = field(default=-1, metadata={"help": "number of classes (required)"})
    image_size: int = field(
        default=32, metadata={"help": "image side in pixels (square images: image_size^2 pixels each)"}
    )
    pixel_input: PIXEL_INPUTS = field(
        default="values",
        metadata={"help": "'values': linear projection of normalised intensities (Mega); "
                  "'tokens': one embedding per intensity"},
    )
    pixel_mean: float = field(default=0.5, metadata={"help": "mean of intensities/255 (--pixel-input values)"})
    pixel_std: float = field(default=0.5, metadata={"help": "std of intensities/255 (--pixel-input values)"})
    no_shuffle: bool = field(default=False, metadata={"help": "keep the data order"})
    classification_head_name: str = II("criterion.classification_head_name")
    seed: int = II("common.seed")


def pixel_dictionary() -> Dictionary:
    """fairseq's specials followed by the symbols "0" .. "255" (pixel p -> index p + nspecial)."""
    dictionary = Dictionary()
    for value in range(NUM_INTENSITIES):
        dictionary.add_symbol(str(value))
    return dictionary


def read_pixels(path: str, num_pixels: int) -> np.ndarray:
    """N x num_pixels uint8 pixels of a ``.input`` text file (or its ``.npy``)."""
    if os.path.exists(path + ".npy"):
        pixels = np.load(path + ".npy", mmap_mode="r")
        if pixels.ndim != 2 or pixels.shape[1] != num_pixels:
            raise DataError(f"{path}.npy: shape {pixels.shape}, expected N x {num_pixels} "
                             f"(--image-size {int(round(num_pixels ** 0.5))})")
        if pixels.dtype != np.uint8:
            raise DataError(f"{path}.npy: dtype {pixels.dtype}, expected uint8")
        return pixels
    if not os.path.exists(path):
        raise MissingDataError(f"{path} not found (nor {path}.npy)")
    rows = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if len(fields) != num_pixels:
                raise DataError(
                    f"{path}: line {number} has {len(fields)} pixels, expected {num_pixels} "
                    f"(--image-size {int(round(num_pixels ** 0.5))} gives "
                    f"{int(round(num_pixels ** 0.5))}x{int(round(num_pixels ** 0.5))} images)"
                )
            try:
                row = np.array(fields, dtype=np.int64)
            except ValueError:
                raise DataError(f"{path}: line {number} holds a non-integer pixel") from None
            if row.min() < 0 or row.max() > 255:
                raise DataError(f"{path}: line {number} has a pixel outside 0-255")
            rows.append(row.astype(np.uint8))
    if not rows:
        return np.zeros((0, num_pixels), dtype=np.uint8)
    return np.stack(rows)


def read_labels(path: str) -> np.ndarray:
    """N integer labels, one per line."""
    if not os.path.exists(path):
        raise MissingDataError(f"{path} not found")
    labels = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            try:
                labels.append(int(text))
            except ValueError:
                raise DataError(f"{path}: line {number}: label {text!r} is not an integer class id") from None
    return np.asarray(labels, dtype=np.int64)


class PixelTokensDataset(FairseqDataset):
    """Images (N x L uint8) as 1-D LongTensors of L pixel tokens (pixel + ``offset``)."""

    def __init__(self, pixels: np.ndarray, offset: int):
        super().__init__()
        self.pixels = pixels
        self.offset = offset
        self._sizes = np.full(len(pixels), pixels.shape[1], dtype=np.int64)

    def __getitem__(self, index):
        return torch.from_numpy(np.asarray(self.pixels[index], dtype=np.int64) + self.offset)

    def __len__(self):
        return len(self.pixels)

    @property
    def sizes(self):
        return self._sizes

    def num_tokens(self, index):
        return int(self._sizes[index])

    def size(self, index):
        return int(self._sizes[index])


class PixelValueEmbedding(nn.Module):
    """Stands in for the token embedding: token ``t`` of pixel ``p = t - offset`` ->
    ``w * (p / 255 - mean) / std + b`` (w, b in R^C).  Specials (padding) map to value 0.

    forward: tokens B x T (long) -> B x T x C."""

    def __init__(self, num_embeddings: int, embedding_dim: int, offset: int, mean: float, std: float,
                 padding_idx: int = None):
        super().__init__()
        if std <= 0:
            raise OptionError(f"--pixel-std must be positive, got {std}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        values = torch.zeros(num_embeddings)
        pixels = torch.arange(NUM_INTENSITIES, dtype=torch.float32)
        values[offset:offset + NUM_INTENSITIES] = (pixels / 255.0 - mean) / std
        self.register_buffer("pixel_values", values, persistent=False)
        self.value_proj = nn.Linear(1, embedding_dim)
        nn.init.normal_(self.value_proj.weight, mean=0.0, std=embedding_dim ** -0.5)
        nn.init.zeros_(self.value_proj.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The projection's C x 1 weight: gives the model the device and dtype of its
        input embedding (this is not an embedding table)."""
        return self.value_proj.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        values = self.pixel_values[tokens].unsqueeze(-1).to(self.value_proj.weight.dtype)
        return self.value_proj(values)


@register_task("lra-image", dataclass=LRAImageConfig)
class LRAImageTask(bd.DictionaryAccessors, FairseqTask):
    """Pixel-sequence image classification for the Long Range Arena (see the module docstring)."""

    cfg: LRAImageConfig

    def __init__(self, cfg: LRAImageConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary

    @classmethod
    def setup_task(cls, cfg: LRAImageConfig, **kwargs):
        check_num_classes(cfg.num_classes)
        if cfg.image_size <= 0:
            raise OptionError(f"--image-size must be positive, got {cfg.image_size}")
        return cls(cfg, pixel_dictionary())

    @property
    def num_pixels(self) -> int:
        return self.cfg.image_size * self.cfg.image_size

    def load_dataset(self, split: str, combine: bool = False, **kwargs):
        prefix = os.path.join(self.cfg.data, split)
        pixels = read_pixels(prefix + ".input", self.num_pixels)
        targets = read_labels(prefix + ".label")
        if len(targets) != len(pixels):
            raise DataError(f"{prefix}: {len(pixels)} images but {len(targets)} labels")
        check_targets(targets, self.cfg.num_classes, prefix + ".label")
        tokens = PixelTokensDataset(pixels, offset=self.dictionary.nspecial)
        self.datasets[split] = classification_dataset(
            {"net_input": tokens}, [tokens.sizes], targets, self.dictionary.pad(), self.cfg.seed,
            not self.cfg.no_shuffle,
        )
        logger.info("loaded %s: %d images of %d pixels", split, len(targets), self.num_pixels)
        return self.datasets[split]

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        warn_if_cls_pooling(model)
        check_model_accepts(model, self.num_pixels,
                            f"the {self.num_pixels} pixels per image of --image-size {self.cfg.image_size}")
        model.register_classification_head(classification_head_name(self.cfg), num_classes=self.cfg.num_classes)
        if self.cfg.pixel_input == "values":
            self.use_pixel_values(model)
        return model

    def use_pixel_values(self, model) -> None:
        """Put a :class:`PixelValueEmbedding` in place of the model's token table."""
        if not callable(getattr(model, "replace_token_embedding", None)):
            raise OptionError(
                f"--pixel-input values needs a model that can replace its token embedding "
                f"(a mega_encoder architecture); {type(model).__name__} cannot. Use "
                "--pixel-input tokens"
            )
        table = model.encoder.embed_tokens
        model.replace_token_embedding(PixelValueEmbedding(
            table.num_embeddings, table.embedding_dim, self.dictionary.nspecial,
            self.cfg.pixel_mean, self.cfg.pixel_std, padding_idx=table.padding_idx,
        ))

    def max_positions(self):
        return self.num_pixels
