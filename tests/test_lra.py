"""Long Range Arena pieces: the ListOps generator/evaluator, the image converter, the
``lra-text``/``lra-image`` tasks and the ``lra_cross_entropy`` criterion; end to end
through fairseq-preprocess / fairseq-train / fairseq-validate (slow)."""

import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import REPO, console_script, run_cli

import generate_listops  # noqa: E402
import images_to_pixel_sequences as img2seq  # noqa: E402

from fairseq import metrics  # noqa: E402
from fairseq.data import Dictionary, indexed_dataset  # noqa: E402

from mega_fairseq.criterions.lra_cross_entropy import (  # noqa: E402
    LRACrossEntropyConfig,
    LRACrossEntropyCriterion,
)
from mega_fairseq.tasks.lra_image import (  # noqa: E402
    LRAImageConfig,
    LRAImageTask,
    PixelValueEmbedding,
)
from mega_fairseq.tasks.lra_text import LRATextConfig, LRATextTask  # noqa: E402

HEAD = "lra_classification_head"


# --------------------------------------------------------------------------- ListOps

@pytest.mark.parametrize("expression, value", [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MED 1 5 3 ]", 3),
    ("[SM 8 5 ]", 3),
    ("[MED 1 4 ]", 2),                      # even count: floor of the mean of the middle two
    ("[MED 9 1 8 2 ]", 5),                  # middle two 2, 8
    ("[SM 9 9 9 ]", 7),
    ("[MIN [MAX 1 2 ] [SM 5 6 ] 3 ]", 1),   # MIN(2, 1, 3)
    ("[MAX [MED [SM 4 4 ] 0 7 ] [MIN 6 8 ] ]", 7),  # MAX(MED(8, 0, 7), 6)
    ("7", 7),
])
def test_listops_evaluator_on_hand_made_expressions(expression, value):
    assert generate_listops.evaluate_expression(expression) == value


@pytest.mark.parametrize("expression, message", [
    ("[MAX 2 9", "not closed"),
    ("[MAX 2 ] ]", "after the end"),
    ("] 3", "unbalanced"),
    ("[AVG 1 2 ]", "unknown ListOps token"),
    ("[MIN ]", "no arguments"),
    ("", "empty"),
])
def test_listops_evaluator_rejects_malformed_expressions(expression, message):
    with pytest.raises(ValueError, match=message):
        generate_listops.evaluate_expression(expression)


def _nesting(tokens):
    depth = deepest = 0
    for token in tokens:
        if token.startswith("["):
            depth += 1
            deepest = max(deepest, depth)
        elif token == "]":
            depth -= 1
    return deepest


def _max_arguments(tokens):
    stack, most = [], 0
    for token in tokens:
        if token.startswith("["):
            if stack:
                stack[-1] += 1
            stack.append(0)
        elif token == "]":
            most = max(most, stack.pop())
        elif stack:
            stack[-1] += 1
    return most


def test_listops_generator_respects_limits():
    rng = random.Random(3)
    examples = generate_listops.generate_examples(
        200, rng, max_depth=3, max_args=5, min_length=20, max_length=60, branch_prob=0.3, seen=set())
    assert len({text for text, _ in examples}) == 200
    for text, value in examples:
        tokens = text.split()
        assert 20 <= len(tokens) <= 60
        assert 1 <= _nesting(tokens) <= 3
        assert 2 <= _max_arguments(tokens) <= 5
        assert value == generate_listops.evaluate_tokens(tokens)
    assert len({value for _, value in examples}) > 3  # labels are not all the same


def test_listops_generator_reports_impossible_lengths():
    with pytest.raises(ValueError, match="relax the length range"):
        generate_listops.generate_examples(
            1, random.Random(0), max_depth=1, max_args=3, min_length=50, max_length=60, branch_prob=0.5,
            max_attempts=200)


def test_listops_script_is_deterministic(tmp_path):
    args = ["--train-size", "40", "--valid-size", "10", "--test-size", "10", "--max-depth", "3",
            "--max-args", "4", "--min-length", "8", "--max-length", "50", "--no-progress"]
    script = REPO / "scripts" / "generate_listops.py"
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        run_cli([sys.executable, script, "--out-dir", tmp_path / name, "--seed", seed, *args])
    files = [f"{split}.{kind}" for split in ("train", "valid", "test") for kind in ("input", "label")]
    for name in files:
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert (tmp_path / "a" / "train.input").read_text() != (tmp_path / "c" / "train.input").read_text()
    inputs = (tmp_path / "a" / "train.input").read_text().splitlines()
    labels = (tmp_path / "a" / "train.label").read_text().splitlines()
    assert len(inputs) == len(labels) == 40
    assert all(int(label) == generate_listops.evaluate_expression(text) for text, label in zip(inputs, labels))
    every = [line for split in ("train", "valid", "test")
             for line in (tmp_path / "a" / f"{split}.input").read_text().splitlines()]
    assert len(set(every)) == len(every)  # splits do not overlap


# --------------------------------------------------------------------------- image converter

RGB_2X2 = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
# BT.601 luma by hand: 0.299*255 = 76.245 -> 76; 0.587*255 = 149.685 -> 150;
# 0.114*255 = 29.07 -> 29; 0.299*10 + 0.587*20 + 0.114*30 = 18.15 -> 18
RGB_2X2_LUMA = "76 150 29 18"


def test_converter_npz_luma_by_hand(tmp_path):
    grey = np.array([[0, 255], [7, 128]], dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=np.stack([RGB_2X2, RGB_2X2[::-1]]), y=np.array([1, 0]))
    np.savez(tmp_path / "grey.npz", x=grey[None], y=np.array([4]))
    out = tmp_path / "out"
    script = REPO / "scripts" / "images_to_pixel_sequences.py"
    run_cli([sys.executable, script, "--input", tmp_path / "rgb.npz", "--out-dir", out, "--split", "train", "--npy"])
    run_cli([sys.executable, script, "--input", tmp_path / "grey.npz", "--out-dir", out, "--split", "valid"])
    assert (out / "train.input").read_text() == RGB_2X2_LUMA + "\n" + "29 18 76 150\n"
    assert (out / "train.label").read_text() == "1\n0\n"
    assert np.load(out / "train.input.npy").tolist() == [[76, 150, 29, 18], [29, 18, 76, 150]]
    assert (out / "valid.input").read_text() == "0 255 7 128\n"
    assert (out / "valid.label").read_text() == "4\n"


def _write_ppm(path, rgb, binary=True):
    height, width, _ = rgb.shape
    if binary:
        path.write_bytes(f"P6\n# test\n{width} {height}\n255\n".encode() + rgb.tobytes())
    else:
        body = " ".join(str(v) for v in rgb.reshape(-1))
        path.write_text(f"P3\n{width} {height}\n255\n{body}\n")


def test_converter_class_folders_pnm_and_png(tmp_path):
    root = tmp_path / "images"
    (root / "dog").mkdir(parents=True)
    (root / "cat").mkdir()
    _write_ppm(root / "cat" / "a.ppm", RGB_2X2)
    _write_ppm(root / "cat" / "b.ppm", RGB_2X2[:, ::-1], binary=False)
    # a 4-level P2 grey map: values 0..3 of maxval 3 scale to 0, 85, 170, 255
    (root / "dog" / "c.pgm").write_text("P2\n2 2\n3\n0 1\n2 3\n")
    pixels, labels = img2seq.load_folder(root, tmp_path)
    assert pixels.tolist() == [[76, 150, 29, 18], [150, 76, 18, 29], [0, 85, 170, 255]]
    assert labels.tolist() == [0, 0, 1]
    assert (tmp_path / "classes.txt").read_text() == "cat\ndog\n"
    # a later split reuses classes.txt; an unknown class is an error
    (root / "bird").mkdir()
    with pytest.raises(ValueError, match="bird"):
        img2seq.load_folder(root, tmp_path)
    pil = pytest.importorskip("PIL.Image")
    png_root = tmp_path / "png"
    (png_root / "3").mkdir(parents=True)
    pil.fromarray(RGB_2X2).save(png_root / "3" / "x.png")
    pixels, labels = img2seq.load_folder(png_root, tmp_path / "png_out")
    assert pixels.tolist() == [[76, 150, 29, 18]] and labels.tolist() == [3]  # integer folder = class id
    resized = img2seq.convert_images([np.full((4, 4), 9, dtype=np.uint8)], ["flat"], resize=(2, 2))
    assert resized.tolist() == [[9, 9, 9, 9]]


def test_converter_rejects_mixed_sizes_and_bad_pixels(tmp_path):
    with pytest.raises(ValueError, match="--resize"):
        img2seq.convert_images([np.zeros((2, 2), np.uint8), np.zeros((3, 3), np.uint8)], ["a", "b"])
    with pytest.raises(ValueError, match="integers 0-255"):
        img2seq.to_grey(np.full((2, 2), 0.5))
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 2, 2), np.uint8), y=np.array([0]))
    with pytest.raises(ValueError, match="one label per image"):
        img2seq.load_npz(tmp_path / "bad.npz")


# --------------------------------------------------------------------------- criterion

class FixedLogitsModel(nn.Module):
    """Stand-in classifier: returns preset logits and records how it was called."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)
        self.classification_heads = nn.ModuleDict({HEAD: nn.Identity()})
        self.calls = []

    def forward(self, src_tokens, src_lengths=None, features_only=False, classification_head_name=None, **kwargs):
        self.calls.append(("single", classification_head_name, src_tokens.shape))
        return self.logits, {}

    def classify_pair(self, head_name, first, second):
        self.calls.append(("pair", head_name, first["src_tokens"].shape, second["src_tokens"].shape))
        return self.logits


def _reduced(logging_outputs):
    with metrics.aggregate() as aggregator:
        LRACrossEntropyCriterion.reduce_metrics(logging_outputs)
        return aggregator.get_smoothed_values()


@pytest.mark.parametrize("paired", [False, True])
def test_criterion_loss_and_accuracy_by_hand(paired):
    logits = [[2.0, 0.0], [0.0, 0.0], [1.0, 3.0]]
    sample = {
        "net_input": {"src_tokens": torch.ones(3, 5, dtype=torch.long), "src_lengths": torch.tensor([5, 5, 5])},
        "target": torch.tensor([0, 1, 0]),
        "ntokens": 15,
        "nsentences": 3,
    }
    if paired:
        sample["net_input1"] = {"src_tokens": torch.ones(3, 7, dtype=torch.long),
                                "src_lengths": torch.tensor([7, 7, 7])}
    model = FixedLogitsModel(logits)
    criterion = LRACrossEntropyCriterion(LRACrossEntropyConfig(classification_head_name=HEAD), task=None)
    loss, sample_size, log = criterion(model, sample)
    # -log softmax: log(1 + e^-2); log 2; 2 + log(1 + e^-2)
    expected = 2 * math.log1p(math.exp(-2)) + math.log(2) + 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert sample_size == 3 and log["nsentences"] == 3
    assert int(log["ncorrect"]) == 1  # predictions 0, 0 (tie -> first), 1 vs targets 0, 1, 0
    assert model.calls[0][0] == ("pair" if paired else "single") and model.calls[0][1] == HEAD
    values = _reduced([log, log])  # two workers with the same batch
    assert values["loss"] == pytest.approx(expected / 3 / math.log(2), abs=1e-3)
    assert values["accuracy"] == pytest.approx(100 / 3, abs=0.01)


def test_criterion_names_a_missing_head():
    model = FixedLogitsModel([[0.0, 1.0]])
    criterion = LRACrossEntropyCriterion(LRACrossEntropyConfig(classification_head_name="other"), task=None)
    sample = {"net_input": {"src_tokens": torch.ones(1, 2, dtype=torch.long)}, "target": torch.tensor([1]),
              "ntokens": 2, "nsentences": 1}
    with pytest.raises(ValueError, match="no classification head 'other'"):
        criterion(model, sample)


# --------------------------------------------------------------------------- tasks: bad input

def _binarize(directory: Path, split: str, lines, dictionary: Dictionary):
    directory.mkdir(parents=True, exist_ok=True)
    prefix = str(directory / split)
    builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(dictionary))
    for line in lines:
        builder.add_item(dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).long())
    builder.finalize(prefix + ".idx")


def _text_data(root: Path, splits, paired=False):
    """splits: {name: (inputs, labels)}; dictionaries from the 'train' split (as fairseq-preprocess)."""
    words, label_dict = Dictionary(), Dictionary()
    for line in splits["train"][0]:
        for word in line.split():
            words.add_symbol(word)
    for label in splits["train"][1]:
        label_dict.add_symbol(label)
    for key in ("input0", "input1") if paired else ("input0",):
        (root / key).mkdir(parents=True, exist_ok=True)
        words.save(str(root / key / "dict.txt"))
    (root / "label").mkdir(parents=True, exist_ok=True)
    label_dict.save(str(root / "label" / "dict.txt"))
    for split, (inputs, labels) in splits.items():
        _binarize(root / "input0", split, inputs, words)
        if paired:
            _binarize(root / "input1", split, list(reversed(inputs)), words)
        _binarize(root / "label", split, labels, label_dict)
    return root


def _text_task(root, **overrides):
    options = dict(data=str(root), num_classes=2, seed=1, classification_head_name=HEAD)
    options.update(overrides)
    return LRATextTask.setup_task(LRATextConfig(**options))


def test_text_task_samples_and_length_policy(tmp_path):
    data = _text_data(tmp_path, {
        "train": (["a b", "a b c d e f g", "c"], ["yes", "no", "yes"]),
        "valid": (["a", "b b"], ["no", "yes"]),
    }, paired=True)
    task = _text_task(data, max_positions=4)
    with pytest.raises(ValueError, match="--shorten-method truncate"):
        task.load_dataset("train")
    task.load_dataset("valid")  # short enough

    task = _text_task(data, max_positions=4, shorten_method="truncate", paired=True, no_shuffle=True)
    dataset = task.load_dataset("train")
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    assert batch["net_input"]["src_tokens"].shape == (3, 4)
    assert batch["net_input"]["src_lengths"].tolist() == [3, 4, 2]  # "a b </s>", truncated, "c </s>"
    assert batch["net_input1"]["src_lengths"].tolist() == [2, 4, 3]  # reversed order
    assert batch["target"].tolist() == [0, 1, 0]  # label dictionary order: yes, no
    assert batch["ntokens"] == 9 + 9 and batch["nsentences"] == 3
    assert task.max_positions() == (4, 4)


def test_text_task_unknown_label_is_an_error(tmp_path):
    data = _text_data(tmp_path, {
        "train": (["a", "b"], ["x", "y"]),
        "valid": (["a", "b", "a"], ["x", "z", "y"]),  # "z" never seen in training -> <unk>
    })
    task = _text_task(data)
    task.load_dataset("train")
    with pytest.raises(ValueError, match=r"unknown label on line\(s\) 2"):
        task.load_dataset("valid")
    with pytest.raises(ValueError, match="--num-classes"):
        _text_task(data, num_classes=1)
    with pytest.raises(FileNotFoundError, match="--paired"):
        _text_task(data, paired=True)


def _image_data(root: Path, split: str, images, labels):
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}.input").write_text("".join(" ".join(map(str, im)) + "\n" for im in images))
    (root / f"{split}.label").write_text("".join(f"{label}\n" for label in labels))
    return root


def _image_task(root, **overrides):
    options = dict(data=str(root), num_classes=2, image_size=2, pixel_input="tokens", seed=1,
                   classification_head_name=HEAD, no_shuffle=True)
    options.update(overrides)
    return LRAImageTask.setup_task(LRAImageConfig(**options))


def test_image_task_samples_and_bad_input(tmp_path):
    data = _image_data(tmp_path, "train", [[0, 1, 2, 255], [9, 9, 9, 9]], [1, 0])
    task = _image_task(data)
    dataset = task.load_dataset("train")
    batch = dataset.collater([dataset[0], dataset[1]])
    offset = task.dictionary.nspecial
    assert task.dictionary[offset + 255] == "255" and len(task.dictionary) == offset + 256
    assert batch["net_input"]["src_tokens"].tolist() == [[offset, offset + 1, offset + 2, offset + 255],
                                                          [offset + 9] * 4]
    assert batch["target"].tolist() == [1, 0]

    _image_data(data, "short", [[0, 1, 2, 3], [1, 2, 3]], [0, 1])
    with pytest.raises(ValueError, match="line 2 has 3 pixels, expected 4"):
        task.load_dataset("short")
    _image_data(data, "badlabel", [[0, 1, 2, 3]], [2])
    with pytest.raises(ValueError, match="unknown label 2 on line 1"):
        task.load_dataset("badlabel")
    _image_data(data, "range", [[0, 1, 2, 256]], [0])
    with pytest.raises(ValueError, match="outside 0-255"):
        task.load_dataset("range")
    np.save(data / "npy.input.npy", np.array([[1, 2, 3]], dtype=np.uint8))
    (data / "npy.label").write_text("0\n")
    with pytest.raises(ValueError, match="expected N x 4"):
        task.load_dataset("npy")


def test_pixel_value_embedding_is_a_linear_map_of_normalised_pixels(tmp_path):
    from omegaconf import OmegaConf

    from mega_fairseq.models.mega_encoder_model import MegaEncoderModelConfig

    task = _image_task(tmp_path, pixel_input="values", pixel_mean=0.48, pixel_std=0.24)
    cfg = MegaEncoderModelConfig(encoder_embed_dim=6, encoder_hidden_dim=8, encoder_ffn_embed_dim=8,
                                 encoder_z_dim=4, encoder_n_dim=2, encoder_layers=1,
                                 max_source_positions=4, _name="mega_encoder")
    model = task.build_model(OmegaConf.structured(cfg))
    embed = model.encoder.embed_tokens
    assert isinstance(embed, PixelValueEmbedding)
    offset = task.dictionary.nspecial
    tokens = torch.tensor([[offset, offset + 255, offset + 51]])
    out = embed(tokens)
    assert out.shape == (1, 3, 6)
    w, b = embed.value_proj.weight[:, 0], embed.value_proj.bias
    for position, pixel in enumerate([0, 255, 51]):
        value = (pixel / 255 - 0.48) / 0.24
        torch.testing.assert_close(out[0, position], w * value + b)
    assert "encoder.embed_tokens.value_proj.weight" in model.state_dict()
    logits, _ = model(tokens[:, :2].repeat(1, 2), classification_head_name=HEAD)
    assert logits.shape == (1, 2)

    class NoHook(nn.Module):
        encoder = None

    with pytest.raises(ValueError, match="--pixel-input tokens"):
        task.use_pixel_values(NoHook())


# --------------------------------------------------------------------------- end to end (slow)

COMMON_TRAIN = [
    "--user-dir", REPO / "mega_fairseq", "--criterion", "lra_cross_entropy",
    "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
    "--batch-size", "16", "--cpu", "--seed", "1", "--no-progress-bar", "--log-format", "simple",
    "--log-interval", "10", "--no-epoch-checkpoints", "--num-workers", "0",
    "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
]

TINY = ["--arch", "mega_encoder_tiny", "--sentence-rep", "mean"]


def _preprocess(text_dir: Path, bin_dir: Path, name: str, suffix: str, srcdict=None):
    command = [console_script("fairseq-preprocess"), "--only-source", "--workers", "1",
               "--trainpref", text_dir / f"train.{suffix}", "--validpref", text_dir / f"valid.{suffix}",
               "--destdir", bin_dir / name]
    if srcdict is not None:
        command += ["--srcdict", srcdict]
    run_cli(command)


def _train_and_validate(data, save, task_args, model_args, updates=30, extra=()):
    """fairseq-train (``extra`` overrides COMMON_TRAIN), then fairseq-validate of the last
    checkpoint; returns (accuracy, log)."""
    run_cli([console_script("fairseq-train"), data, *task_args, *model_args, *COMMON_TRAIN, *extra,
             "--max-update", str(updates), "--save-dir", save], env={"OMP_NUM_THREADS": "1"})
    result = run_cli([console_script("fairseq-validate"), data, "--user-dir", REPO / "mega_fairseq", *task_args,
                      "--criterion", "lra_cross_entropy", "--path", save / "checkpoint_last.pt",
                      "--valid-subset", "valid", "--cpu", "--batch-size", "32"], env={"OMP_NUM_THREADS": "1"})
    log = result.stdout + result.stderr
    match = re.search(r"valid on 'valid' subset \|.*accuracy ([0-9.]+)", log)
    assert match, log[-3000:]
    return float(match.group(1)), log


def _majority_percent(label_file: Path) -> float:
    """Accuracy (%) of always answering the most frequent label of ``label_file``."""
    labels = label_file.read_text().split()
    return 100.0 * max(labels.count(label) for label in set(labels)) / len(labels)


def _generate_listops(text: Path, *options):
    run_cli([sys.executable, REPO / "scripts" / "generate_listops.py", "--out-dir", text, "--seed", "1",
             "--test-size", "10", "--no-progress", *options])


@pytest.mark.slow
def test_end_to_end_listops(tmp_path):
    # a ListOps the tiny model learns in 100 updates: one operator over two digits
    # ("[MAX 4 1 ]"); the valid majority label is 16.7 % and the model reaches about 57 %.
    # A model that does not read its input (broken embedding, pooling or label alignment)
    # stays at the majority rate and fails.
    easy_text = tmp_path / "easy_text"
    _generate_listops(easy_text, "--train-size", "400", "--valid-size", "60", "--max-depth", "1",
                      "--max-args", "2", "--min-length", "3", "--max-length", "10", "--allow-duplicates")
    easy = tmp_path / "easy_bin"
    _preprocess(easy_text, easy, "input0", "input")
    _preprocess(easy_text, easy, "label", "label")
    accuracy, _ = _train_and_validate(
        easy, tmp_path / "easy_ckpt", ["--task", "lra-text", "--num-classes", "10"], TINY, updates=100)
    majority = _majority_percent(easy_text / "valid.label")
    assert accuracy >= majority + 20, (accuracy, majority)

    # --max-positions reaches both the model and the task: too long inputs (nested
    # expressions of 10 to 100 tokens) are an error naming --shorten-method, and are cut
    # with --shorten-method truncate
    text = tmp_path / "text"
    _generate_listops(text, "--train-size", "300", "--valid-size", "60", "--max-depth", "3",
                      "--max-args", "5", "--min-length", "10", "--max-length", "100")
    data = tmp_path / "bin"
    _preprocess(text, data, "input0", "input")
    _preprocess(text, data, "label", "label")
    short = [console_script("fairseq-train"), data, "--task", "lra-text", "--num-classes", "10", *TINY,
             *COMMON_TRAIN, "--max-positions", "20", "--max-update", "2", "--save-dir", tmp_path / "short"]
    failed = subprocess.run([str(a) for a in short], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert failed.returncode != 0
    assert "longer than the model's 20 positions" in failed.stderr
    assert "--shorten-method truncate" in failed.stderr
    truncated = run_cli(short + ["--shorten-method", "truncate"], env={"OMP_NUM_THREADS": "1"})
    assert "num_updates 2" in truncated.stdout + truncated.stderr


@pytest.mark.slow
def test_end_to_end_paired_retrieval(tmp_path):
    """Synthetic retrieval: each document is written with the letters of one of two groups;
    label 1 when both documents use the same group. Neither document alone says anything
    about the label (the valid majority is 52.5 %), so only a model that reads and compares
    both inputs (``--paired``: both encodings reach the head) gets far above it; the tiny
    model reaches 100 % within 20 updates."""
    rng = random.Random(0)
    text = tmp_path / "text"
    text.mkdir()
    groups = ("abcd", "efgh")
    for split, count in (("train", 200), ("valid", 40)):
        with open(text / f"{split}.input0", "w") as first, open(text / f"{split}.input1", "w") as second, \
                open(text / f"{split}.label", "w") as labels:
            for _ in range(count):
                group = rng.randrange(2)
                same = rng.random() < 0.5
                other = group if same else 1 - group
                a = [rng.choice(groups[group]) for _ in range(rng.randint(5, 30))]
                b = [rng.choice(groups[other]) for _ in range(rng.randint(5, 30))]
                first.write(" ".join(a) + "\n")
                second.write(" ".join(b) + "\n")
                labels.write(f"{int(same)}\n")
    data = tmp_path / "bin"
    _preprocess(text, data, "input0", "input0")
    _preprocess(text, data, "input1", "input1", srcdict=data / "input0" / "dict.txt")
    _preprocess(text, data, "label", "label")
    accuracy, _ = _train_and_validate(
        data, tmp_path / "ckpt", ["--task", "lra-text", "--paired", "--num-classes", "2"], TINY,
        updates=20)
    majority = _majority_percent(text / "valid.label")
    assert accuracy >= max(90.0, majority + 30), (accuracy, majority)


def _squares(count, rng):
    """8x8 images: class 0 = bright 3x3 square top-left, class 1 = bottom-right, noise elsewhere."""
    x = rng.integers(0, 60, size=(count, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 2, size=count)
    for image, label in zip(x, y):
        if label == 0:
            image[:3, :3] = 250
        else:
            image[5:, 5:] = 250
    return x, y


@pytest.mark.slow
@pytest.mark.parametrize("pixel_input", ["tokens", "values"])
def test_end_to_end_image(tmp_path, pixel_input):
    rng = np.random.default_rng(0)
    data = tmp_path / "pixels"
    for split, count in (("train", 200), ("valid", 50)):
        x, y = _squares(count, rng)
        np.savez(tmp_path / f"{split}.npz", x=x, y=y)
        run_cli([sys.executable, REPO / "scripts" / "images_to_pixel_sequences.py", "--input",
                 tmp_path / f"{split}.npz", "--out-dir", data, "--split", split])
    accuracy, _ = _train_and_validate(
        data, tmp_path / "ckpt", ["--task", "lra-image", "--image-size", "8", "--num-classes", "2",
                                  "--pixel-input", pixel_input], TINY, updates=60, extra=["--lr", "1e-2"])
    assert accuracy >= 80.0, accuracy  # chance: 50
