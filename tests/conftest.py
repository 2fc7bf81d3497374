"""Shared fixtures: paths, the fairseq console scripts of this environment, small corpora."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUNDLED_TEXT = REPO / "examples" / "language_model" / "data"
SCRIPTS = REPO / "scripts"

# the data scripts import their helpers as top-level modules (``python scripts/NAME.py``
# puts scripts/ first on sys.path); the tests import the scripts and helpers the same way
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))


DEVICE_ENV = "MEGA_FAIRSEQ_TEST_DEVICE"

# Under pytest-xdist (scripts/run_tests.sh) the workers share the cores: each one, and every
# console script it starts, computes on one thread.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"
    torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--device", default=os.environ.get(DEVICE_ENV, "cpu"),
        help=f"torch device for the tests marked 'device' (default: ${DEVICE_ENV} or cpu), e.g. cuda",
    )


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device the 'device'-marked tests run on (``--device`` / $MEGA_FAIRSEQ_TEST_DEVICE)."""
    name = request.config.getoption("--device")
    try:
        chosen = torch.device(name)
    except RuntimeError as error:
        raise pytest.UsageError(f"--device {name!r} is not a torch device: {error}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {name}: torch {torch.__version__} sees no CUDA device")
    return chosen


def console_script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"console script {name} not found next to {sys.executable}")
    return str(path)


def run_cli(args, cwd=None, input_text=None, timeout=600, env=None):
    """Run a command, fail the test with its output if it exits non-zero."""
    merged_env = dict(os.environ)
    merged_env.update(env or {})
    merged_env.setdefault("PYTHONUNBUFFERED", "1")
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, input=input_text, capture_output=True, text=True,
        timeout=timeout, env=merged_env,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"command failed ({result.returncode}): {' '.join(map(str, args))}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def with_option_values(args, **values):
    """A copy of the command line ``args`` with the values of the given options replaced
    (``task="x"`` sets the value after ``--task``; each option must be in ``args``)."""
    args = list(args)
    for name, value in values.items():
        args[args.index("--" + name.replace("_", "-")) + 1] = value
    return args


def python_snippet(code: str, **kwargs):
    """Run code in a fresh interpreter of this environment (start-up hook included)."""
    return run_cli([sys.executable, "-c", code], **kwargs)


def write_copy_corpus(directory: Path, seed: int = 0, sizes=(("train", 400), ("valid", 40), ("test", 40))):
    """A parallel corpus whose target is the source, in 12 one-letter words: something a
    tiny model learns fast (scripts/accelerator_check.py writes it)."""
    from accelerator_check import write_copy_corpus as write

    return write(directory, 0, 0, seed=seed, words=[chr(ord("a") + i) for i in range(12)],
                 lengths=(3, 8), splits=sizes)


@pytest.fixture(scope="session")
def shakespeare_lm_data(tmp_path_factory):
    """Bundled Shakespeare plays, word-tokenised and binarised for language modelling."""
    root = tmp_path_factory.mktemp("shakespeare")
    run_cli([sys.executable, REPO / "scripts" / "prepare_lm_text.py", "--inputs",
             *sorted(BUNDLED_TEXT.glob("*.txt")), "--out-dir", root / "text"])
    run_cli([console_script("fairseq-preprocess"), "--only-source",
             "--trainpref", root / "text" / "train.txt", "--validpref", root / "text" / "valid.txt",
             "--testpref", root / "text" / "test.txt", "--destdir", root / "bin", "--workers", "1"])
    return root / "bin"
