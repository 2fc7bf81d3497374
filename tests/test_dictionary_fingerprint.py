"""Dictionary identity in checkpoints (``mega_fairseq.models.dictionary_fingerprint``): a
same-size dictionary with another order is refused on load, naming both fingerprints and
the fix; checkpoints without a fingerprint load with a warning."""

import logging
import os
import random
import subprocess
from types import SimpleNamespace

import pytest
import torch
from fairseq.data import Dictionary

from conftest import REPO, console_script, python_snippet, run_cli
from lm_helpers import build_lm, make_dictionary
from mt_helpers import build_translation_model
from mega_fairseq.models.dictionary_fingerprint import (
    BUFFER_NAME,
    DictionaryMismatchError,
    dictionary_fingerprint,
    stamp_dictionary_fingerprint,
)
from mega_fairseq.models.mega_encoder_model import MegaEncoderModel, MegaEncoderModelConfig

# fingerprint of make_dictionary(20): <s> <pad> </s> <unk> w0 ... w19
PINNED = "876862d14d27a3a6"
LM_KEY = "decoder." + BUFFER_NAME


def reordered_dictionary(size: int = 20) -> Dictionary:
    """The symbols of ``make_dictionary(size)`` with the first two words swapped."""
    dictionary = Dictionary()
    words = [f"w{i}" for i in range(size)]
    words[0], words[1] = words[1], words[0]
    for word in words:
        dictionary.add_symbol(word)
    return dictionary


# ------------------------------------------------------------------ the fingerprint
def test_same_symbols_same_fingerprint_reordered_different():
    reference = dictionary_fingerprint(make_dictionary(20))
    assert dictionary_fingerprint(make_dictionary(20)) == reference
    assert len(reordered_dictionary()) == len(make_dictionary(20))
    assert dictionary_fingerprint(reordered_dictionary()) != reference
    assert dictionary_fingerprint(make_dictionary(21)) != reference
    # symbols only: counts do not matter; symbol boundaries do
    counted = make_dictionary(20)
    counted.count = [c + 7 for c in counted.count]
    assert dictionary_fingerprint(counted) == reference
    assert dictionary_fingerprint(SimpleNamespace(symbols=["ab", "c"])) != \
        dictionary_fingerprint(SimpleNamespace(symbols=["a", "bc"]))


def test_fingerprint_is_stable_across_processes():
    assert dictionary_fingerprint(make_dictionary(20)) == PINNED
    code = (  # the module alone (hashlib and torch), without importing fairseq
        "import importlib.util\n"
        "from types import SimpleNamespace\n"
        "path = 'mega_fairseq/models/dictionary_fingerprint.py'\n"
        "spec = importlib.util.spec_from_file_location('fp', path)\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "symbols = ['<s>', '<pad>', '</s>', '<unk>'] + [f'w{i}' for i in range(20)]\n"
        "print(module.dictionary_fingerprint(SimpleNamespace(symbols=symbols)))\n"
    )
    # another interpreter, with str hashes seeded otherwise than this one's
    result = python_snippet(code, cwd=REPO, env={"PYTHONHASHSEED": "12345"})
    assert result.stdout.strip().splitlines()[-1] == PINNED


# ------------------------------------------------------------------ model level
def test_language_model_refuses_a_reordered_dictionary():
    trained = build_lm(make_dictionary(20)).state_dict()
    assert trained[LM_KEY].dtype == torch.uint8
    build_lm(make_dictionary(20)).load_state_dict(trained, strict=True)
    with pytest.raises(DictionaryMismatchError) as error:
        build_lm(reordered_dictionary()).load_state_dict(trained, strict=True)
    message = str(error.value)
    assert isinstance(error.value, ValueError) and DictionaryMismatchError.user_facing is True
    assert PINNED in message and dictionary_fingerprint(reordered_dictionary()) in message
    assert "dictionary mismatch" in message and "--only-source --srcdict" in message
    # an fp32 copy of the buffer (fairseq's --ema-fp32) holds the same fingerprint
    as_float = dict(trained, **{LM_KEY: trained[LM_KEY].float()})
    build_lm(make_dictionary(20)).load_state_dict(as_float, strict=True)


def test_a_state_without_fingerprint_loads_with_a_warning(caplog):
    trained = build_lm(make_dictionary(20)).state_dict()
    old = {k: v for k, v in trained.items() if k != LM_KEY}
    model = build_lm(reordered_dictionary())  # cannot be told apart: loads
    with caplog.at_level(logging.WARNING):
        model.load_state_dict(old, strict=True)
    assert "has no fingerprint of its dictionary" in caplog.text
    assert "cannot be checked" in caplog.text
    # the current dictionary's fingerprint is what the next save stores
    assert bytes(model.state_dict()[LM_KEY].tolist()).hex() == \
        dictionary_fingerprint(reordered_dictionary())
    # a converter stamps the dictionary it wrote the weights for
    stamp_dictionary_fingerprint(old, "decoder.", make_dictionary(20))
    with pytest.raises(DictionaryMismatchError):
        build_lm(reordered_dictionary()).load_state_dict(old, strict=True)


def test_translation_names_the_reordered_side():
    words, reordered = make_dictionary(20), reordered_dictionary()
    trained = build_translation_model(words, words).state_dict()
    with pytest.raises(DictionaryMismatchError) as error:
        build_translation_model(words, reordered).load_state_dict(trained)
    message = str(error.value)
    assert message.startswith("target dictionary mismatch") and "--tgtdict" in message
    assert PINNED in message and dictionary_fingerprint(reordered_dictionary()) in message
    with pytest.raises(DictionaryMismatchError, match=r"^source dictionary mismatch.*--srcdict"):
        build_translation_model(reordered, words).load_state_dict(trained)


def test_encoder_model_refuses_a_reordered_dictionary():
    small = dict(encoder_embed_dim=16, encoder_hidden_dim=24, encoder_ffn_embed_dim=20,
                 encoder_z_dim=8, encoder_n_dim=4, encoder_layers=2, max_source_positions=32)

    def build(dictionary):
        task = SimpleNamespace(source_dictionary=dictionary)
        return MegaEncoderModel.build_model(MegaEncoderModelConfig(**small), task)

    trained = build(make_dictionary(20)).state_dict()
    build(make_dictionary(20)).load_state_dict(trained, strict=True)
    with pytest.raises(DictionaryMismatchError, match=r"^source dictionary mismatch.*--srcdict"):
        build(reordered_dictionary()).load_state_dict(trained, strict=True)


# ------------------------------------------------------------------ console scripts
LM_TRAIN = [
    "--user-dir", REPO / "mega_fairseq", "--task", "language_modeling", "--arch", "mega_lm_tiny",
    "--decoder-layers", "1", "--tokens-per-sample", "32", "--sample-break-mode", "none",
    "--optimizer", "adam", "--lr", "3e-3", "--batch-size", "8", "--cpu", "--seed", "1",
    "--no-progress-bar", "--no-epoch-checkpoints", "--max-update", "3",
]
THREADS = {"OMP_NUM_THREADS": "1"}


def _write_text(path, lines: int, seed: int) -> None:
    generator = random.Random(seed)
    words = [f"w{i}" for i in range(30)]
    path.write_text("".join(" ".join(generator.choices(words, k=12)) + "\n" for _ in range(lines)))


@pytest.mark.slow
def test_eval_lm_refuses_a_test_set_binarised_with_a_reordered_dictionary(tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    for split, lines, seed in (("train", 200, 0), ("valid", 20, 1), ("test", 20, 2)):
        _write_text(text / f"{split}.txt", lines, seed)
    data, save = tmp_path / "bin", tmp_path / "ckpt"
    preprocess = [console_script("fairseq-preprocess"), "--only-source", "--workers", "1"]
    run_cli([*preprocess, "--trainpref", text / "train.txt", "--validpref", text / "valid.txt",
             "--testpref", text / "test.txt", "--destdir", data], env=THREADS)
    run_cli([console_script("fairseq-train"), data, *LM_TRAIN, "--save-dir", save], env=THREADS)

    # the same words, the first two lines swapped: same size, other ids
    lines = (data / "dict.txt").read_text().splitlines(keepends=True)
    reordered_dict = tmp_path / "reordered_dict.txt"
    reordered_dict.write_text("".join([lines[1], lines[0], *lines[2:]]))
    reordered = tmp_path / "bin_reordered"
    run_cli([*preprocess, "--srcdict", reordered_dict, "--trainpref", text / "train.txt",
             "--validpref", text / "valid.txt", "--testpref", text / "test.txt",
             "--destdir", reordered], env=THREADS)

    def eval_lm(directory, checkpoint):
        command = [console_script("fairseq-eval-lm"), directory, "--user-dir",
                   REPO / "mega_fairseq", "--path", checkpoint, "--gen-subset", "test", "--cpu",
                   "--tokens-per-sample", "32", "--batch-size", "8"]
        return subprocess.run([str(a) for a in command], capture_output=True, text=True,
                              timeout=300, env=dict(os.environ, **THREADS))

    refused = eval_lm(reordered, save / "checkpoint_last.pt")
    log = refused.stdout + refused.stderr
    assert refused.returncode != 0, log[-3000:]
    assert "Perplexity" not in log
    trained_fp = dictionary_fingerprint(Dictionary.load(str(data / "dict.txt")))
    reordered_fp = dictionary_fingerprint(Dictionary.load(str(reordered_dict)))
    assert "dictionary mismatch" in log and trained_fp in log and reordered_fp in log, log[-3000:]
    assert "fairseq-preprocess --only-source --srcdict" in log

    # resuming training on the reordered data: fairseq's trainer wraps the error in its
    # generic "architectures match" one; the user still reads the mismatch, with the file
    command = [console_script("fairseq-train"), reordered, *LM_TRAIN, "--save-dir", save]
    command[command.index("--max-update") + 1] = "6"
    resumed = subprocess.run([str(a) for a in command], capture_output=True, text=True,
                             timeout=300, env=dict(os.environ, **THREADS))
    assert resumed.returncode == 1, resumed.stderr[-3000:]
    last_line = resumed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("fairseq-train: error: dictionary mismatch"), last_line
    assert reordered_fp in last_line and "checkpoint_last.pt" in last_line
    assert "Traceback" not in resumed.stderr

    evaluated = eval_lm(data, save / "checkpoint_last.pt")
    assert evaluated.returncode == 0 and "Perplexity" in evaluated.stdout + evaluated.stderr

    # a checkpoint saved before the fingerprint existed: loads, with the warning
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    del state["model"][LM_KEY]
    torch.save(state, tmp_path / "old.pt")
    old = eval_lm(reordered, tmp_path / "old.pt")
    log = old.stdout + old.stderr
    assert old.returncode == 0 and "Perplexity" in log, log[-3000:]
    assert "the checkpoint has no fingerprint of its dictionary" in log
