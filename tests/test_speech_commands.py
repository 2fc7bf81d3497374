"""The ``speech_commands`` task (audio reading, length rules, normalisation, labels, bad
input), the ``mega_sc_raw`` models and the ``raw_audio_cnn`` baseline, on generated sine
tones written as WAV and FLAC; end to end through fairseq-train / fairseq-validate (slow)."""

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from conftest import REPO, console_script, run_cli

from fairseq.models import ARCH_CONFIG_REGISTRY

from mega_fairseq.errors import DataError, MissingDataError, OptionError
from mega_fairseq.models.mega_sc_raw import MegaSCRawModel
from mega_fairseq.models.raw_audio_cnn import RawAudioCNNConfig, RawAudioCNNModel
from mega_fairseq.tasks.speech_commands import (
    ORIGINAL_LABELS,
    SpeechCommandsConfig,
    SpeechCommandsTask,
)

HEAD = "lra_classification_head"
RATE = 16000
TONES = {"low": 220.0, "mid": 660.0, "high": 1980.0}


def _tone(rng, frequency: float, length: int) -> np.ndarray:
    """A sine of ``frequency`` (+-3 %) with random phase and amplitude, plus a little noise."""
    t = np.arange(length) / RATE
    wave = rng.uniform(0.15, 0.5) * np.sin(2 * np.pi * frequency * rng.uniform(0.97, 1.03) * t
                                           + rng.uniform(0, 2 * np.pi))
    return (wave + 0.02 * rng.standard_normal(length)).astype(np.float32)


def _write_tones(data: Path, sizes=(("train", 120), ("valid", 30)), lengths=(600, 800), seed=0) -> Path:
    """Manifests ``DATA/{split}.tsv`` of tones (classes in turn), every other file FLAC."""
    rng = np.random.default_rng(seed)
    audio = data / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    for split, count in sizes:
        lines = ["audio"]  # the root folder, relative to the manifest's folder
        for index in range(count):
            label = list(TONES)[index % len(TONES)]
            name = f"{split}_{index}.{'flac' if index % 2 else 'wav'}"
            length = int(rng.integers(lengths[0], lengths[1] + 1))
            soundfile.write(audio / name, _tone(rng, TONES[label], length), RATE, subtype="PCM_16")
            lines.append(f"{name}\t{label}")
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return data


def _task(data: Path, **options) -> SpeechCommandsTask:
    cfg = SpeechCommandsConfig(data=str(data), seed=1, classification_head_name=HEAD, **options)
    return SpeechCommandsTask.setup_task(cfg)


def _manifest(data: Path, rows, root="audio") -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / "audio").mkdir(exist_ok=True)
    (data / "train.tsv").write_text("\n".join([root] + [f"{p}\t{l}" for p, l in rows]) + "\n")


# --------------------------------------------------------------------------- reading
@pytest.mark.parametrize("name, subtype", [
    ("a.wav", "PCM_16"), ("a.flac", "PCM_16"), ("a.flac", "PCM_24"), ("a.wav", "FLOAT"),
])
def test_reads_wav_and_flac_as_floats(tmp_path, name, subtype):
    rng = np.random.default_rng(0)
    wave = _tone(rng, 440.0, 700)
    _manifest(tmp_path, [(name, "x"), (name, "y")])
    soundfile.write(tmp_path / "audio" / name, wave, RATE, subtype=subtype)
    task = _task(tmp_path, clip_length=700, audio_mean=0.0, audio_std=1.0)
    task.load_dataset("train")
    source = task.datasets["train"][0]["source"].numpy()
    expected = soundfile.read(tmp_path / "audio" / name, dtype="float32")[0] / (1.0 + 1e-5)
    assert source.dtype == np.float32 and source.shape == (700,)
    np.testing.assert_allclose(source, expected, atol=1e-7)
    if subtype == "PCM_16":  # 16-bit PCM reads as value / 32768, as the original's audio / 2**15
        integers = soundfile.read(tmp_path / "audio" / name, dtype="int16")[0]
        np.testing.assert_allclose(source * (1.0 + 1e-5), integers / 32768.0, atol=1e-7)


@pytest.mark.parametrize("short, long, lengths", [
    ("pad", "crop", [800, 800, 800]),
    ("drop", "crop", [800, 800]),
    ("mask", "crop", [500, 800, 800]),
    ("pad", "drop", [800, 800]),
])
def test_length_rules(tmp_path, short, long, lengths):
    rng = np.random.default_rng(1)
    (tmp_path / "audio").mkdir(parents=True)
    waves = {}
    for index, length in enumerate((500, 800, 1000)):
        waves[index] = _tone(rng, 440.0, length)
        soundfile.write(tmp_path / "audio" / f"c{index}.wav", waves[index], RATE, subtype="FLOAT")
    _manifest(tmp_path, [(f"c{i}.wav", "a") for i in range(3)])
    task = _task(tmp_path, clip_length=800, short_clips=short, long_clips=long, audio_mean=0.5, audio_std=2.0)
    dataset = task.load_dataset("train")
    assert sorted(int(s) for s in dataset.sizes) == sorted(lengths)
    items = {dataset.clips[i].frames: dataset[i]["source"].numpy() for i in range(len(dataset))}
    scale = 1.0 / (2.0 + 1e-5)
    if 500 in items:  # short: zero-padded at the end before normalisation (pad) or kept (mask)
        np.testing.assert_allclose(items[500][:500], (waves[0] - 0.5) * scale, rtol=1e-6, atol=1e-6)
        if short == "pad":
            np.testing.assert_allclose(items[500][500:], -0.5 * scale, rtol=1e-6)
    if 1000 in items:  # long: the first 800 samples
        np.testing.assert_allclose(items[1000], (waves[2][:800] - 0.5) * scale, rtol=1e-6, atol=1e-6)
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    assert batch["net_input"]["src_tokens"].shape == (len(lengths), 800)
    assert batch["net_input"]["src_tokens"].dtype == torch.float32
    assert batch["net_input"]["src_lengths"].tolist() == [len(dataset[i]["source"]) for i in range(len(dataset))]
    assert batch["ntokens"] == sum(lengths)
    if short == "mask":
        row = [i for i in range(len(dataset)) if dataset.clips[i].frames == 500][0]
        assert torch.all(batch["net_input"]["src_tokens"][row, 500:] == 0)


def test_long_clip_error_and_statistics(tmp_path):
    data = _write_tones(tmp_path / "data", sizes=(("train", 12), ("valid", 3)), lengths=(600, 900))
    with pytest.raises(DataError, match=r"has \d+ samples, more than --clip-length 800; use --long-clips crop"):
        _task(data, clip_length=800, long_clips="error").load_dataset("train")
    # statistics of all training samples after the length rule (padding zeros included)
    task = _task(data, clip_length=800)
    task.load_dataset("valid")
    raw = np.concatenate([np.pad(w[:800], (0, max(0, 800 - len(w))))
                          for w in (soundfile.read(p, dtype="float32")[0] for p in _paths(data, "train"))])
    assert task.state.state_dict["audio_mean"] == pytest.approx(float(raw.mean()), abs=1e-9)
    assert task.state.state_dict["audio_std"] == pytest.approx(float(raw.astype(np.float64).std(ddof=1)), rel=1e-6)
    assert task.labels == ["high", "low", "mid"]  # sorted labels of train.tsv
    item = task.datasets["valid"][0]
    assert abs(float(item["source"].std()) - 1.0) < 0.5  # roughly unit scale


def _paths(data: Path, split: str):
    lines = (data / f"{split}.tsv").read_text().splitlines()
    return [data / lines[0] / line.split("\t")[0] for line in lines[1:]]


def test_labels_options(tmp_path):
    data = _write_tones(tmp_path / "data", sizes=(("train", 6),))
    assert _task(data, labels="mid,low,high", audio_mean=0.0, audio_std=1.0).labels == ["mid", "low", "high"]
    assert _task(data, labels="sc10").labels == list(ORIGINAL_LABELS["sc10"])
    (data / "labels.txt").write_text("low\nmid\nhigh\n")
    task = _task(data, audio_mean=0.0, audio_std=1.0)
    task.load_dataset("train")
    assert task.labels == ["low", "mid", "high"]
    assert [c.target for c in task.datasets["train"].clips][:3] == [0, 1, 2]  # low, mid, high in turn
    with pytest.raises(OptionError, match="--num-classes 4 does not match the 3 labels"):
        _ = _task(data, num_classes=4).labels


# --------------------------------------------------------------------------- bad input
def _bad(tmp_path, write, match, error=DataError, **options):
    rng = np.random.default_rng(2)
    (tmp_path / "audio").mkdir(parents=True, exist_ok=True)
    soundfile.write(tmp_path / "audio" / "good.wav", _tone(rng, 440.0, 800), RATE, subtype="PCM_16")
    rows = write(tmp_path / "audio", rng)
    _manifest(tmp_path, [("good.wav", "a")] + rows)
    with pytest.raises(error, match=match):
        _task(tmp_path, clip_length=800, **options).load_dataset("train")


def test_missing_audio_file_names_it(tmp_path):
    _bad(tmp_path, lambda audio, rng: [("gone.wav", "a")],
         r"audio file .*gone\.wav not found \(.*train\.tsv line 3\)", MissingDataError)


def test_unreadable_audio_file_names_it(tmp_path):
    def write(audio, rng):
        (audio / "broken.wav").write_bytes(b"RIFF not really a wave file" * 10)
        return [("broken.wav", "a")]
    _bad(tmp_path, write, r"audio file .*broken\.wav \(.*train\.tsv line 3\) cannot be read")


def test_wrong_sample_rate_names_the_file(tmp_path):
    def write(audio, rng):
        soundfile.write(audio / "slow.flac", _tone(rng, 440.0, 400), 8000, subtype="PCM_16")
        return [("slow.flac", "a")]
    _bad(tmp_path, write, r"slow\.flac .*sample rate of 8000 Hz, not 16000 Hz \(--sample-rate\)")


def test_stereo_and_other_formats_are_refused(tmp_path):
    def stereo(audio, rng):
        soundfile.write(audio / "two.wav", np.stack([_tone(rng, 440.0, 800)] * 2, axis=1), RATE)
        return [("two.wav", "a")]
    _bad(tmp_path / "stereo", stereo, r"two\.wav .*has 2 channels; .*mono")

    def aiff(audio, rng):
        soundfile.write(audio / "x.aiff", _tone(rng, 440.0, 800), RATE, format="AIFF", subtype="PCM_16")
        return [("x.aiff", "a")]
    _bad(tmp_path / "aiff", aiff, r"x\.aiff .*reads WAV and FLAC files")


def test_label_not_in_the_list_names_the_manifest_line(tmp_path):
    _bad(tmp_path, lambda audio, rng: [("good.wav", "b"), ("good.wav", "c")],
         r"train\.tsv line 3: label 'b' is not in the label list \(a; 2 such lines\)", labels="a")


def test_bad_manifests(tmp_path):
    with pytest.raises(MissingDataError, match=r"manifest .*valid\.tsv not found"):
        _task(_write_tones(tmp_path / "d1", sizes=(("train", 3),)), audio_mean=0.0, audio_std=1.0).load_dataset("valid")
    (tmp_path / "d2").mkdir()
    (tmp_path / "d2" / "train.tsv").write_text("audio\nno-tab-here\n")
    with pytest.raises(DataError, match=r"train\.tsv: line 2: expected 'relative/path\.wav<TAB>label'"):
        _task(tmp_path / "d2", labels="a").load_dataset("train")
    (tmp_path / "d3").mkdir()
    (tmp_path / "d3" / "train.tsv").write_text("x.wav\ta\n")
    with pytest.raises(DataError, match="must be the root folder"):
        _task(tmp_path / "d3", labels="a").load_dataset("train")
    with pytest.raises(OptionError, match="give both --audio-mean and --audio-std"):
        _task(tmp_path / "d3", audio_mean=0.0)
    with pytest.raises(MissingDataError, match="data folder .* not found"):
        _task(tmp_path / "nowhere", labels="a").load_dataset("train")


def test_speech_commands_folder_layout(tmp_path):
    rng = np.random.default_rng(3)
    for label in ("yes", "no", "cat", "_background_noise_"):
        (tmp_path / label).mkdir()
        for index in range(3):
            soundfile.write(tmp_path / label / f"{index}.wav", _tone(rng, 300.0, 16000 - 100 * index), RATE,
                            subtype="PCM_16")
    (tmp_path / "validation_list.txt").write_text("yes/0.wav\ncat/0.wav\n")
    (tmp_path / "testing_list.txt").write_text("no/1.wav\n")
    task = _task(tmp_path, labels="yes,no")
    sizes = {split: len(task.load_dataset(split)) for split in ("train", "valid", "test")}
    assert sizes == {"train": 4, "valid": 1, "test": 1}  # cat and the noise folder are not read
    assert sorted(c.target for c in task.datasets["train"].clips) == [0, 0, 1, 1]
    assert _task(tmp_path).labels == list(ORIGINAL_LABELS["sc10"])  # the original's default classes


# --------------------------------------------------------------------------- models
def _model(arch="mega_sc_raw_tiny", max_positions=800, **options):
    args = argparse.Namespace(**options)
    ARCH_CONFIG_REGISTRY[arch](args)

    class Task:
        def max_positions(self):
            return max_positions

    if arch == "raw_audio_cnn":
        model = RawAudioCNNModel.build_model(RawAudioCNNConfig(**options), Task())
    else:
        model = MegaSCRawModel.build_model(args, Task())
    model.register_classification_head(HEAD, num_classes=3)
    return model


def test_architectures_follow_the_original():
    base = _model("mega_sc_raw_base", 16000)
    settings = base.encoder.settings
    layer = settings.layer
    assert (layer.embed_dim, layer.hdim, layer.ffn_hidden_dim, layer.zdim, layer.ndim, settings.num_layers) == \
        (60, 120, 120, 30, 16, 6)
    assert (layer.attention_activation, layer.norm_type, layer.prenorm, layer.chunk_size, layer.truncation) == \
        ("laplace", "batchnorm", True, 1000, 1000)
    assert settings.max_positions == 16000 and not settings.scale_embedding and base.encoder.final_norm is not None
    head = base.classification_heads[HEAD]
    assert head.dense.out_features == 120 and head.out_proj.out_features == 3  # 2 x embed, as the original
    assert base.encoder.embed_tokens.weight.shape == (60,) and base.encoder.embed_tokens.bias.shape == (60,)
    same = _model("mega_sc_raw", 16000)
    assert sum(p.numel() for p in same.parameters()) == sum(p.numel() for p in base.parameters())
    big = _model("mega_sc_raw_big", 16000).encoder.settings.layer
    assert (big.embed_dim, big.hdim, big.ffn_hidden_dim, big.zdim) == (72, 144, 144, 36)
    tiny = _model("mega_sc_raw_tiny", 16000).encoder.settings
    assert (tiny.layer.embed_dim, tiny.layer.chunk_size, tiny.num_layers) == (32, 200, 2)


@pytest.mark.parametrize("arch, length, short", [("mega_sc_raw_tiny", 800, 500), ("raw_audio_cnn", 4000, 2500)])
def test_forward_shapes_and_padding_equivalence(arch, length, short):
    torch.manual_seed(0)
    if arch == "raw_audio_cnn":
        model = _model(arch, max_source_positions=length)
    else:
        model = _model(arch, length)  # chunks of 200: the last one of the short clip is padded
    model.eval()
    waves = torch.randn(3, length)
    logits, extra = model(waves, torch.tensor([length] * 3), classification_head_name=HEAD)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    if arch != "raw_audio_cnn":
        features, _ = model(waves, features_only=True)
        assert features.shape == (3, length, 32)
    # a short clip alone == the same clip in a right-padded batch (eval mode)
    alone, _ = model(waves[:1, :short], torch.tensor([short]), classification_head_name=HEAD)
    padded = waves.clone()
    padded[0, short:] = 7.0  # whatever the padding holds
    batch, extra = model(padded, torch.tensor([short, length, length - 100]), classification_head_name=HEAD)
    torch.testing.assert_close(batch[0], alone[0], atol=1e-5, rtol=1e-5)
    assert extra["padding_mask"][0].any() and not extra["padding_mask"][1].any()


def test_model_refuses_bad_inputs():
    model = _model().eval()
    with pytest.raises(ValueError, match="expected floating-point waveform samples"):
        model(torch.ones(2, 100, dtype=torch.long), classification_head_name=HEAD)
    with pytest.raises(ValueError, match=r"900 samples are longer than the model's 800 \(--max-source-positions\)"):
        model(torch.randn(1, 900), classification_head_name=HEAD)
    with pytest.raises(ValueError, match=r"src_lengths must lie in \[1, 100\]"):
        model(torch.randn(2, 100), torch.tensor([100, 0]), classification_head_name=HEAD)
    with pytest.raises(ValueError, match="no classification head named 'other'"):
        model(torch.randn(1, 100), classification_head_name="other")


# --------------------------------------------------------------------------- end to end
TRAIN = [
    "--user-dir", REPO / "mega_fairseq", "--task", "speech_commands", "--clip-length", "800",
    "--criterion", "lra_cross_entropy", "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler",
    "inverse_sqrt", "--warmup-updates", "10", "--batch-size", "16", "--cpu", "--seed", "1",
    "--no-progress-bar", "--log-format", "simple", "--log-interval", "10", "--no-epoch-checkpoints",
    "--num-workers", "0", "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
]


@pytest.mark.slow
def test_end_to_end_tones(tmp_path):
    """Three tones (220 / 660 / 1980 Hz, 600-800 samples, half WAV, half FLAC): the valid
    majority class is 33.3 %; mega_sc_raw_tiny (chunks of 200 samples: 4 per clip) reached
    100 % after 32 updates (80 % after 16) when this test was written. fairseq-validate then runs on a folder holding only the valid manifest:
    the labels and normalisation statistics come from the checkpoint's task state."""
    data = _write_tones(tmp_path / "data")
    save = tmp_path / "ckpt"
    run_cli([console_script("fairseq-train"), data, *TRAIN, "--arch", "mega_sc_raw_tiny",
             "--max-update", "40", "--save-dir", save],
            env={"OMP_NUM_THREADS": "1"})
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)["task_state"]
    assert state["labels"] == ["high", "low", "mid"] and state["audio_std"] > 0

    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    lines = (data / "valid.tsv").read_text().splitlines()
    (evaluation / "valid.tsv").write_text("\n".join([str(data / "audio")] + lines[1:]) + "\n")
    result = run_cli([console_script("fairseq-validate"), evaluation, "--user-dir", REPO / "mega_fairseq",
                      "--task", "speech_commands", "--criterion", "lra_cross_entropy", "--path",
                      save / "checkpoint_last.pt", "--valid-subset", "valid", "--cpu", "--batch-size", "32"],
                     env={"OMP_NUM_THREADS": "1"})
    match = re.search(r"valid on 'valid' subset \|.*accuracy ([0-9.]+)", result.stdout + result.stderr)
    assert match, (result.stdout + result.stderr)[-3000:]
    majority = 100.0 / 3
    assert float(match.group(1)) >= majority + 30, (match.group(1), majority)


# --------------------------------------------------------------------------- the example's data script
def test_spoken_digits_helpers():
    import prepare_spoken_digits as digits

    rate = 22050
    tone = np.sin(2 * np.pi * 500.0 * np.arange(rate) / rate)
    resampled = digits.resample(tone, rate)
    assert len(resampled) == RATE
    spectrum = np.abs(np.fft.rfft(resampled))
    assert abs(int(np.argmax(spectrum)) - 500) <= 1  # 1 s at 16 kHz: bin k is k Hz
    silence = np.zeros(1000)
    trimmed = digits.trim(np.concatenate([silence, tone[:500], silence]), margin=10)
    assert len(trimmed) in range(500, 521)
    splits = digits.split_variants([f"v{i}" for i in range(10)], 2, 3, seed=0)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [5, 2, 3]
    assert not set(splits["train"]) & (set(splits["valid"]) | set(splits["test"]))


FAKE_ESPEAK = """#!{python}
# stands in for espeak-ng where it is not installed: a 22050 Hz mono 16-bit WAV on stdout,
# a tone whose pitch depends on the text, the voice and the speed
import io, sys, wave
import numpy as np
args = sys.argv[1:]
seed = sum(map(ord, " ".join(args)))
rate = 22050
t = np.arange(int(0.4 * rate)) / rate
samples = (0.5 * np.sin(2 * np.pi * (200 + seed % 700) * t) * 32767).astype("<i2")
buffer = io.BytesIO()
with wave.open(buffer, "wb") as out:
    out.setnchannels(1); out.setsampwidth(2); out.setframerate(rate); out.writeframes(samples.tobytes())
sys.stdout.buffer.write(buffer.getvalue())
"""


def test_spoken_digits_script_writes_a_task_folder(tmp_path):
    """With the real espeak-ng where installed, else with a stand-in writing espeak-ng's
    output format, so that the script's whole path runs everywhere."""
    import shutil
    import sys

    import prepare_spoken_digits as digits

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        fake = tmp_path / "fake-espeak-ng"
        fake.write_text(FAKE_ESPEAK.format(python=sys.executable))
        fake.chmod(0o755)
        espeak = str(fake)
    out = tmp_path / "digits"
    assert digits.main(["--out-dir", str(out), "--espeak", espeak, "--voices", "en-us", "--modifiers", "none", "f3", "m3",
                        "--speeds", "170", "--pitches", "50", "--valid-variants", "1", "--test-variants", "1",
                        "--no-progress"]) == 0
    task = _task(out, clip_length=9600)
    assert task.labels == list(digits.DIGITS)
    for split in ("train", "valid", "test"):
        dataset = task.load_dataset(split)
        assert len(dataset) == 10 and sorted(c.target for c in dataset.clips) == list(range(10))
    info = soundfile.info(task.datasets["train"].clips[0].path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
