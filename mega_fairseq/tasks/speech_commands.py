"""``speech_commands``: classification of raw waveforms (the Speech Commands task of the
Mega paper, read from audio files), for ``mega_sc_raw`` and ``raw_audio_cnn``.

Data (``DATA`` is the task's positional argument), either layout:

1. **Manifests** ``DATA/{split}.tsv``: the first line is the root folder of the audio
   files (absolute, or relative to ``DATA``), then one clip per line,
   ``relative/path.wav<TAB>label``. Blank lines are skipped.
2. **The Speech Commands folder** (``speech_commands_v0.02`` as unpacked): ``DATA/<label>/
   <file>.wav`` with ``DATA/validation_list.txt`` and ``DATA/testing_list.txt``; split
   ``valid`` (or ``val``) is the validation list, ``test`` the testing list, ``train``
   every other file in the folders of the label list (``_background_noise_`` and folders
   of other labels are not read). Used when ``DATA/{split}.tsv`` does not exist.

The authors' code reads the folder layout too: for all 35 classes it splits by these two
lists and zero-pads short clips; for its 10-class task (the released checkpoint: ``yes no
up down left right on off stop go``) it drops the clips shorter than 16000 samples and
splits the rest at random, stratified 70/15/15 (scikit-learn, seeds 0 and 1), which this
task does not reproduce: write manifests for such a split.

Labels (``--labels``, class ids in the order given): a comma-separated list, or ``sc10``
/ ``sc35`` (the original's 10 and 35 classes in its class-id order, needed to use its
checkpoint); default: ``DATA/labels.txt`` (one label per line) if it exists, else for
manifests the sorted labels of ``train.tsv``, for the folder layout ``sc10``. The list is
kept in fairseq's task state, which checkpoints save, so a checkpoint keeps its classes.
A manifest label not in the list is an error naming the manifest, the line and the list.

Audio: read with ``soundfile`` (libsndfile, bundled in its wheels; no torchaudio): WAV
(PCM 8/16/24/32-bit or float) and FLAC, mono, at exactly ``--sample-rate`` (16000; no
resampling), as floats in [-1, 1) (16-bit PCM: value / 32768, as the original's
``audio / 2**15``). Every file's header is checked when a split is loaded: a missing or
unreadable file, another format, sample rate or channel count is an error naming the file.

Length (``--clip-length`` samples, default 16000 = 1 s): a longer clip keeps its first
``--clip-length`` samples (``--long-clips crop``, the original's truncation) or is dropped
or refused (``drop``/``error``). A shorter clip is zero-padded at the end
(``--short-clips pad``, the original's 35-class preparation: the model reads the zeros as
silence), dropped (``drop``, the original's 10-class preparation) or kept at its length
(``mask``: batches are padded and the model masks the padding through ``src_lengths``).

Normalisation (the original's): ``(x - mean) / (std + 1e-5)`` with the mean and (N-1)
standard deviation of all training samples after the length rule (padding zeros
included, except with ``mask``), computed once when the first split is loaded and
kept in the task state (saved with checkpoints, restored by ``fairseq-validate``);
``--audio-mean``/``--audio-std`` set them (a converted checkpoint needs the statistics of
its training data).

Samples: ``net_input = {"src_tokens": B x T float waveforms (right-padded with 0.0),
"src_lengths": B}``, ``target``: B class ids, ``ntokens``: the real samples. Criterion:
``lra_cross_entropy`` (it reads the head this task registers, ``--classification-head-name``).
"""

import logging
import os
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import II, MISSING

from fairseq.data import FairseqDataset
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

from mega_fairseq.errors import DataError, MissingDataError, OptionError
from mega_fairseq.tasks.lra_common import classification_head_name
from mega_fairseq.tasks.model_limits import check_model_accepts

logger = logging.getLogger(__name__)

SHORT_CLIPS = ChoiceEnum(["pad", "drop", "mask"])
LONG_CLIPS = ChoiceEnum(["crop", "drop", "error"])
# libsndfile's major formats this task accepts (WAVEX / RF64 / W64: WAV containers)
SUPPORTED_FORMATS = {"WAV": "WAV", "WAVEX": "WAV", "RF64": "WAV", "W64": "WAV", "FLAC": "FLAC"}
NORMALISATION_EPS = 1e-5  # the original's (x - mean) / (std + 1e-5)

# the class lists of the authors' speech-commands data, in their class-id order
ORIGINAL_LABELS = {
    "sc10": ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"),
    "sc35": ("bed", "cat", "down", "five", "forward", "go", "house", "left", "marvin", "no",
             "on", "right", "sheila", "tree", "up", "visual", "yes", "backward", "bird", "dog",
             "eight", "follow", "four", "happy", "learn", "nine", "off", "one", "seven", "six",
             "stop", "three", "two", "wow", "zero"),
}
FOLDER_LISTS = {"valid": "validation_list.txt", "val": "validation_list.txt", "test": "testing_list.txt"}


def _soundfile():
    try:
        import soundfile
    except ImportError:  # pragma: no cover - an install without the dependency
        raise MissingDataError(
            "the speech_commands task reads audio with the 'soundfile' package: pip install soundfile"
        ) from None
    return soundfile


@dataclass
class SpeechCommandsConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "folder with {split}.tsv manifests, or the "
                                                 "Speech Commands folder layout"})
    labels: str = field(
        default="",
        metadata={"help": "class labels in class-id order: comma-separated, or sc10 / sc35 (the "
                  "original's lists); default DATA/labels.txt, else the sorted labels of train.tsv "
                  "(folder layout: sc10)"},
    )
    num_classes: int = field(default=-1, metadata={"help": "number of classes (default: the labels)"})
    sample_rate: int = field(default=16000, metadata={"help": "sample rate every file must have (Hz)"})
    clip_length: int = field(default=16000, metadata={"help": "samples per clip (see --short-clips, --long-clips)"})
    short_clips: SHORT_CLIPS = field(
        default="pad",
        metadata={"help": "clips shorter than --clip-length: 'pad' with zeros at the end, 'drop', or "
                  "'mask' (keep the length; the model masks the batch padding)"},
    )
    long_clips: LONG_CLIPS = field(
        default="crop", metadata={"help": "clips longer than --clip-length: keep the first samples "
                                  "('crop'), 'drop' them, or 'error'"},
    )
    audio_mean: Optional[float] = field(
        default=None, metadata={"help": "normalisation mean (default: computed from the train split)"}
    )
    audio_std: Optional[float] = field(
        default=None, metadata={"help": "normalisation standard deviation (default: from the train split)"}
    )
    no_shuffle: bool = field(default=False, metadata={"help": "keep the data order"})
    classification_head_name: str = II("criterion.classification_head_name")
    seed: int = II("common.seed")


class Clip(NamedTuple):
    path: str
    label: str
    where: str  # "MANIFEST line N" or the folder list it came from, for error messages


class ClipInfo(NamedTuple):
    path: str
    target: int
    frames: int  # samples in the file
    length: int  # samples the task reads (after --clip-length and the length rules)


# ---------------------------------------------------------------- reading the data
def read_manifest(path: str) -> List[Clip]:
    """The clips of a ``{split}.tsv`` manifest (root folder line, then path<TAB>label)."""
    if not os.path.exists(path):
        raise MissingDataError(f"manifest {path} not found")
    clips: List[Clip] = []
    root = None
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            if root is None:
                if "\t" in text:
                    raise DataError(
                        f"{path}: line {number} must be the root folder of the audio files, got "
                        f"{text!r} (a manifest starts with the root folder, then path<TAB>label lines)"
                    )
                root = text if os.path.isabs(text) else os.path.join(os.path.dirname(path), text)
                continue
            fields = text.split("\t")
            if len(fields) != 2 or not fields[0] or not fields[1].strip():
                raise DataError(
                    f"{path}: line {number}: expected 'relative/path.wav<TAB>label', got {text!r}"
                )
            clips.append(Clip(os.path.join(root, fields[0]), fields[1].strip(), f"{path} line {number}"))
    if root is None:
        raise DataError(f"{path} is empty: it must start with the root folder of the audio files")
    return clips


def manifest_labels(path: str) -> List[str]:
    """The sorted distinct labels of a manifest."""
    return sorted({clip.label for clip in read_manifest(path)})


def is_folder_layout(data: str) -> bool:
    return all(os.path.exists(os.path.join(data, name)) for name in set(FOLDER_LISTS.values()))


def read_folder_split(data: str, split: str, labels: Sequence[str]) -> List[Clip]:
    """The clips of ``split`` in the Speech Commands folder layout (see the module docstring)."""
    wanted = set(labels)

    def listed(name: str) -> List[str]:
        with open(os.path.join(data, name), encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]

    if split in FOLDER_LISTS:
        name = FOLDER_LISTS[split]
        entries = [entry for entry in listed(name) if entry.split("/")[0] in wanted]
        return [Clip(os.path.join(data, entry), entry.split("/")[0], f"{name} of {data}") for entry in entries]
    if split != "train":
        raise MissingDataError(
            f"{os.path.join(data, split + '.tsv')} not found; the Speech Commands folder layout of "
            f"{data} has the splits train, valid (or val) and test"
        )
    held_out = set(listed(FOLDER_LISTS["valid"])) | set(listed(FOLDER_LISTS["test"]))
    clips = []
    for label in labels:
        folder = os.path.join(data, label)
        if not os.path.isdir(folder):
            raise MissingDataError(f"{folder} not found: the folder of label {label!r} of the label list")
        for name in sorted(os.listdir(folder)):
            entry = f"{label}/{name}"
            if name.lower().endswith((".wav", ".flac")) and entry not in held_out:
                clips.append(Clip(os.path.join(folder, name), label, f"folder {folder}"))
    return clips


def probe_clip(clip: Clip, sample_rate: int) -> int:
    """The number of samples of ``clip``'s file after checking its header (exists, readable,
    WAV or FLAC, mono, ``sample_rate``); errors name the file."""
    soundfile = _soundfile()
    if not os.path.isfile(clip.path):
        raise MissingDataError(f"audio file {clip.path} not found ({clip.where})")
    try:
        info = soundfile.info(clip.path)
    except Exception as error:  # soundfile raises its own error types (LibsndfileError, RuntimeError)
        raise DataError(f"audio file {clip.path} ({clip.where}) cannot be read: {error}") from None
    if info.format not in SUPPORTED_FORMATS:
        raise DataError(f"audio file {clip.path} ({clip.where}) is {info.format_info or info.format}; "
                        "the speech_commands task reads WAV and FLAC files")
    if info.samplerate != sample_rate:
        raise DataError(
            f"audio file {clip.path} ({clip.where}) has a sample rate of {info.samplerate} Hz, not "
            f"{sample_rate} Hz (--sample-rate); resample it first (e.g. sox IN -r {sample_rate} OUT)"
        )
    if info.channels != 1:
        raise DataError(f"audio file {clip.path} ({clip.where}) has {info.channels} channels; the "
                        "speech_commands task reads mono audio")
    if info.frames <= 0:
        raise DataError(f"audio file {clip.path} ({clip.where}) holds no samples")
    return int(info.frames)


def read_samples(path: str, length: int) -> np.ndarray:
    """The first ``length`` samples of ``path`` as float32 in [-1, 1) (fewer if the file is
    shorter); errors name the file."""
    soundfile = _soundfile()
    try:
        samples, _ = soundfile.read(path, frames=length, dtype="float32", always_2d=False)
    except Exception as error:
        raise DataError(f"audio file {path} cannot be read: {error}") from None
    if samples.ndim != 1:
        raise DataError(f"audio file {path} has {samples.shape[1]} channels; the speech_commands task reads mono audio")
    return samples


def _progress(items, description: str):
    """tqdm over ``items`` on terminals (silent in logs and tests)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=description, unit="file", disable=None, leave=False)


# ---------------------------------------------------------------- the dataset
class AudioClipDataset(FairseqDataset):
    """Clips as normalised float waveforms (see the module docstring).

    Item ``i``: ``{"id": i, "source": FloatTensor of clip length, "target": class id}``;
    collated: ``net_input.src_tokens`` B x T (right-padded with 0.0), ``src_lengths`` B."""

    def __init__(self, clips: Sequence[ClipInfo], clip_length: int, pad_short: bool, mean: float,
                 std: float, shuffle: bool, seed: int):
        super().__init__()
        self.clips = list(clips)
        self.clip_length = clip_length
        self.pad_short = pad_short
        self.mean = float(mean)
        self.scale = 1.0 / (float(std) + NORMALISATION_EPS)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 1
        self._sizes = np.array([clip.length for clip in self.clips], dtype=np.int64)

    def raw_waveform(self, index: int) -> np.ndarray:
        """Clip ``index`` before normalisation: its samples up to the clip length, zero-padded
        to the clip length with ``--short-clips pad``."""
        clip = self.clips[index]
        samples = read_samples(clip.path, self.clip_length)
        if len(samples) < clip.length:
            samples = np.pad(samples, (0, clip.length - len(samples)))
        return samples[:clip.length]

    def __getitem__(self, index: int):
        waveform = (self.raw_waveform(index) - self.mean) * self.scale
        return {"id": index, "source": torch.from_numpy(waveform.astype(np.float32)),
                "target": self.clips[index].target}

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def sizes(self) -> np.ndarray:
        return self._sizes

    def num_tokens(self, index: int) -> int:
        return int(self._sizes[index])

    def size(self, index: int) -> int:
        return int(self._sizes[index])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def ordered_indices(self) -> np.ndarray:
        """A new permutation per epoch (``--seed``, epoch) when shuffling; equal lengths
        next to each other (stable sort) so that batches carry little padding."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self))
        else:
            order = np.arange(len(self))
        return order[np.argsort(self._sizes[order], kind="stable")]

    def collater(self, samples):
        """Items -> ``{"id", "nsentences", "ntokens", "net_input": {"src_tokens": B x T,
        "src_lengths": B}, "target": B}``."""
        if not samples:
            return {}
        lengths = torch.tensor([len(s["source"]) for s in samples], dtype=torch.long)
        waveforms = torch.zeros(len(samples), int(lengths.max()))
        for row, sample in enumerate(samples):
            waveforms[row, : len(sample["source"])] = sample["source"]
        return {
            "id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
            "nsentences": len(samples),
            "ntokens": int(lengths.sum()),
            "net_input": {"src_tokens": waveforms, "src_lengths": lengths},
            "target": torch.tensor([s["target"] for s in samples], dtype=torch.long),
        }


# ---------------------------------------------------------------- the task
@register_task("speech_commands", dataclass=SpeechCommandsConfig)
class SpeechCommandsTask(FairseqTask):
    """Raw-waveform classification (see the module docstring)."""

    cfg: SpeechCommandsConfig

    def __init__(self, cfg: SpeechCommandsConfig):
        super().__init__(cfg)
        self._clip_infos = {}

    @classmethod
    def setup_task(cls, cfg: SpeechCommandsConfig, **kwargs):
        """Checks the options; the labels and statistics are resolved when first needed
        (a checkpoint's task state brings them, see :attr:`labels`)."""
        for option in ("sample_rate", "clip_length"):
            value = getattr(cfg, option)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise OptionError(f"--{option.replace('_', '-')} must be a positive integer, got {value!r}")
        if (cfg.audio_mean is None) != (cfg.audio_std is None):
            raise OptionError("give both --audio-mean and --audio-std, or neither (then they are "
                              "computed from the train split)")
        if cfg.audio_std is not None and not cfg.audio_std > 0:
            raise OptionError(f"--audio-std must be positive, got {cfg.audio_std}")
        return cls(cfg)

    # The label list and the normalisation statistics live in fairseq's task state
    # (``self.state``), which checkpoints save ("task_state") and fairseq-validate /
    # load_model_ensemble_and_task restore before the model is built.
    @property
    def labels(self) -> List[str]:
        """The class labels in class-id order (see the module docstring)."""
        labels = self.state.state_dict.get("labels")
        if labels is None:
            labels = self.resolve_labels(self.cfg)
            if self.cfg.num_classes not in (-1, None) and self.cfg.num_classes != len(labels):
                raise OptionError(f"--num-classes {self.cfg.num_classes} does not match the "
                                  f"{len(labels)} labels ({', '.join(labels)})")
            self.state.merge_state_dict({"labels": list(labels)})
            logger.info("speech_commands: %d classes: %s", len(labels), " ".join(labels))
        return list(labels)

    @staticmethod
    def resolve_labels(cfg: SpeechCommandsConfig) -> List[str]:
        """The label list (see the module docstring)."""
        spec = (cfg.labels or "").strip()
        if spec in ORIGINAL_LABELS:
            labels = list(ORIGINAL_LABELS[spec])
        elif spec:
            labels = [label.strip() for label in spec.split(",")]
        elif not os.path.isdir(cfg.data):
            raise MissingDataError(f"data folder {cfg.data} not found")
        elif os.path.exists(os.path.join(cfg.data, "labels.txt")):
            with open(os.path.join(cfg.data, "labels.txt"), encoding="utf-8") as handle:
                labels = [line.strip() for line in handle if line.strip()]
        elif os.path.exists(os.path.join(cfg.data, "train.tsv")):
            labels = manifest_labels(os.path.join(cfg.data, "train.tsv"))
        elif is_folder_layout(cfg.data):
            labels = list(ORIGINAL_LABELS["sc10"])
        else:
            raise MissingDataError(
                f"no label list: give --labels, or put labels.txt or train.tsv in {cfg.data}"
            )
        if not labels or any(not label for label in labels):
            raise OptionError(f"bad label list {labels!r}: empty labels")
        if len(set(labels)) != len(labels):
            raise OptionError(f"the label list repeats labels: {labels}")
        return labels

    # ------------------------------------------------------------ splits
    def split_clips(self, split: str) -> List[Clip]:
        manifest = os.path.join(self.cfg.data, f"{split}.tsv")
        if os.path.exists(manifest) or not is_folder_layout(self.cfg.data):
            clips = read_manifest(manifest)
            ids = self.label_ids
            unknown = [clip for clip in clips if clip.label not in ids]
            if unknown:
                raise DataError(
                    f"{unknown[0].where}: label {unknown[0].label!r} is not in the label list "
                    f"({', '.join(self.labels)}; {len(unknown)} such lines); give the full list with "
                    f"--labels or {os.path.join(self.cfg.data, 'labels.txt')}"
                )
            return clips
        return read_folder_split(self.cfg.data, split, self.labels)

    @property
    def label_ids(self):
        return {label: index for index, label in enumerate(self.labels)}

    def clip_infos(self, split: str) -> List[ClipInfo]:
        """The clips of ``split`` that the length rules keep, with their lengths (checked
        once per split)."""
        if split not in self._clip_infos:
            self._clip_infos[split] = self._check_clips(split)
        return self._clip_infos[split]

    def _check_clips(self, split: str) -> List[ClipInfo]:
        clips = self.split_clips(split)
        if not clips:
            raise DataError(f"split {split!r} of {self.cfg.data} holds no clips")
        ids, limit = self.label_ids, self.cfg.clip_length
        kept, short_dropped, long_dropped = [], 0, 0
        for clip in _progress(clips, f"checking {split} audio"):
            frames = probe_clip(clip, self.cfg.sample_rate)
            if frames > limit:
                if self.cfg.long_clips == "error":
                    raise DataError(
                        f"audio file {clip.path} ({clip.where}) has {frames} samples, more than "
                        f"--clip-length {limit}; use --long-clips crop (keep the first {limit}) or drop"
                    )
                if self.cfg.long_clips == "drop":
                    long_dropped += 1
                    continue
            if frames < limit and self.cfg.short_clips == "drop":
                short_dropped += 1
                continue
            length = frames if (frames < limit and self.cfg.short_clips == "mask") else limit
            kept.append(ClipInfo(clip.path, ids[clip.label], frames, length))
        if short_dropped or long_dropped:
            logger.info("%s: dropped %d clips shorter and %d longer than --clip-length %d",
                        split, short_dropped, long_dropped, limit)
        if not kept:
            raise DataError(f"split {split!r}: no clip is left after the length rules "
                            f"(--clip-length {limit}, --short-clips, --long-clips)")
        return kept

    def normalisation(self) -> Tuple[float, float]:
        """(mean, std) of the training samples (``--audio-mean``/``--audio-std`` when given);
        else computed once and kept in the task state (saved with checkpoints)."""
        if self.cfg.audio_mean is not None:
            return float(self.cfg.audio_mean), float(self.cfg.audio_std)
        state = self.state.state_dict
        if state.get("audio_mean") is not None:
            return float(state["audio_mean"]), float(state["audio_std"])
        clips = self.clip_infos("train")
        reader = AudioClipDataset(clips, self.cfg.clip_length, self.cfg.short_clips == "pad", 0.0, 1.0,
                                  shuffle=False, seed=0)
        total, total_sq, count = 0.0, 0.0, 0
        for index in _progress(range(len(reader)), "normalisation statistics"):
            samples = reader.raw_waveform(index).astype(np.float64)
            total += float(samples.sum())
            total_sq += float(np.square(samples).sum())
            count += len(samples)
        mean = total / count
        std = float(np.sqrt(max(total_sq - count * mean * mean, 0.0) / max(count - 1, 1)))
        if not std > 0:
            raise DataError(f"the training clips of {self.cfg.data} are all silent (standard deviation 0)")
        self.state.merge_state_dict({"audio_mean": mean, "audio_std": std})
        logger.info("normalisation from %d training samples: mean %.6g, std %.6g", count, mean, std)
        return mean, std

    def load_dataset(self, split: str, combine: bool = False, **kwargs):
        if not os.path.isdir(self.cfg.data):
            raise MissingDataError(f"data folder {self.cfg.data} not found")
        mean, std = self.normalisation()
        clips = self.clip_infos(split)
        self.datasets[split] = AudioClipDataset(
            clips, self.cfg.clip_length, self.cfg.short_clips == "pad", mean, std,
            shuffle=not self.cfg.no_shuffle and split == "train",
            seed=self.cfg.seed if isinstance(self.cfg.seed, int) else 1,  # 1: fairseq's --seed default
        )
        counts = np.bincount([clip.target for clip in clips], minlength=len(self.labels))
        logger.info("loaded %s: %d clips (%s)", split, len(clips),
                    ", ".join(f"{label} {count}" for label, count in zip(self.labels, counts)))
        return self.datasets[split]

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not callable(getattr(model, "register_classification_head", None)):
            raise OptionError(f"the speech_commands task needs a classifier of raw waveforms "
                              f"(--arch mega_sc_raw*, raw_audio_cnn); {type(model).__name__} is not one")
        check_model_accepts(model, self.cfg.clip_length, f"--clip-length {self.cfg.clip_length}")
        model.register_classification_head(classification_head_name(self.cfg), num_classes=len(self.labels))
        return model

    def max_positions(self):
        return self.cfg.clip_length

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

