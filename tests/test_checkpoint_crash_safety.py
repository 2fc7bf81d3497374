"""Checkpoints survive a kill at any moment and a full disk; unloadable ones get a clear
error (mega_fairseq_compat.checkpoint_saving / checkpoint_diagnosis), through the real
fairseq console scripts."""

import hashlib
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, console_script, run_cli

pytestmark = pytest.mark.slow

ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
COMMON = [
    "--user-dir", REPO / "mega_fairseq", "--task", "language_modeling", "--tokens-per-sample", "32",
    "--sample-break-mode", "none", "--optimizer", "adam", "--lr", "1e-4", "--batch-size", "4", "--cpu",
    "--seed", "1", "--no-progress-bar", "--log-format", "simple", "--log-interval", "1",
    "--num-workers", "0", "--save-interval-updates", "1", "--keep-interval-updates", "2",
    "--no-epoch-checkpoints",
]
# one mega_lm layer at the paper's width: 59 MB checkpoints (weights and Adam state), so
# each save (one torch.save, two copies) takes a measurable time
BIG = ["--arch", "mega_lm", "--decoder-layers", "1"]
TINY = ["--arch", "mega_lm_tiny"]


def _environment():
    env = dict(os.environ)
    env.update(ENV)
    return env


def _train(data, save, model, *extra):
    return [console_script("fairseq-train"), data, *COMMON, *model, "--save-dir", save, *extra]


def _state(path):
    """A checkpoint loaded as fairseq loads it (the safe loader, the project's allow-list)."""
    import fairseq  # noqa: F401  (installs the allow-list)

    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _updates(path) -> int:
    return int(_state(path)["optimizer_history"][-1]["num_updates"])


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _checkpoints(folder):
    return sorted(p for p in Path(folder).glob("checkpoint*.pt"))


def _unfinished(folder):
    """Files of a save still in progress: this project's temporary names and fairseq's own."""
    return [p.name for p in Path(folder).iterdir()
            if p.name.endswith(".partial") or p.name.endswith(".pt.tmp")]


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash_lm")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    for split, lines in (("train", 300), ("valid", 8)):
        with open(root / f"{split}.txt", "w") as handle:
            for _ in range(lines):
                handle.write(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) + "\n")
    run_cli([console_script("fairseq-preprocess"), "--only-source", "--trainpref", root / "train.txt",
             "--validpref", root / "valid.txt", "--destdir", root / "bin", "--workers", "1"], env=ENV)
    return root / "bin"


@pytest.fixture(scope="module")
def small_run(lm_data, tmp_path_factory):
    """A save folder after 2 updates of mega_lm_tiny (checkpoint_1_1, _1_2, _best, _last)."""
    save = tmp_path_factory.mktemp("small_run") / "save"
    run_cli(_train(lm_data, save, TINY, "--max-update", "2"), env=ENV)
    return save


def _wait_and_kill(process, save, trigger, delay, timeout=120.0):
    """SIGKILL ``process`` ``delay`` seconds after ``trigger`` is seen in ``save``:
    'write' -- a new file is being written by torch.save (a temporary name appears);
    'copy'  -- a new checkpoint_E_N.pt appeared, so the copies to _best/_last follow."""
    exists = Path(save).exists()
    before = {p.name for p in Path(save).glob("checkpoint_*_*.pt")} if exists else set()
    left_before = set(_unfinished(save)) if exists else set()  # from an earlier kill
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"fairseq-train ended (status {process.returncode}) before the kill")
        if Path(save).exists():
            if trigger == "write":
                fired = bool(set(_unfinished(save)) - left_before)
            else:
                fired = bool({p.name for p in Path(save).glob("checkpoint_*_*.pt")} - before)
            if fired:
                time.sleep(delay)
                process.send_signal(signal.SIGKILL)
                process.wait()
                return
        time.sleep(0.003)
    process.kill()
    process.wait()
    raise AssertionError(f"no {trigger} seen in {save} within {timeout} s")


def test_kill_during_saves_never_leaves_a_bad_checkpoint(lm_data, tmp_path, capsys):
    """fairseq-train (59 MB checkpoints, a save after every update) killed with SIGKILL
    while files are written or copied: afterwards every checkpoint*.pt is a complete
    checkpoint, and the next run resumes from checkpoint_last.pt and trains further."""
    save = tmp_path / "save"
    schedule = [("write", 0.0), ("copy", 0.0), ("copy", 0.04), ("write", 0.05), ("copy", 0.12)]
    kills = verified = during_writes = 0
    for index, (trigger, delay) in enumerate(schedule):
        last = save / "checkpoint_last.pt"
        previous = _updates(last) if last.exists() else None
        log = tmp_path / f"run{index}.log"
        left_before = set(_unfinished(save)) if save.exists() else set()
        with open(log, "w") as output:
            process = subprocess.Popen([str(a) for a in _train(lm_data, save, BIG, "--max-update", "1000")],
                                       stdout=output, stderr=subprocess.STDOUT, env=_environment())
            _wait_and_kill(process, save, trigger, delay)
        kills += 1
        text = log.read_text()
        if previous is not None:
            assert re.search(rf"Loaded checkpoint \S*checkpoint_last\.pt \(epoch \d+ @ {previous} updates\)", text), \
                text[-3000:]
        during_writes += bool(set(_unfinished(save)) - left_before)
        for path in _checkpoints(save):
            state = _state(path)  # raises for an empty or truncated file
            assert "model" in state, path
            verified += 1
        assert (save / "checkpoint_last.pt").exists() or previous is None
    # the last kill is followed by a run that resumes and finishes
    previous = _updates(save / "checkpoint_last.pt")
    result = run_cli(_train(lm_data, save, BIG, "--max-update", str(previous + 1)), env=ENV)
    text = result.stdout + result.stderr
    assert re.search(rf"Loaded checkpoint \S*checkpoint_last\.pt \(epoch \d+ @ {previous} updates\)", text)
    assert _updates(save / "checkpoint_last.pt") == previous + 1
    assert not _unfinished(save), "the resumed run's save removes what the killed runs left"
    with capsys.disabled():
        print(f"\n[crash safety] {kills} kills, {verified} checkpoints verified, "
              f"{during_writes} kills during a write or copy")
    assert during_writes >= 2


def _limit_file_size(limit):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _resume_expecting_failure(lm_data, save, **popen):
    result = subprocess.run([str(a) for a in _train(lm_data, save, TINY, "--max-update", "4")],
                            capture_output=True, text=True, env=_environment(), timeout=300, **popen)
    assert result.returncode != 0, result.stdout[-3000:]
    return result.stdout + result.stderr


def test_file_size_limit_during_save_keeps_previous_checkpoint(small_run, lm_data, tmp_path):
    """Writes beyond RLIMIT_FSIZE fail (EFBIG) like on a full disk: the save fails with an
    error naming the file, and checkpoint_last.pt is the one from before."""
    save = tmp_path / "save"
    shutil.copytree(small_run, save)
    before = _digest(save / "checkpoint_last.pt")
    size = (save / "checkpoint_last.pt").stat().st_size
    output = _resume_expecting_failure(lm_data, save, preexec_fn=_limit_file_size(size // 2))
    assert re.search(r"could not write checkpoint \S*checkpoint_1_3\.pt: File too large", output), output[-3000:]
    assert _digest(save / "checkpoint_last.pt") == before
    assert "model" in _state(save / "checkpoint_last.pt")
    assert not (save / "checkpoint_1_3.pt").exists() and not _unfinished(save)


def test_full_disk_during_copy_keeps_previous_checkpoint(small_run, lm_data, tmp_path):
    """A tmpfs with room for one new checkpoint file: the first file of the save is written,
    the copy over checkpoint_best.pt fails with ENOSPC, checkpoint_last.pt is unchanged."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    size = (small_run / "checkpoint_last.pt").stat().st_size
    room = size * 2 + size // 2  # checkpoint_last.pt and one new file fit, a third does not
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "none", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the RLIMIT_FSIZE test covers this")
    try:
        save = mount_point / "save"
        save.mkdir()
        shutil.copy(small_run / "checkpoint_last.pt", save / "checkpoint_last.pt")
        before = _digest(save / "checkpoint_last.pt")
        output = _resume_expecting_failure(lm_data, save)
        assert re.search(r"could not copy \S*checkpoint_1_3\.pt to \S*checkpoint_(best|last)\.pt: "
                         r"No space left on device", output), output[-3000:]
        assert _digest(save / "checkpoint_last.pt") == before
        assert not _unfinished(save)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_eval_lm_names_the_problem_of_an_unloadable_checkpoint(small_run, lm_data, tmp_path):
    """fairseq-eval-lm --path on an empty and a random-bytes file (a truncated one: the
    fairseq-train test below): an error naming the file and what is wrong, and the newest
    loadable checkpoint beside it."""
    folder = tmp_path / "ckpt"
    shutil.copytree(small_run, folder)
    cases = {
        "empty.pt": (b"", r"is empty \(0 bytes\)"),
        "random.pt": (bytes(random.Random(1).randrange(1, 128) for _ in range(4096)),
                      r"is not a PyTorch checkpoint"),
    }
    newest = folder / "checkpoint_1_2.pt"
    os.utime(newest)  # the most recently modified loadable file
    for name, (content, problem) in cases.items():
        (folder / name).write_bytes(content)
        result = subprocess.run([console_script("fairseq-eval-lm"), str(lm_data), "--user-dir",
                                 str(REPO / "mega_fairseq"), "--path", str(folder / name), "--cpu",
                                 "--tokens-per-sample", "32"],
                                capture_output=True, text=True, env=_environment(), timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert re.search(rf"checkpoint \S*{name} {problem}", output), output[-3000:]
        assert f"The newest loadable checkpoint in {folder} is {newest} (saved " in output, output[-3000:]
        assert "2 updates" in output
        (folder / name).unlink()


def test_train_resume_from_truncated_last_checkpoint_suggests_another(small_run, lm_data, tmp_path):
    save = tmp_path / "save"
    shutil.copytree(small_run, save)
    last = save / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    output = _resume_expecting_failure(lm_data, save)
    assert re.search(r"checkpoint \S*checkpoint_last\.pt is truncated \(1000 bytes\)", output), output[-3000:]
    assert re.search(r"The newest loadable checkpoint in \S+ is \S*checkpoint_(1_2|best)\.pt", output)
    assert "--restore-file" in output


def test_not_a_fairseq_checkpoint_and_refused_content(tmp_path):
    """In-process: a PyTorch file without 'model', a list, a file whose numpy object array
    the safe loader refuses, and a truncated one; the good checkpoint beside them is named."""
    import numpy
    from fairseq import checkpoint_utils

    from mega_fairseq_compat.checkpoint_errors import CheckpointLoadError

    good = tmp_path / "checkpoint_good.pt"
    history = {"num_updates": 7, "optimizer_name": "Adam", "lr_scheduler_state": {"best": 1.0}}
    meters = [numpy.array([5, 3, 2], dtype=numpy.int64), numpy.ones(2, dtype=numpy.float16)]  # --eval-bleu
    torch.save({"model": {"w": torch.ones(2)}, "optimizer_history": [history],
                "extra_state": {"meters": meters}}, good)
    cases = {
        "nomodel.pt": ({"weights": torch.ones(2), "optimizer_history": []}, r"has no 'model' entry \(its keys: 'weights'"),
        "list.pt": ([1, 2], r"holds a list, not a dict"),
        "objects.pt": ({"model": {}, "meter": numpy.array(["a", 1], dtype=object)},
                       r"refuses: UnpicklingError: refused numpy\.dtype\('O8'"),
    }
    for name, (content, problem) in cases.items():
        torch.save(content, tmp_path / name)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:-100])
    cases["truncated.pt"] = (None, r"is truncated \(\d+ bytes\): it starts like the zip archive")
    for name, (content, problem) in cases.items():
        with pytest.raises(CheckpointLoadError, match=problem) as raised:
            checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / name))
        assert str(tmp_path / name) in str(raised.value)
        assert f"is {good} (saved " in str(raised.value) and "7 updates" in str(raised.value)
        assert raised.type.user_facing and issubclass(raised.type, ValueError)
    loaded = checkpoint_utils.load_checkpoint_to_cpu(str(good))
    assert loaded["model"]["w"].tolist() == [1.0, 1.0]
    assert [m.dtype for m in loaded["extra_state"]["meters"]] == [numpy.int64, numpy.float16]
