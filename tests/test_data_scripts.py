"""Data preparation scripts: nothing dropped, splits disjoint and in order."""

import sys

import pytest

from conftest import BUNDLED_TEXT, REPO, run_cli

import prepare_enwik8  # noqa: E402
import prepare_lm_text  # noqa: E402


def test_lm_text_split_keeps_every_line_in_order():
    lines = [f"line {i}" for i in range(100)]
    train, valid, test = prepare_lm_text.split_lines(lines, 0.05, 0.05)
    assert train + valid + test == lines
    assert (len(train), len(valid), len(test)) == (90, 5, 5)
    with pytest.raises(ValueError, match="too short"):
        prepare_lm_text.split_lines(["a", "b"], 0.05, 0.05)


def test_lm_text_tokenisation_keeps_all_words_and_punctuation():
    assert prepare_lm_text.tokenize_line("Boatswain! Here, master: what's 12?") == \
        "Boatswain ! Here , master : what's 12 ?"


def test_lm_text_script_on_bundled_plays(tmp_path):
    run_cli([sys.executable, REPO / "scripts" / "prepare_lm_text.py", "--inputs", BUNDLED_TEXT / "tempest.txt",
             "--out-dir", tmp_path])
    source_lines = (BUNDLED_TEXT / "tempest.txt").read_text().splitlines()
    written = sum(len((tmp_path / f"{s}.txt").read_text().splitlines()) for s in ("train", "valid", "test"))
    assert written == len(source_lines)


def test_enwik8_bytes_round_trip(tmp_path):
    data = (BUNDLED_TEXT / "macbeth.txt").read_bytes()[:5000] + "é€\n".encode()
    source = tmp_path / "enwik8"
    source.write_bytes(data)
    run_cli([sys.executable, REPO / "scripts" / "prepare_enwik8.py", "--input", source, "--out-dir", tmp_path / "out",
             "--train-bytes", "4000", "--valid-bytes", "600"])
    restored = b""
    for split in ("train", "valid", "test"):
        for line in (tmp_path / "out" / f"{split}.txt").read_text().splitlines():
            restored += bytes(int(token) for token in line.split())
    assert restored == data
    with pytest.raises(ValueError, match="leave no test data"):
        prepare_enwik8.split(data, len(data), 1)
