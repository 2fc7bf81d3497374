"""The WMT'16 En-De recipe (examples/translation/README.md (section "Full-scale recipe")) on a tiny fake slice:
scripts/prepare_wmt16_en_de.py (tarball, checks, fairseq-preprocess), scripts/score_translation.py
(tokenized BLEU with compound splitting, detokenized sacreBLEU), the recipe's commands."""

import collections
import json
import math
import random
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU

from conftest import REPO, console_script, run_cli

import prepare_wmt16_en_de as prepare  # noqa: E402
import score_translation as scoring  # noqa: E402

PREPARE = REPO / "scripts" / "prepare_wmt16_en_de.py"
SCORE = REPO / "scripts" / "score_translation.py"
RECIPE = REPO / "examples" / "translation" / "README.md"


def recipe_text() -> str:
    """The README's full-scale recipe section (it runs to the end of the file)."""
    text = RECIPE.read_text()
    return text[text.index("## Full-scale recipe: WMT16"):]


PREFIXES = {"train": "train.tok.clean.bpe.32000", "valid": "newstest2013.tok.bpe.32000",
            "test": "newstest2014.tok.bpe.32000"}
SYLLABLES = {"en": ["the", "ka", "lo", "mi", "ne", "ru", "sta", "te"],
             "de": ["die", "ka", "lo", "mu", "ne", "ri", "sch", "ta"]}


# ------------------------------------------------------------------ fake WMT'16 data
def fake_word(rng: random.Random, lang: str) -> str:
    """One word in BPE form: 1-3 subwords joined with '@@ ', sometimes a hyphen compound."""
    word = "@@ ".join(rng.choice(SYLLABLES[lang]) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.1:
        word += "@@ -@@ " + rng.choice(SYLLABLES[lang])
    return word


def fake_sentence(rng: random.Random, lang: str) -> str:
    """A fake tokenised, BPE'd sentence."""
    return " ".join(fake_word(rng, lang) for _ in range(rng.randint(3, 9))) + " ."


def write_fake_wmt16(directory: Path, sizes=(("train", 300), ("valid", 40), ("test", 40)), seed=0) -> Path:
    """Google's WMT'16 En-De layout with a few hundred fake lines."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in sizes:
        for lang in ("en", "de"):
            lines = [fake_sentence(rng, lang) for _ in range(count)]
            (directory / f"{PREFIXES[split]}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "bpe.32000").write_text("#version: 0.2\nk a\nl o\n", encoding="utf-8")
    (directory / "vocab.bpe.32000").write_text("\n".join(sorted(set(sum(SYLLABLES.values(), [])))) + "\n")
    return directory


def make_tarball(source: Path, tarball: Path) -> Path:
    """A .tar.gz holding the files as './name', like Google's wmt16_en_de.tar.gz."""
    with tarfile.open(tarball, "w:gz") as archive:
        for path in sorted(source.iterdir()):
            archive.add(path, arcname=f"./{path.name}")
    return tarball


def bin_prefix(destdir: Path, split: str, lang: str) -> Path:
    """Where fairseq-preprocess writes a split of one language."""
    return destdir / f"{split}.en-de.{lang}"


# ------------------------------------------------------------------ prepare_wmt16_en_de.py
def test_prepare_binarises_a_slice_of_the_tarball(tmp_path):
    make_tarball(write_fake_wmt16(tmp_path / "orig"), tmp_path / "wmt16_en_de.tar.gz")
    text, destdir = tmp_path / "text", tmp_path / "bin"
    result = run_cli([sys.executable, PREPARE, "--tarball", tmp_path / "wmt16_en_de.tar.gz", text,
                      "--destdir", destdir, "--max-lines", "120", "--workers", "1"])
    for name in prepare.required_files() + list(prepare.BPE_FILES):
        assert (text / name).read_bytes() == (tmp_path / "orig" / name).read_bytes()
    en_dict, de_dict = (destdir / "dict.en.txt").read_text(), (destdir / "dict.de.txt").read_text()
    assert en_dict == de_dict and "mu" in en_dict and "the" in en_dict  # joined: both languages

    from fairseq.data import Dictionary, indexed_dataset
    dictionary = Dictionary.load(str(destdir / "dict.en.txt"))
    for split, expected in (("train", 120), ("valid", 40), ("test", 40)):
        for lang in ("en", "de"):
            prefix = bin_prefix(destdir, split, lang)
            assert Path(f"{prefix}.bin").is_file() and Path(f"{prefix}.idx").is_file()
            dataset = indexed_dataset.MMapIndexedDataset(str(prefix))
            assert len(dataset) == expected
            first = (text / f"{PREFIXES[split]}.{lang}").read_text().splitlines()[0]
            assert dictionary.string(dataset[0]) == first
    assert "using the first 120 lines" in result.stdout
    assert "fairseq-train " + str(destdir) in result.stdout and "score_translation.py" in result.stdout


def test_prepare_names_a_missing_file(tmp_path):
    text = write_fake_wmt16(tmp_path / "text")
    (text / "newstest2014.tok.bpe.32000.de").unlink()
    result = subprocess.run([sys.executable, str(PREPARE), str(text), "--destdir", str(tmp_path / "bin")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "missing file(s)" in result.stderr and "newstest2014.tok.bpe.32000.de" in result.stderr
    assert not (tmp_path / "bin").exists()


def test_prepare_rejects_unequal_line_counts_and_empty_files(tmp_path, capsys):
    text = write_fake_wmt16(tmp_path / "text")
    with open(text / "newstest2013.tok.bpe.32000.en", "a") as handle:
        handle.write("one more line\n")
    assert prepare.main([str(text), "--destdir", str(tmp_path / "bin")]) == 1
    assert "newstest2013.tok.bpe.32000.en has 41 lines, newstest2013.tok.bpe.32000.de has 40" in capsys.readouterr().err
    for lang in ("en", "de"):
        (text / f"newstest2013.tok.bpe.32000.{lang}").write_text("")
    assert prepare.main([str(text), "--destdir", str(tmp_path / "bin")]) == 1
    assert "are empty" in capsys.readouterr().err


def test_prepare_refuses_existing_output_and_bad_tarball(tmp_path, capsys):
    text = write_fake_wmt16(tmp_path / "text")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "dict.en.txt").write_text("a 1\n")
    assert prepare.main([str(text), "--destdir", str(tmp_path / "bin")]) == 1
    assert "already holds dict.en.txt" in capsys.readouterr().err
    assert prepare.main(["--tarball", str(tmp_path / "nope.tar.gz"), str(tmp_path / "x")]) == 1
    assert "tarball not found" in capsys.readouterr().err
    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as archive:
        archive.add(text / "bpe.32000", arcname="unrelated.txt")
    assert prepare.main(["--tarball", str(tmp_path / "other.tar.gz"), str(tmp_path / "y")]) == 1
    assert "holds none of the expected files" in capsys.readouterr().err


def test_prepare_dry_run_counts_lines_and_prints_the_command(tmp_path, capsys):
    text = write_fake_wmt16(tmp_path / "text")
    assert prepare.main([str(text), "--destdir", str(tmp_path / "bin"), "--dry-run", "--workers", "3"]) == 0
    out = capsys.readouterr().out
    assert "lines per split: train 300, valid 40, test 40" in out
    assert "--joined-dictionary --workers 3" in out and "--nwordssrc 33000" in out
    assert not (tmp_path / "bin").exists()
    assert prepare.count_lines(text / "bpe.32000") == 3
    (tmp_path / "no_newline").write_text("a\nb")
    assert prepare.count_lines(tmp_path / "no_newline") == 2


# ------------------------------------------------------------------ score_translation.py
def generate_output(pairs, summary=True) -> str:
    """A fairseq-generate output (S/T/H/D/P lines, ids out of order) for (hyp, ref) pairs."""
    blocks = []
    for sample_id, (hyp, ref) in enumerate(pairs):
        blocks.append(f"S-{sample_id}\tsource {sample_id}\nT-{sample_id}\t{ref}\n"
                      f"H-{sample_id}\t-0.5\t{hyp}\nD-{sample_id}\t-0.5\t{hyp}\nP-{sample_id}\t-0.1 -0.2\n")
    blocks.reverse()
    text = "".join(blocks)
    if summary:
        text += "Generate test with beam=5: BLEU4 = 12.34, 50.0/20.0/10.0/5.0 (BP=1.000, ratio=1.000)\n"
    return text


def run_score(argv, capsys):
    """Run score_translation in-process: (exit status, stdout, stderr)."""
    status = scoring.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_bpe_removal_and_compound_splitting_match_fairseqs_conventions():
    assert scoring.remove_bpe("das Re@@ gier@@ ungs@@ -@@ gebäude") == "das Regierungs-gebäude"
    assert scoring.remove_bpe("end@@") == "end"
    # expected strings = printf ... | perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'
    assert scoring.split_compounds("state-of-the-art") == "state ##AT##-##AT## of ##AT##-##AT## the ##AT##-##AT## art"
    assert scoring.split_compounds("a-b-c - d") == "a ##AT##-##AT## b-c - d"  # s///g: matches do not overlap
    assert scoring.split_compounds("x--y") == "x ##AT##-##AT## -y"


def test_identical_hypotheses_score_100_and_nbest_uses_the_first(tmp_path, capsys):
    pairs = [("ein gut@@ es Bei@@ spiel .", "ein gut@@ es Bei@@ spiel ."), ("das ist ein Test .", "das ist ein Test .")]
    gen = tmp_path / "gen.out"
    gen.write_text(generate_output(pairs) + "H-1\t-9.0\tvöllig falsch\n")
    status, out, _ = run_score([gen, "--detok", "none", "--json", tmp_path / "s.json"], capsys)
    assert status == 0 and "tokenized BLEU" in out
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["tokenized_bleu"]["score"] == 100.0 and result["sacrebleu"]["score"] == 100.0
    assert result["sentences"] == 2 and result["first_id"] == 0 and result["last_id"] == 1
    assert result["fairseq_generate_bleu"].startswith("BLEU4 = 12.34")
    assert "not comparable" in result["sacrebleu_note"] and result["sacrebleu"]["raw_references"] is False


def test_compound_splitting_changes_bleu_as_computed_by_hand(tmp_path, capsys):
    (tmp_path / "hyp").write_text("the well known fact is true .\n")
    (tmp_path / "ref").write_text("the well@@ -@@ known fact is true .\n")
    status, _, _ = run_score(["--hyp-file", tmp_path / "hyp", "--ref-file", tmp_path / "ref",
                              "--detok", "none", "--json", tmp_path / "s.json"], capsys)
    assert status == 0
    tok = json.loads((tmp_path / "s.json").read_text())["tokenized_bleu"]
    # split reference: the well ##AT##-##AT## known fact is true . (8 tokens; hypothesis 7)
    # matches: 1-grams 7/7, 2-grams 5/6, 3-grams 3/5, 4-grams 2/4; BP = exp(1 - 8/7)
    expected = 100 * math.exp(1 - 8 / 7) * (7 / 7 * 5 / 6 * 3 / 5 * 2 / 4) ** 0.25
    assert tok["score"] == pytest.approx(expected, abs=1e-3)
    assert (tok["sys_len"], tok["ref_len"]) == (7, 8)
    assert tok["precisions"] == pytest.approx([100.0, 500 / 6, 60.0, 50.0], abs=1e-3)
    # without splitting the same pair scores 5/7, 3/6, 2/5, 1/4 with BP 1: about 43.47
    unsplit = BLEU(tokenize="none", smooth_method="none").corpus_score(
        ["the well known fact is true ."], [["the well-known fact is true ."]])
    assert unsplit.score == pytest.approx(100 * (5 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25, abs=1e-6)
    assert abs(tok["score"] - unsplit.score) > 15


def test_tokenized_bleu_equals_compound_split_bleu_sh_with_fairseq_score(tmp_path, capsys):
    """Our number = fairseq's pipeline: perl splitting (compound_split_bleu.sh) + fairseq-score."""
    if shutil.which("perl") is None:
        pytest.skip("perl not installed")
    rng = random.Random(3)
    pairs = []
    for _ in range(60):
        ref = scoring.remove_bpe(fake_sentence(rng, "de"))
        words = ref.split()
        hyp = [w if rng.random() < 0.7 else scoring.remove_bpe(fake_word(rng, "de")) for w in words]
        pairs.append((" ".join(hyp[: max(1, len(hyp) - rng.randint(0, 1))]), ref))
    gen = tmp_path / "gen.out"
    gen.write_text(generate_output(pairs))
    status, _, _ = run_score([gen, "--detok", "none", "--json", tmp_path / "s.json"], capsys)
    assert status == 0
    ours = json.loads((tmp_path / "s.json").read_text())["tokenized_bleu"]["score"]

    lines = gen.read_text().splitlines()
    split = ["perl", "-ple", r"s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g"]
    sys_text = "".join(line.split("\t")[-1] + "\n" for line in lines if line.startswith("H"))
    ref_text = "".join(line.split("\t", 1)[1] + "\n" for line in lines if line.startswith("T"))
    (tmp_path / "sys").write_text(subprocess.run(split, input=sys_text, capture_output=True, text=True).stdout)
    (tmp_path / "ref").write_text(subprocess.run(split, input=ref_text, capture_output=True, text=True).stdout)
    assert "##AT##-##AT##" in (tmp_path / "ref").read_text()
    result = run_cli([console_script("fairseq-score"), "--sys", tmp_path / "sys", "--ref", tmp_path / "ref"])
    theirs = float(re.search(r"BLEU4 = ([\d.]+)", result.stdout).group(1))
    assert 5 < theirs < 95
    assert ours == pytest.approx(theirs, abs=0.006)


def test_sacrebleu_against_raw_references(tmp_path, capsys):
    hyps = ["Das ist gut.", "Ein zweiter Satz, oder?", "Nichts passt hier"]
    raw = ["Das ist gut.", "Ein zweiter Satz, nicht wahr?", "Alles anders"]
    (tmp_path / "hyp").write_text("\n".join(hyps) + "\n")
    (tmp_path / "ref").write_text("\n".join(raw) + "\n")
    (tmp_path / "raw").write_text("\n".join(raw) + "\n")
    status, out, _ = run_score(["--hyp-file", tmp_path / "hyp", "--ref-file", tmp_path / "ref", "--detok", "none",
                                "--sacrebleu-ref", tmp_path / "raw", "--json", tmp_path / "s.json"], capsys)
    assert status == 0 and "detokenized sacreBLEU" in out
    result = json.loads((tmp_path / "s.json").read_text())
    expected = BLEU().corpus_score(hyps, [raw])
    assert result["sacrebleu"]["score"] == pytest.approx(expected.score, abs=1e-4)
    assert "tok:13a" in result["sacrebleu"]["signature"] and "sacrebleu_note" not in result


def test_without_sacremoses_the_tokenized_bleu_is_still_reported(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sacremoses", None)  # import fails as if not installed
    gen = tmp_path / "gen.out"
    gen.write_text(generate_output([("a b c d", "a b c d")]))
    status, out, _ = run_score([gen, "--json", tmp_path / "s.json"], capsys)
    assert status == 0 and "sacremoses is not installed" in out and "pip install sacremoses" in out
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["tokenized_bleu"]["score"] == 100.0 and result["sacrebleu"] is None


def test_moses_detokenization_when_sacremoses_is_installed(tmp_path, capsys):
    import sacremoses  # noqa: F401  (a dependency of mega-fairseq, installed with it)
    gen = tmp_path / "gen.out"
    gen.write_text(generate_output([("Das ist &quot; gut &quot; , oder ?", "Das ist &quot; gut &quot; , oder ?")]))
    (tmp_path / "raw").write_text('Das ist "gut", oder?\n')
    status, _, _ = run_score([gen, "--sacrebleu-ref", tmp_path / "raw", "--json", tmp_path / "s.json"], capsys)
    assert status == 0
    sacre = json.loads((tmp_path / "s.json").read_text())["sacrebleu"]
    assert sacre["score"] == 100.0 and sacre["detokenizer"] == "sacremoses (en)"


@pytest.mark.parametrize("content, message", [
    ("", "has no H-<id> lines"),
    ("H-0\t-1\ta b\n", "has no T-<id> lines"),
    ("T-0\ta b\nH-0\t-1\ta b\nH-3\t-1\tc d\n", "ids without reference: [3]"),
    ("T-0\ta b\nT-1\tc d\nH-0\t-1\ta b\n", "ids without hypothesis: [1]"),
    ("T-0\ta\nT-0\tb\nH-0\t-1\ta\n", "second reference for sample 0"),
    ("T-x\ta\nH-x\t-1\ta\n", "cannot read the sample id"),
])
def test_bad_generate_output_gives_a_clear_error(tmp_path, capsys, content, message):
    gen = tmp_path / "gen.out"
    gen.write_text(content)
    status, _, err = run_score([gen], capsys)
    assert status == 1 and message in err


def test_mismatched_or_empty_plain_files_give_a_clear_error(tmp_path, capsys):
    (tmp_path / "three").write_text("a\nb\nc\n")
    (tmp_path / "two").write_text("a\nb\n")
    (tmp_path / "empty").write_text("")
    status, _, err = run_score(["--hyp-file", tmp_path / "three", "--ref-file", tmp_path / "two"], capsys)
    assert status == 1 and "has 3 lines but" in err and "has 2" in err
    status, _, err = run_score(["--hyp-file", tmp_path / "empty", "--ref-file", tmp_path / "two"], capsys)
    assert status == 1 and "is empty" in err
    status, _, err = run_score(["--hyp-file", tmp_path / "two", "--ref-file", tmp_path / "two",
                                "--sacrebleu-ref", tmp_path / "three"], capsys)
    assert status == 1 and "has 3" in err
    status, _, err = run_score(["--hyp-file", tmp_path / "missing", "--ref-file", tmp_path / "two"], capsys)
    assert status == 1 and "file not found" in err
    with pytest.raises(SystemExit):
        scoring.parse_args([str(tmp_path / "two"), "--hyp-file", str(tmp_path / "two")])
    with pytest.raises(SystemExit):
        scoring.parse_args(["--hyp-file", str(tmp_path / "two")])


def test_warns_when_generation_did_not_finish(tmp_path):
    gen = tmp_path / "gen.out"
    gen.write_text(generate_output([("a b c d", "a b c d")], summary=False))
    result = run_cli([sys.executable, SCORE, gen, "--detok", "none"])
    assert "does not end with fairseq-generate's BLEU line" in result.stderr
    assert "tokenized BLEU" in result.stdout and "100.00" in result.stdout


# ------------------------------------------------------------------ the recipe's commands
def recipe_command(text: str, program: str):
    """The argument list of the first ``program`` command in a text (continuation lines
    joined, output redirection dropped)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(program + " "))
    parts = []
    for line in lines[start:]:
        stripped = line.strip()
        parts.append(stripped.rstrip("\\"))
        if not stripped.endswith("\\"):
            break
    args = shlex.split(" ".join(parts))
    return args[: args.index(">")] if ">" in args else args


@pytest.mark.parametrize("program", ["fairseq-train", "fairseq-generate"])
def test_printed_next_commands_match_the_recipe(program):
    printed = prepare.next_commands(Path("data-bin/wmt16_en_de_bpe32k"))
    assert recipe_command(printed, program) == recipe_command(recipe_text(), program)


def test_recipe_documents_the_sources_and_numbers():
    text = recipe_text()
    assert text.startswith("## Full-scale recipe: WMT16 English–German (GPU)")
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # headings outside code blocks
    assert all(line.startswith("##") for line in prose.splitlines() if line.startswith("#"))
    for fact in ("0B_bZck-ksdkpM25jRUN2X2UxMm8", "README.mt.md", "2209.10655", "29.18", "28.47", "27.97",
                 "27.33", "--lr 1e-3", "--weight-decay 0.05", "--label-smoothing 0.1", "--max-update 500000",
                 "--beam 5 --lenpen 0.5", "average_checkpoints.py", "wmt14/full"):
        assert fact in text, fact


SHRINK = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
          "--encoder-hidden-dim", "64", "--decoder-hidden-dim", "64", "--encoder-ffn-embed-dim", "64",
          "--decoder-ffn-embed-dim", "64", "--encoder-z-dim", "16", "--decoder-z-dim", "16", "--encoder-n-dim", "2",
          "--decoder-n-dim", "2", "--max-tokens", "2048", "--max-update", "2", "--cpu", "--no-progress-bar"]


@pytest.mark.slow
def test_recipe_end_to_end_on_a_fake_slice(tmp_path):
    """prepare -> the recipe's fairseq-train (model shrunk, CPU, 2 updates, no --fp16) ->
    the recipe's fairseq-generate -> score_translation.py."""
    text = write_fake_wmt16(tmp_path / "text", sizes=(("train", 200), ("valid", 12), ("test", 12)))
    data = tmp_path / "data-bin"
    run_cli([sys.executable, PREPARE, text, "--destdir", data, "--workers", "1"])
    recipe = recipe_text()
    train = recipe_command(recipe, "fairseq-train")
    train = [a for a in train[1:] if a != "--fp16"]
    train[0] = str(data)
    train[train.index("--save-dir") + 1] = str(tmp_path / "ckpt")
    run_cli([console_script("fairseq-train"), *train, *SHRINK], cwd=REPO)
    assert (tmp_path / "ckpt" / "checkpoint_best.pt").is_file()

    generate = recipe_command(recipe, "fairseq-generate")[1:]
    generate[0] = str(data)
    generate[generate.index("--path") + 1] = str(tmp_path / "ckpt" / "checkpoint_best.pt")
    result = run_cli([console_script("fairseq-generate"), *generate, "--cpu", "--max-len-b", "20"], cwd=REPO)
    (tmp_path / "gen.out").write_text(result.stdout)
    assert sum(line.startswith("H-") for line in result.stdout.splitlines()) == 12
    scored = run_cli([sys.executable, SCORE, tmp_path / "gen.out", "--detok", "none", "--json", tmp_path / "s.json"])
    assert "tokenized BLEU" in scored.stdout
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["sentences"] == 12
    # two updates teach the model nothing, so the score is checked against BLEU computed
    # here from the H-/T- lines (catches a scorer that pairs hypotheses with the wrong
    # references, reads the wrong field or counts n-grams wrongly) ...
    generated = (tmp_path / "gen.out").read_text()
    hyps, refs = _generate_pairs(generated)
    assert len(hyps) == len(refs) == 12
    assert math.isclose(result["tokenized_bleu"]["score"], _corpus_bleu(hyps, refs), abs_tol=1e-6)
    # ... and on two rewritten outputs: the references as hypotheses score 100, the
    # references of the next sentence score as the formula says (below 100)
    for shift in (0, 1):
        rewritten = _with_hypotheses(generated, {i: refs[(i + shift) % 12] for i in range(12)})
        (tmp_path / f"gen{shift}.out").write_text(rewritten)
        run_cli([sys.executable, SCORE, tmp_path / f"gen{shift}.out", "--detok", "none",
                 "--json", tmp_path / f"s{shift}.json"])
        score = json.loads((tmp_path / f"s{shift}.json").read_text())["tokenized_bleu"]["score"]
        formula = _corpus_bleu([refs[(i + shift) % 12] for i in range(12)], refs)
        assert math.isclose(score, formula, abs_tol=1e-6), (shift, score, formula)
        assert score == 100.0 if shift == 0 else score < 100.0, (shift, score)


def _generate_pairs(output: str):
    """([hypothesis], [reference]) by sample id from fairseq-generate output: the first
    H-<id> line's third field and the T-<id> line's second field."""
    hyps, refs = {}, {}
    for line in output.splitlines():
        fields = line.split("\t")
        if line.startswith("H-"):
            hyps.setdefault(int(fields[0][2:]), fields[2])
        elif line.startswith("T-"):
            refs[int(fields[0][2:])] = fields[1]
    return [hyps[i] for i in sorted(hyps)], [refs[i] for i in sorted(hyps)]


def _with_hypotheses(output: str, texts: dict) -> str:
    """The fairseq-generate output with the text of every H-<id> line replaced."""
    lines = []
    for line in output.splitlines():
        if line.startswith("H-"):
            tag, score, _ = line.split("\t")
            line = "\t".join([tag, score, texts[int(tag[2:])]])
        lines.append(line)
    return "\n".join(lines) + "\n"


def _corpus_bleu(hyps, refs) -> float:
    """Corpus BLEU-4 (percent) on whitespace tokens: clipped n-gram precisions, no
    smoothing, brevity penalty exp(1 - r / h) when the hypotheses are shorter."""
    matches, totals, hyp_length, ref_length = [0] * 4, [0] * 4, 0, 0
    for hyp, ref in zip(hyps, refs):
        hyp, ref = hyp.split(), ref.split()
        hyp_length, ref_length = hyp_length + len(hyp), ref_length + len(ref)
        for n in range(1, 5):
            hyp_grams = collections.Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            ref_grams = collections.Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum(min(count, ref_grams[gram]) for gram, count in hyp_grams.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return 100.0 * brevity * math.exp(log_precision)
