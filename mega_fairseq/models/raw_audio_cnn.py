"""``raw_audio_cnn``: a small 1-D convolutional classifier of raw waveforms, the baseline
the speech-commands example trains beside ``mega_sc_raw_tiny``.

Structure: the "M5" network of Dai et al. 2017 ("Very deep convolutional neural networks
for raw waveforms", arXiv 1610.00087), a common raw-audio baseline: a wide first
convolution (80 samples, stride 4: a learned filter bank), then three convolutions of
width 3, each followed by batch norm, ReLU and max-pooling by 4; channels C, C, 2C, 2C
(``--cnn-channels C``). The frames are averaged (over the frames that come from real
samples, from ``src_lengths``) and classified by the same kind of head as ``mega_sc_raw``
(dense -> gelu -> projection). Batch statistics include the frames of padding (with
``speech_commands --short-clips pad``, the default, every clip has the full length).

The receptive field of a final frame is 1,772 samples (about 1/9 s at 16 kHz), the
shortest input the model takes. The default width (``--cnn-channels 36``: 36,730
parameters with a 10-class head) matches ``mega_sc_raw_tiny`` (34,504 with chunks of 200);
see ``examples/speech_commands/README.md``.

Same calls as ``mega_sc_raw``: ``forward(src_tokens B x T float, src_lengths B,
classification_head_name=name)`` -> ``(B x num_classes logits, extra)``, heads registered
with ``register_classification_head``, so the ``speech_commands`` task and the
``lra_cross_entropy`` criterion drive both.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model

from mega_fairseq.errors import OptionError
from mega_fairseq.models.encoder_heads import HEAD_KINDS, MegaClassificationHead, find_head
from mega_fairseq.models.mega_sc_raw import length_padding_mask

# (kernel, stride, channel multiplier, pool) of the four convolutions
LAYERS = ((80, 4, 1, 4), (3, 1, 1, 4), (3, 1, 2, 4), (3, 1, 2, 4))


@dataclass
class RawAudioCNNConfig(FairseqDataclass):
    cnn_channels: int = field(default=36, metadata={"help": "channels C of the first two convolutions (then 2C)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout before the classification head"})
    max_source_positions: int = field(default=16000, metadata={"help": "longest waveform in samples"})


class RawAudioCNN(nn.Module):
    """The convolutions: B x T waveforms -> B x F x C' frames (and their B valid counts)."""

    def __init__(self, channels: int):
        super().__init__()
        self.blocks = nn.ModuleList()
        in_channels = 1
        for kernel, stride, multiplier, pool in LAYERS:
            out_channels = channels * multiplier
            self.blocks.append(nn.Sequential(
                nn.Conv1d(in_channels, out_channels, kernel, stride=stride),
                nn.BatchNorm1d(out_channels),
                nn.ReLU(),
                nn.MaxPool1d(pool),
            ))
            in_channels = out_channels
        self.out_channels = in_channels

    @property
    def weight(self) -> Tensor:
        """The first convolution's weight: the model's device and dtype."""
        return self.blocks[0][0].weight

    @staticmethod
    def frames(lengths: Tensor) -> Tensor:
        """Number of output frames computed from ``lengths`` samples."""
        for kernel, stride, _, pool in LAYERS:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
            lengths = torch.div(lengths, pool, rounding_mode="floor")
        return lengths

    def minimum_length(self) -> int:
        """The shortest input that leaves one frame."""
        length = 1
        for kernel, stride, _, pool in reversed(LAYERS):
            length = (length * pool - 1) * stride + kernel
        return length

    def forward(self, samples: Tensor):
        x = samples.unsqueeze(1)  # B x 1 x T
        for block in self.blocks:
            x = block(x)
        return x.transpose(1, 2)  # B x F x C'


@register_model("raw_audio_cnn", dataclass=RawAudioCNNConfig)
class RawAudioCNNModel(BaseFairseqModel):
    """See the module docstring."""

    def __init__(self, cfg: RawAudioCNNConfig):
        super().__init__()
        if cfg.cnn_channels is None or cfg.cnn_channels <= 0:
            raise OptionError(f"--cnn-channels must be a positive integer, got {cfg.cnn_channels}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise OptionError(f"--dropout must lie in [0, 1), got {cfg.dropout}")
        self.args = cfg
        self.encoder = RawAudioCNN(cfg.cnn_channels)
        self.embed_dim = self.encoder.out_channels
        self.dropout = cfg.dropout
        self._max_positions = cfg.max_source_positions
        self.classification_heads = nn.ModuleDict()

    @classmethod
    def build_model(cls, cfg: RawAudioCNNConfig, task):
        return cls(cfg)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                classification_head_name: Optional[str] = None, **kwargs):
        """src_tokens: B x T float waveforms (right-padded), src_lengths: B. Returns
        (B x num_classes logits, extra) with ``classification_head_name``, else the pooled
        B x C' features; ``extra = {"padding_mask": B x F frames}``."""
        if src_tokens.dim() != 2 or not src_tokens.dtype.is_floating_point:
            raise ValueError(f"expected B x T float waveforms, got {tuple(src_tokens.shape)} {src_tokens.dtype}")
        batch, length = src_tokens.shape
        if length < self.encoder.minimum_length():
            raise ValueError(f"raw_audio_cnn needs at least {self.encoder.minimum_length()} samples, got {length}")
        frames = self.encoder(src_tokens.to(self.encoder.weight.dtype))
        mask = length_padding_mask(src_lengths, batch, length, src_tokens.device)
        if mask is None:
            padding_mask = frames.new_zeros(frames.shape[:2], dtype=torch.bool)
        else:
            valid = self.encoder.frames(src_lengths.reshape(-1).to(frames.device)).clamp(min=1)
            padding_mask = torch.arange(frames.size(1), device=frames.device).unsqueeze(0) >= valid.unsqueeze(1)
        keep = (~padding_mask).unsqueeze(-1).type_as(frames)
        pooled = (frames * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        pooled = F.dropout(pooled, p=self.dropout, training=self.training)
        extra = {"padding_mask": padding_mask}
        if classification_head_name is None:
            return pooled, extra
        return find_head(self, HEAD_KINDS["classification"], classification_head_name)(pooled), extra

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        logits = net_output[0].float()
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)

    def register_classification_head(self, name: str, num_classes: Optional[int] = None,
                                     inner_dim: Optional[int] = None, **kwargs):
        """A head ``name``: pooled B x C' -> B x num_classes (dense of ``inner_dim``,
        default C', gelu, projection)."""
        if num_classes is None or num_classes <= 0:
            raise ValueError(f"classification head {name!r} needs a positive num_classes, got {num_classes}")
        head = MegaClassificationHead(self.embed_dim, inner_dim or self.embed_dim, num_classes, "gelu", 0.0)
        weight = self.encoder.weight
        self.classification_heads[name] = head.to(device=weight.device, dtype=weight.dtype).train(self.training)

    def max_positions(self):
        return self._max_positions
