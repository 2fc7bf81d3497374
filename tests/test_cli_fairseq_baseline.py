"""fairseq's own transformer through the unmodified console scripts on this stack:
preprocess -> train -> resume -> generate / validate / interactive.  This needs fixes 1-4
of ``mega_fairseq_compat`` (imports, checkpoint loading, the disabled fast path)."""

import re

import pytest

from conftest import console_script, run_cli, write_copy_corpus

TINY_TRANSFORMER = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--optimizer", "adam", "--lr", "3e-3", "--max-tokens", "1000", "--cpu",
    "--no-progress-bar", "--seed", "1",
]


@pytest.mark.slow
def test_transformer_train_resume_generate(tmp_path):
    text = write_copy_corpus(tmp_path / "text")
    data = tmp_path / "bin"
    run_cli([console_script("fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt",
             "--trainpref", text / "train", "--validpref", text / "valid", "--testpref", text / "test",
             "--destdir", data, "--joined-dictionary", "--workers", "1"])
    save = tmp_path / "ckpt"
    run_cli([console_script("fairseq-train"), data, *TINY_TRANSFORMER, "--max-epoch", "1", "--save-dir", save])
    resumed = run_cli([console_script("fairseq-train"), data, *TINY_TRANSFORMER, "--max-epoch", "2",
                       "--save-dir", save])
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 2", resumed.stderr + resumed.stdout)

    checkpoint = save / "checkpoint_last.pt"
    generated = run_cli([console_script("fairseq-generate"), data, "--path", checkpoint, "--beam", "5",
                         "--cpu", "--scoring", "sacrebleu", "--max-tokens", "2000"])
    assert "BLEU" in generated.stdout and "Translated 40 sentences" in generated.stderr + generated.stdout

    validated = run_cli([console_script("fairseq-validate"), data, "--path", checkpoint, "--cpu",
                         "--task", "translation", "--max-tokens", "2000"])
    assert "valid on 'valid' subset" in validated.stderr + validated.stdout

    interactive = run_cli([console_script("fairseq-interactive"), data, "--path", checkpoint, "--cpu",
                           "--beam", "2", "--source-lang", "src", "--target-lang", "tgt"],
                          input_text="a b c d\n")
    assert re.search(r"^H-0\t", interactive.stdout, re.M)
