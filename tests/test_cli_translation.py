"""The ``mega`` translation model end to end through the unmodified fairseq console scripts:
sentencepiece -> fairseq-preprocess -> fairseq-train (with --eval-bleu and checkpoint
resume) -> fairseq-generate --beam 5 --scoring sacrebleu -> fairseq-interactive on stdin ->
the hub interface, on a task a tiny model learns in a few hundred updates (copying a
sentence of code words in upper case)."""

import random
import re

import pytest
import sacrebleu

from conftest import REPO, console_script, python_snippet, run_cli

USER_DIR = REPO / "mega_fairseq"
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango").split()
MAX_POSITIONS = 128

TRAIN = [
    "--user-dir", USER_DIR, "--task", "translation", "--source-lang", "en", "--target-lang", "de",
    "--arch", "mega_tiny", "--share-all-embeddings", "--dropout", "0.0",
    "--max-source-positions", str(MAX_POSITIONS), "--max-target-positions", str(MAX_POSITIONS),
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "5e-3",
    "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--max-tokens", "2000", "--cpu", "--seed", "1", "--no-progress-bar", "--log-format", "simple",
    "--log-interval", "50", "--no-epoch-checkpoints", "--num-workers", "0",
]
EVAL_BLEU = [
    "--eval-bleu", "--eval-bleu-args", '{"beam": 2, "max_len_a": 1.2, "max_len_b": 10}',
    "--eval-bleu-detok", "space", "--eval-bleu-remove-bpe", "sentencepiece",
    "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
]


def _sentence(rng, low=3, high=8):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def _write_corpus(directory, rng):
    """train/valid/test .en (lower case) and .de (upper case); the test split ends with a
    sentence far longer than the model's max positions."""
    directory.mkdir(parents=True)
    sizes = {"train": 1500, "valid": 40, "test": 40}
    for split, count in sizes.items():
        sentences = [_sentence(rng) for _ in range(count)]
        if split == "test":
            sentences.append(" ".join(WORDS * 3))  # ~ 300 pieces > MAX_POSITIONS
        (directory / f"{split}.en").write_text("".join(s + "\n" for s in sentences))
        (directory / f"{split}.de").write_text("".join(s.upper() + "\n" for s in sentences))


def _encode_with_sentencepiece(text, model_prefix):
    python_snippet(f"""
import sentencepiece as spm
spm.SentencePieceTrainer.train(input="{text}/train.en,{text}/train.de", model_prefix="{model_prefix}",
                               vocab_size=80, hard_vocab_limit=False, character_coverage=1.0,
                               num_threads=1)
sp = spm.SentencePieceProcessor(model_file="{model_prefix}.model")
for split in ("train", "valid", "test"):
    for lang in ("en", "de"):
        with open(f"{text}/{{split}}.{{lang}}") as raw, open(f"{text}/{{split}}.spm.{{lang}}", "w") as out:
            for line in raw:
                out.write(" ".join(sp.encode(line.strip(), out_type=str)) + "\\n")
""")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Data, sentencepiece model, and three checkpoints: trained (150 updates, then resumed
    to 300), untrained (one update at a negligible learning rate), and a fairseq
    transformer (for the wrong-model-type checks)."""
    root = tmp_path_factory.mktemp("mega_mt")
    text = root / "text"
    _write_corpus(text, random.Random(0))
    spm_prefix = root / "spm"
    _encode_with_sentencepiece(text, spm_prefix)
    data = root / "bin"
    run_cli([console_script("fairseq-preprocess"), "--source-lang", "en", "--target-lang", "de",
             "--trainpref", text / "train.spm", "--validpref", text / "valid.spm",
             "--testpref", text / "test.spm", "--destdir", data, "--joined-dictionary",
             "--workers", "1"])

    save = root / "mega"
    first = run_cli([console_script("fairseq-train"), data, *TRAIN, *EVAL_BLEU,
                     "--max-update", "150", "--save-dir", save])
    resumed = run_cli([console_script("fairseq-train"), data, *TRAIN, *EVAL_BLEU,
                       "--max-update", "300", "--save-dir", save])
    untrained = root / "untrained"
    run_cli([console_script("fairseq-train"), data, *TRAIN, "--lr", "1e-12", "--warmup-updates", "1",
             "--max-update", "1", "--save-dir", untrained])
    transformer = root / "transformer"
    run_cli([console_script("fairseq-train"), data, "--task", "translation", "--arch", "transformer",
             "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
             "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "16", "--decoder-ffn-embed-dim", "16",
             "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--optimizer", "adam",
             "--lr", "1e-3", "--max-tokens", "2000", "--max-update", "1", "--cpu", "--no-progress-bar",
             "--save-dir", transformer])
    return dict(root=root, text=text, data=data, spm=spm_prefix.with_suffix(".model"), save=save,
                untrained=untrained, transformer=transformer,
                train_logs=(first.stdout + first.stderr, resumed.stdout + resumed.stderr))


def _generate(data, checkpoint, *extra):
    result = run_cli([console_script("fairseq-generate"), data, "--user-dir", USER_DIR,
                      "--path", checkpoint, "--gen-subset", "test", "--beam", "5", "--cpu",
                      "--scoring", "sacrebleu", "--post-process", "sentencepiece",
                      "--max-tokens", "4000", *extra])
    return result.stdout + result.stderr


def _bleu(output: str) -> float:
    return float(re.search(r"BLEU = ([0-9.]+)", output).group(1))


@pytest.mark.slow
def test_training_with_eval_bleu_and_resume(trained):
    first, resumed = trained["train_logs"]
    assert re.search(r"valid on 'valid' subset .*\| bleu [0-9.]+", first)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 150 updates\)", resumed), resumed[-3000:]
    assert "num_updates 300" in resumed
    final_bleu = float(re.findall(r"\| bleu ([0-9.]+)", resumed)[-1])
    assert final_bleu > 50, final_bleu
    assert (trained["save"] / "checkpoint_best.pt").exists()


@pytest.mark.slow
def test_generate_beam5_sacrebleu_beats_untrained_and_skips_long_source(trained):
    data = trained["data"]
    with pytest.raises(AssertionError, match=r"Size of sample #\d+ is invalid.*max_positions=\(128, 128\).*"
                                             r"--skip-invalid-size-inputs-valid-test"):
        _generate(data, trained["save"] / "checkpoint_best.pt")
    skip = ["--skip-invalid-size-inputs-valid-test"]
    output = _generate(data, trained["save"] / "checkpoint_best.pt", *skip)
    assert "samples have invalid sizes and will be skipped" in output
    assert "Translated 40 sentences" in output  # 41 test lines, the long one skipped
    trained_bleu = _bleu(output)
    untrained_bleu = _bleu(_generate(data, trained["untrained"] / "checkpoint_last.pt", *skip))
    print(f"sacreBLEU trained {trained_bleu:.1f} vs untrained {untrained_bleu:.1f}")
    assert trained_bleu > 50 and trained_bleu > untrained_bleu + 40, (trained_bleu, untrained_bleu)
    hypotheses = re.findall(r"^D-\d+\t\S+\t(.*)$", output, re.M)
    assert len(hypotheses) == 40 and all("▁" not in h for h in hypotheses)  # pieces joined


@pytest.mark.slow
def test_interactive_on_stdin_with_sentencepiece(trained):
    rng = random.Random(7)
    sentences = [_sentence(rng) for _ in range(8)]
    lines = sentences[:4] + [""] + sentences[4:]  # an empty line among them
    result = run_cli([console_script("fairseq-interactive"), trained["data"], "--user-dir", USER_DIR,
                      "--path", trained["save"] / "checkpoint_best.pt", "--cpu", "--beam", "5",
                      "--source-lang", "en", "--target-lang", "de", "--bpe", "sentencepiece",
                      "--sentencepiece-model", trained["spm"], "--buffer-size", "4"],
                     input_text="".join(line + "\n" for line in lines))
    detokenized = {int(i): text for i, text in re.findall(r"^D-(\d+)\t\S+\t(.*)$", result.stdout, re.M)}
    assert sorted(detokenized) == list(range(9))  # every line, the empty one too, got an output
    hypotheses = [detokenized[i] for i in range(9) if i != 4]
    bleu = sacrebleu.corpus_bleu(hypotheses, [[s.upper() for s in sentences]]).score
    assert bleu > 50, (bleu, hypotheses)


@pytest.mark.slow
def test_hub_interface_round_trip(trained):
    result = python_snippet(f"""
from fairseq.hub_utils import GeneratorHubInterface
from mega_fairseq.models import MegaModel
hub = MegaModel.from_pretrained({str(trained['save'])!r}, checkpoint_file="checkpoint_best.pt",
                                data_name_or_path={str(trained['data'])!r}, bpe="sentencepiece",
                                sentencepiece_model={str(trained['spm'])!r})
assert isinstance(hub, GeneratorHubInterface), type(hub)
print("OUT", hub.translate("hotel india juliet kilo", beam=5))
print("OUT", hub.translate(["lima mike", "echo"], beam=2))
try:
    MegaModel.from_pretrained({str(trained['transformer'])!r}, checkpoint_file="checkpoint_last.pt",
                              data_name_or_path={str(trained['data'])!r})
except ValueError as error:
    print("REFUSED", error)
""")
    out = [line for line in result.stdout.splitlines() if line.startswith(("OUT", "REFUSED"))]
    assert out[0] == "OUT HOTEL INDIA JULIET KILO"
    assert out[1] == "OUT ['LIMA MIKE', 'ECHO']"
    assert out[2].startswith("REFUSED checkpoint_last.pt in ") and "holds a TransformerModel model, not a 'mega'" in out[2]


@pytest.mark.slow
def test_restoring_another_model_type_fails_clearly(trained, tmp_path):
    with pytest.raises(AssertionError) as failure:
        run_cli([console_script("fairseq-train"), trained["data"], *TRAIN, "--max-update", "2",
                 "--restore-file", trained["transformer"] / "checkpoint_last.pt", "--reset-optimizer",
                 "--save-dir", tmp_path / "restored"])
    message = str(failure.value)
    assert "not a 'mega' encoder-decoder: it has no Mega encoder" in message
    assert "Cannot load model parameters from checkpoint" in message  # fairseq's own wrapper
