"""The GPU recipe of examples/language_model/README.md for enwik8, on a tiny byte slice:
prepare_enwik8.py -> fairseq-preprocess -> fairseq-train with the recipe's options (model
shrunk, short blocks, CPU) -> scripts/eval_lm_stateful.py."""

import re
import sys

import pytest

from conftest import BUNDLED_TEXT, REPO, console_script, run_cli

RECIPE_OPTIONS = [
    "--arch", "mega_lm_enwik8_base", "--criterion", "cross_entropy",
    "--sample-break-mode", "none", "--truncation-length", "8192",
    "--dropout", "0.1", "--attention-dropout", "0.0", "--hidden-dropout", "0.0",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-8", "--clip-norm", "0.25",
    "--weight-decay", "0.1", "--lr", "5e-3", "--lr-scheduler", "polynomial_decay",
    "--total-num-update", "400000", "--end-learning-rate", "0.0", "--warmup-updates", "24000",
    "--no-epoch-checkpoints",
]
SHRINK = ["--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-hidden-dim", "64",
          "--decoder-ffn-embed-dim", "64", "--decoder-z-dim", "16", "--decoder-chunk-size", "64",
          "--tokens-per-sample", "256", "--max-tokens", "512", "--max-update", "3", "--cpu",
          "--no-progress-bar"]


@pytest.mark.slow
def test_enwik8_recipe_on_a_byte_slice(tmp_path):
    source = tmp_path / "enwik8"
    source.write_bytes((BUNDLED_TEXT / "tempest.txt").read_bytes()[:30000])
    run_cli([sys.executable, REPO / "scripts" / "prepare_enwik8.py", "--input", source, "--out-dir", tmp_path / "text",
             "--train-bytes", "24000", "--valid-bytes", "3000"])
    data = tmp_path / "bin"
    run_cli([console_script("fairseq-preprocess"), "--only-source", "--trainpref", tmp_path / "text" / "train.txt",
             "--validpref", tmp_path / "text" / "valid.txt", "--testpref", tmp_path / "text" / "test.txt",
             "--destdir", data, "--workers", "1"])
    save = tmp_path / "ckpt"
    run_cli([console_script("fairseq-train"), data, "--user-dir", REPO / "mega_fairseq", "--task", "language_modeling",
             *RECIPE_OPTIONS, *SHRINK, "--save-dir", save])
    result = run_cli([sys.executable, REPO / "scripts" / "eval_lm_stateful.py", data, "--path",
                      save / "checkpoint_best.pt", "--gen-subset", "test", "--block-size", "128", "--cpu",
                      "--no-progress-bar"])
    assert re.search(r"stateful", result.stdout + result.stderr)
