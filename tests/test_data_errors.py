"""Empty and undecodable data: one clear message instead of a traceback, and no partial
outputs.

* every data script reading text names the file, line and byte offset of a byte that is
  not UTF-8, exits non-zero and leaves its output folder as it was;
* a failure after some outputs were written (an input that fails late, or a monkeypatched
  step) leaves no new, empty or partial files and keeps earlier outputs intact;
* ``fairseq-train`` / ``fairseq-eval-lm`` on a binarised split without tokens name the
  ``.bin`` file and the split (``mega_fairseq_compat.data_checks``).
"""

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import BUNDLED_TEXT, REPO, SCRIPTS, console_script, run_cli
from mega_fairseq_compat.data_checks import EmptySplitError, empty_split_message

import atomic_output  # noqa: E402
import generate_listops  # noqa: E402
import images_to_pixel_sequences  # noqa: E402
import prepare_enwik8  # noqa: E402
import prepare_gettext_corpus  # noqa: E402
import prepare_vader_sentiment  # noqa: E402
import text_input  # noqa: E402
from test_vader_and_examples import _tar_bytes  # noqa: E402

QUIET_ENV = {"OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# the third line holds "caf" + Latin-1 "é" (0xe9) followed by a space: 18 bytes precede it
LATIN1_TEXT = b"first line\nsecond line\ncaf\xe9 au lait\nlast line\n"
LATIN1_MESSAGE = "line 3: not UTF-8 (byte 0xe9 at byte offset 26"


def run_script(name, *args, cwd=None):
    """Run scripts/NAME with this interpreter; returns the completed process (any status)."""
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **QUIET_ENV}, timeout=300)


def assert_clear_failure(result, *fragments):
    """Non-zero exit, every fragment in stderr, no traceback."""
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden temporary files included) with its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def previous_outputs(folder: Path, *names) -> dict:
    """Files standing for the outputs of an earlier run; returns their snapshot."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(f"earlier {name}\n")
    return snapshot(folder)


# ------------------------------------------------------------------ shared helpers

def test_text_input_names_file_line_and_offset(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_bytes(LATIN1_TEXT)
    with pytest.raises(text_input.TextDecodeError) as caught:
        list(text_input.iter_lines(path))
    assert str(caught.value).startswith(f"{path}, {LATIN1_MESSAGE}: invalid continuation byte)")
    assert caught.value.user_facing and isinstance(caught.value, ValueError)
    with pytest.raises(text_input.TextDecodeError, match="line 3"):
        text_input.read_text(path)
    with pytest.raises(text_input.TextDecodeError, match="line 3"):
        text_input.check_text(path, block_size=7)
    path.write_bytes(b"ok\n\xc3")  # a character cut off at the end of the file
    with pytest.raises(text_input.TextDecodeError, match="line 2: not UTF-8 .*byte offset 3"):
        text_input.check_text(path)
    path.write_text("fine\n", encoding="utf-8")
    assert text_input.locate_decode_error(path) is None and text_input.read_text(path) == "fine\n"


def test_decode_bytes_counts_offsets_from_the_first_byte_with_a_bom():
    data = b"\xef\xbb\xbfab\n\xffc"
    with pytest.raises(text_input.TextDecodeError, match=r"x, line 2: not UTF-8 \(byte 0xff at byte offset 6"):
        text_input.decode_bytes("x", data, "utf-8-sig")
    assert text_input.decode_bytes("x", b"\xef\xbb\xbfok", "utf-8-sig") == "ok"


def test_atomic_outputs_commit_together_or_not_at_all(tmp_path):
    out = tmp_path / "new" / "deeper"
    with atomic_output.AtomicOutputs() as outputs:
        outputs.path(out / "a.txt").write_text("a")
        outputs.path(out / "b.txt").write_text("b")
        assert not (out / "a.txt").exists()
    assert snapshot(out) == {"a.txt": b"a", "b.txt": b"b"}
    assert (out / "a.txt").stat().st_mode & 0o044  # readable by others, unlike mkstemp's files

    before = snapshot(out)
    with pytest.raises(RuntimeError):
        with atomic_output.AtomicOutputs() as outputs:
            outputs.path(out / "a.txt").write_text("changed")
            outputs.path(out / "c.txt").write_text("c")
            raise RuntimeError("late failure")
    assert snapshot(out) == before

    fresh = tmp_path / "fresh" / "sub"
    with pytest.raises(RuntimeError):
        with atomic_output.AtomicOutputs() as outputs:
            outputs.path(fresh / "a.txt").write_text("a")
            raise RuntimeError("late failure")
    assert not (tmp_path / "fresh").exists()  # the folders it created are gone again


# ------------------------------------------------------------------ prepare_lm_text.py

def test_lm_text_undecodable_input_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(LATIN1_TEXT * 10)
    result = run_script("prepare_lm_text.py", "--inputs", BUNDLED_TEXT / "tempest.txt", bad,
                        "--out-dir", tmp_path / "fresh")
    assert_clear_failure(result, f"{bad}, {LATIN1_MESSAGE}")
    assert not (tmp_path / "fresh").exists()

    out = tmp_path / "out"
    before = previous_outputs(out, "train.txt", "valid.txt", "test.txt")
    result = run_script("prepare_lm_text.py", "--inputs", BUNDLED_TEXT / "tempest.txt", bad, "--out-dir", out)
    assert_clear_failure(result, f"{bad}, {LATIN1_MESSAGE}")
    assert snapshot(out) == before


def test_lm_text_late_failure_leaves_no_partial_files(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("one line\n")
    out = tmp_path / "out"
    before = previous_outputs(out, "train.txt")
    result = run_script("prepare_lm_text.py", "--inputs", BUNDLED_TEXT / "tempest.txt", short, "--out-dir", out)
    assert_clear_failure(result, f"{short}: a document of 1 lines is too short to split")
    assert snapshot(out) == before  # no valid.txt/test.txt, train.txt untouched


# ------------------------------------------------------------------ prepare_enwik8.py

def test_enwik8_late_failure_leaves_no_partial_files(tmp_path, monkeypatch):
    source = tmp_path / "enwik8"
    source.write_bytes((BUNDLED_TEXT / "macbeth.txt").read_bytes()[:3000])
    real_byte_lines = prepare_enwik8.byte_lines
    calls = []

    def failing_on_test(part):
        calls.append(len(part))
        if len(calls) == 3:
            raise OSError("disk full")
        return real_byte_lines(part)

    monkeypatch.setattr(prepare_enwik8, "byte_lines", failing_on_test)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        prepare_enwik8.main(["--input", str(source), "--out-dir", str(out),
                             "--train-bytes", "2000", "--valid-bytes", "500"])
    assert not out.exists()
    result = run_script("prepare_enwik8.py", "--input", source, "--out-dir", out, "--train-bytes", "0")
    assert_clear_failure(result, "must be positive")


# ------------------------------------------------------------------ train_sentencepiece.py

def test_sentencepiece_undecodable_inputs(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("".join(f"sentence number {i} with some words\n" for i in range(200)))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(LATIN1_TEXT)
    result = run_script("train_sentencepiece.py", "learn", "--inputs", good, bad,
                        "--model-prefix", tmp_path / "spm" / "m", "--vocab-size", "40", "--soft-vocab-limit")
    assert_clear_failure(result, f"{bad}, {LATIN1_MESSAGE}")
    assert not (tmp_path / "spm" / "m.model").exists()

    run_cli([sys.executable, SCRIPTS / "train_sentencepiece.py", "learn", "--inputs", good,
             "--model-prefix", tmp_path / "spm" / "m", "--vocab-size", "40", "--soft-vocab-limit"], env=QUIET_ENV)
    out = tmp_path / "encoded"
    before = previous_outputs(out, "good.spm")
    result = run_script("train_sentencepiece.py", "encode", "--model", tmp_path / "spm" / "m.model",
                        "--inputs", good, bad, "--outputs", out / "good.spm", out / "bad.spm")
    assert_clear_failure(result, f"{bad}, {LATIN1_MESSAGE}")
    assert snapshot(out) == before  # the first pair succeeded, but its output was not replaced


# ------------------------------------------------------------------ score_translation.py

def test_score_translation_undecodable_hypotheses(tmp_path):
    hyp = tmp_path / "hyp.txt"
    hyp.write_bytes(LATIN1_TEXT)
    ref = tmp_path / "ref.txt"
    ref.write_text("first line\nsecond line\ncafe au lait\nlast line\n")
    result = run_script("score_translation.py", "--hyp-file", hyp, "--ref-file", ref, "--json", tmp_path / "s.json")
    assert_clear_failure(result, f"error: {hyp}, {LATIN1_MESSAGE}")
    assert not (tmp_path / "s.json").exists()


# ------------------------------------------------------------------ prepare_wmt16_en_de.py

WMT_NAMES = [f"{prefix}.{lang}" for prefix in ("train.tok.clean.bpe.32000", "newstest2013.tok.bpe.32000",
                                               "newstest2014.tok.bpe.32000") for lang in ("en", "de")]


def test_wmt16_undecodable_file_and_truncated_tarball(tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    for name in WMT_NAMES:
        (text / name).write_text("a b c\nd e f\nx y z\nlast one\n")
    (text / WMT_NAMES[3]).write_bytes(LATIN1_TEXT)
    result = run_script("prepare_wmt16_en_de.py", text, "--destdir", tmp_path / "bin", "--dry-run")
    assert_clear_failure(result, f"{text / WMT_NAMES[3]}, {LATIN1_MESSAGE}")
    assert not (tmp_path / "bin").exists()

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in WMT_NAMES:
            data = ("".join(f"line {i} of {name}\n" for i in range(3000))).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tarball = tmp_path / "wmt16_en_de.tar.gz"
    tarball.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # cut off half-way
    result = run_script("prepare_wmt16_en_de.py", tmp_path / "extracted", "--tarball", tarball, "--dry-run")
    assert_clear_failure(result, f"{tarball}: extraction failed")
    assert not (tmp_path / "extracted").exists()


# ------------------------------------------------------------------ prepare_vader_sentiment.py

def vader_sdist(path: Path, tweets: bytes) -> Path:
    """A stand-in for the vaderSentiment sdist: the four ground-truth files in its inner tarball."""
    rows = "".join(f"{i}\t{(-1) ** i * 2.5}\tsentence number {i} is here\n" for i in range(1, 41)).encode()
    files = {name: rows for name in prepare_vader_sentiment.SOURCES.values()}
    files["tweets_GroundTruth.txt"] = tweets

    inner = _tar_bytes({f"{prepare_vader_sentiment.INNER_FOLDER}/{name}": data for name, data in files.items()})
    path.write_bytes(_tar_bytes({f"vaderSentiment-3.3.2/{prepare_vader_sentiment.INNER_TARBALL}": inner}))
    return path


def test_vader_undecodable_ground_truth(tmp_path):
    sdist = vader_sdist(tmp_path / "v.tar.gz", b"1\t2.0\tgood one\n2\t-2.0\tcaf\xe9 here\n")
    out = tmp_path / "out"
    before = previous_outputs(out, "train.input0", "stats.json")
    result = run_script("prepare_vader_sentiment.py", "--sdist", sdist, "--out-dir", out)
    assert_clear_failure(result, "tweets_GroundTruth.txt, line 2: not UTF-8 (byte 0xe9 at byte offset 25")
    assert snapshot(out) == before


def test_vader_late_failure_leaves_no_partial_files(tmp_path, monkeypatch):
    sdist = vader_sdist(tmp_path / "v.tar.gz", b"1\t2.0\tgood one\n2\t-2.0\tbad one\n")

    def failing_statistics(splits):
        raise RuntimeError("late failure")

    monkeypatch.setattr(prepare_vader_sentiment, "statistics", failing_statistics)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="late failure"):
        prepare_vader_sentiment.prepare(sdist, out)
    assert snapshot(out) == {}


# ------------------------------------------------------------------ prepare_gettext_corpus.py

def gettext_wheel(folder: Path, catalogues: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "app-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in catalogues.items():
            archive.writestr(member, data)
    return folder


def po_text(pairs) -> str:
    header = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
    return header + "".join(f'msgid "{en}"\nmsgstr "{de}"\n\n' for en, de in pairs)


GOOD_PAIRS = [(f"Open file number {i}", f"Datei Nummer {i} öffnen") for i in range(12)]


def test_gettext_undecodable_catalogue_is_named_and_skipped(tmp_path):
    bad = po_text([("Close", "Schlie\x00en")]).replace("\x00", "ß").encode("latin-1")
    wheels = gettext_wheel(tmp_path / "wheels", {
        "app/locale/de/LC_MESSAGES/good.po": po_text(GOOD_PAIRS).encode("utf-8"),
        "app/locale/de/LC_MESSAGES/bad.po": bad,
    })
    out = tmp_path / "out"
    result = run_script("prepare_gettext_corpus.py", "--packages", "app", "--wheel-dir", wheels, "--offline",
                        "--out-dir", out, "--valid-size", "2", "--test-size", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("skipping malformed catalogue app/locale/de/LC_MESSAGES/bad.po" in result.stderr
            and "line 6: not UTF-8 (byte 0xdf at byte offset" in result.stderr), result.stderr[-3000:]
    assert json.loads((out / "stats.json").read_text())["dropped"]["malformed_catalogues"] == 1


def test_gettext_late_failure_leaves_no_partial_files(tmp_path, monkeypatch):
    wheels = gettext_wheel(tmp_path / "wheels", {"app/locale/de/LC_MESSAGES/good.po": po_text(GOOD_PAIRS)})

    def failing_statistics(splits, first_package):
        raise RuntimeError("late failure")

    monkeypatch.setattr(prepare_gettext_corpus, "split_statistics", failing_statistics)
    out = tmp_path / "out"
    args = prepare_gettext_corpus.parse_args(["--packages", "app", "--wheel-dir", str(wheels), "--offline",
                                              "--out-dir", str(out), "--valid-size", "2", "--test-size", "2"])
    with pytest.raises(RuntimeError, match="late failure"):
        prepare_gettext_corpus.build_corpus(args)
    assert snapshot(out) == {}


# ------------------------------------------------------------------ generate_listops.py

def test_listops_late_failure_leaves_no_partial_files(tmp_path, monkeypatch):
    real = generate_listops.iter_examples
    calls = []

    def failing_third_split(count, *args, **kwargs):
        calls.append(count)
        examples = real(count, *args, **kwargs)
        if len(calls) < 3:
            return examples

        def exhausted():  # fails half-way, as iter_examples does after --max-attempts
            yield next(examples)
            raise ValueError("no more unique expressions")
        return exhausted()

    monkeypatch.setattr(generate_listops, "iter_examples", failing_third_split)
    out = tmp_path / "out"
    before = previous_outputs(out, "train.input")
    with pytest.raises(SystemExit, match="test: no more unique expressions"):
        generate_listops.main(["--out-dir", str(out), "--train-size", "5", "--valid-size", "2", "--test-size", "2",
                               "--min-length", "5", "--max-length", "40", "--no-progress"])
    assert snapshot(out) == before
    result = run_script("generate_listops.py", "--out-dir", out, "--train-size", "0", "--no-progress")
    assert_clear_failure(result, "--train-size must be at least 1")


# ------------------------------------------------------------------ images_to_pixel_sequences.py

def pgm_folder(root: Path) -> Path:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        (root / name / "a.pgm").write_bytes(b"P5 2 2 255\n" + bytes([1, 2, 3, 4]))
    return root


def test_images_undecodable_classes_file(tmp_path):
    root = pgm_folder(tmp_path / "images")
    out = tmp_path / "out"
    out.mkdir()
    (out / "classes.txt").write_bytes(b"cat\ndog\nn\xe9e\n")
    before = snapshot(out)
    result = run_script("images_to_pixel_sequences.py", "--input", root, "--out-dir", out, "--split", "valid")
    assert_clear_failure(result, f"{out / 'classes.txt'}, line 3: not UTF-8 (byte 0xe9 at byte offset 9")
    assert snapshot(out) == before


def test_images_late_failure_leaves_no_partial_files(tmp_path, monkeypatch):
    root = pgm_folder(tmp_path / "images")

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(images_to_pixel_sequences.np, "save", failing_save)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        images_to_pixel_sequences.main(["--input", str(root), "--out-dir", str(out), "--npy"])
    assert not out.exists()  # neither train.input/.label nor classes.txt


# ------------------------------------------------------------------ empty binarised splits

@pytest.fixture(scope="module")
def empty_split_data(tmp_path_factory):
    """Binarised LM data whose train and test splits are empty (valid is not)."""
    root = tmp_path_factory.mktemp("empty_splits")
    (root / "train.txt").write_text("")
    (root / "valid.txt").write_text("a b c\nd e\n" * 4)
    (root / "test.txt").write_text("")
    run_cli([console_script("fairseq-preprocess"), "--only-source", "--trainpref", "train.txt",
             "--validpref", "valid.txt", "--testpref", "test.txt", "--destdir", "data-bin", "--workers", "1"],
            cwd=root, env=QUIET_ENV)
    return root


TRAIN_OPTIONS = ["--user-dir", str(REPO / "mega_fairseq"), "--task", "language_modeling", "--arch", "mega_lm_tiny",
                 "--cpu", "--max-tokens", "64", "--tokens-per-sample", "16", "--optimizer", "adam", "--lr", "1e-3",
                 "--max-update", "1", "--num-workers", "0"]


def run_fairseq(name, *args, cwd):
    return subprocess.run([console_script(name), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **QUIET_ENV})


def assert_empty_split_message(result, message):
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert "cannot mmap an empty file" not in result.stderr
    assert "Exception ignored" not in result.stderr


@pytest.mark.slow
def test_empty_training_split_through_fairseq_train(empty_split_data):
    result = run_fairseq("fairseq-train", "data-bin", *TRAIN_OPTIONS, "--no-save", cwd=empty_split_data)
    assert_empty_split_message(result, "data-bin/train.bin holds no tokens: the training split is empty; "
                                       "rerun fairseq-preprocess with a non-empty --trainpref")


@pytest.mark.slow
def test_empty_test_split_through_fairseq_eval_lm(empty_split_data, tmp_path):
    run_cli([console_script("fairseq-train"), "data-bin", *TRAIN_OPTIONS, "--train-subset", "valid",
             "--disable-validation", "--save-dir", tmp_path], cwd=empty_split_data, env=QUIET_ENV)
    result = run_fairseq("fairseq-eval-lm", "data-bin", "--user-dir", REPO / "mega_fairseq", "--cpu",
                         "--path", tmp_path / "checkpoint_last.pt", "--gen-subset", "test",
                         "--tokens-per-sample", "16", "--max-tokens", "64", cwd=empty_split_data)
    assert_empty_split_message(result, "data-bin/test.bin holds no tokens: the test split is empty; "
                                       "rerun fairseq-preprocess with a non-empty --testpref")


def test_empty_split_messages():
    assert empty_split_message("bin/valid.bin") == (
        "bin/valid.bin holds no tokens: the valid split is empty; rerun fairseq-preprocess with a non-empty "
        "--validpref")
    assert empty_split_message("bin/valid1.de-en.de.bin").endswith("a non-empty --validpref")
    assert empty_split_message("bin/train.en-de.en.bin").startswith(
        "bin/train.en-de.en.bin holds no tokens: the training split is empty")
    assert "'dev' split" in empty_split_message("bin/dev.bin")


def test_empty_and_non_empty_datasets_in_process(empty_split_data):
    from fairseq.data import data_utils

    prefix = str(empty_split_data / "data-bin")
    assert len(data_utils.load_indexed_dataset(prefix + "/valid", None)) == 8
    with pytest.raises(EmptySplitError, match="the training split is empty") as caught:
        data_utils.load_indexed_dataset(prefix + "/train", None)
    assert caught.value.user_facing and isinstance(caught.value, ValueError)
