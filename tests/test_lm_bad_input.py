"""Bad input to ``mega_lm`` fails early with an error that says what is wrong: unknown
option values, samples longer than the simple position bias covers, and resuming or
loading a checkpoint with another dictionary."""

import subprocess

import pytest

from conftest import REPO, console_script, run_cli
from lm_config_helpers import build_from_arguments, build_from_yaml, parse_command_line, write_dictionary
from lm_helpers import build_lm, make_dictionary
from mega_fairseq.modules.activations import ACTIVATIONS, ATTENTION_ACTIVATIONS
from mega_fairseq.modules.layer_settings import EMA_TYPES, FFN_TYPES
from mega_fairseq.modules.relative_position import REL_POS_BIAS_TYPES
from mega_fairseq.modules.sequence_norm import NORM_TYPES

CHOICE_OPTIONS = {
    "activation-fn": ACTIVATIONS,
    "attention-activation-fn": ATTENTION_ACTIVATIONS,
    "normalization-type": NORM_TYPES,
    "rel-pos-bias": REL_POS_BIAS_TYPES,
    "ema-type": EMA_TYPES,
    "ffn-type": FFN_TYPES,
}
TOO_LONG = "--tokens-per-sample 128 exceeds --max-target-positions 64"


def _choices(values) -> str:
    return ", ".join(repr(v) for v in values)


def run_failing(args, timeout=300):
    """Run a command that must fail; returns its combined output."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    return result.returncode, output


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dictionary(tmp_path_factory.mktemp("lm-dict"), 30)


# ------------------------------------------------------------------ option values
@pytest.mark.parametrize("option", sorted(CHOICE_OPTIONS))
def test_unknown_choice_names_the_option_and_its_choices(data, capsys, option):
    """What fairseq-train's option parsing prints (argparse exits with status 2)."""
    with pytest.raises(SystemExit) as exited:
        parse_command_line(data, ["--arch", "mega_lm_tiny", f"--{option}", "foo"])
    assert exited.value.code == 2
    message = (f"argument --{option}: invalid choice: 'foo' "
               f"(choose from {_choices(CHOICE_OPTIONS[option])})")
    assert message in capsys.readouterr().err


def test_unknown_choice_in_yaml_names_the_value_and_choices(data, tmp_path):
    from omegaconf.errors import ValidationError

    task = dict(_name="language_modeling", data=str(data))
    model = dict(_name="mega_lm", attention_activation_fn="foo")
    with pytest.raises(ValidationError, match=r"Invalid value 'foo', expected one of "
                                              r"\[softmax, laplace, relu2\]"):
        build_from_yaml(tmp_path, task=task, model=model, name="mega_bad_choice")


def test_samples_longer_than_the_simple_bias_on_the_command_line(data):
    argv = ["--arch", "mega_lm_tiny", "--tokens-per-sample", "128", "--max-target-positions", "64"]
    with pytest.raises(ValueError, match=TOO_LONG):
        build_from_arguments(data, *argv)
    build_from_arguments(data, *argv, "--rel-pos-bias", "rotary")  # rotary: no length limit


# ------------------------------------------------------------- checkpoint loading
@pytest.mark.parametrize(
    "options",
    [dict(), dict(adaptive_input=True, adaptive_input_cutoff="8,16",
                  adaptive_softmax_cutoff="8,16", tie_adaptive_weights=True)],
    ids=["embedding", "adaptive"],
)
def test_loading_a_checkpoint_of_another_dictionary_names_both_sizes(options):
    trained = build_lm(make_dictionary(20), **options).state_dict()
    # the same dictionary loads (strictly)
    build_lm(make_dictionary(20), **options).load_state_dict(trained, strict=True)
    other = build_lm(make_dictionary(30), **options)
    with pytest.raises(ValueError) as error:
        other.load_state_dict(trained, strict=True)
    message = str(error.value)
    assert "the checkpoint's vocabulary has 24 symbols but the current dictionary has 34" in message
    assert "size mismatch" not in message


# ------------------------------------------------------------ through fairseq-train
TRAIN = [
    "--user-dir", REPO / "mega_fairseq", "--task", "language_modeling", "--arch", "mega_lm_tiny",
    "--tokens-per-sample", "32", "--sample-break-mode", "none", "--optimizer", "adam", "--lr", "1e-3",
    "--batch-size", "4", "--cpu", "--seed", "1", "--no-progress-bar", "--log-format", "simple",
    "--no-epoch-checkpoints",
]


@pytest.mark.slow
def test_fairseq_train_rejects_bad_option_values(tmp_path, shakespeare_lm_data):
    train = [console_script("fairseq-train"), shakespeare_lm_data, *TRAIN, "--save-dir", tmp_path]
    code, output = run_failing(train + ["--attention-activation-fn", "foo"])
    assert code == 2
    assert ("fairseq-train: error: argument --attention-activation-fn: invalid choice: 'foo' "
            f"(choose from {_choices(ATTENTION_ACTIVATIONS)})") in output

    code, output = run_failing(train + ["--tokens-per-sample", "128", "--max-target-positions", "64"])
    assert code == 1
    assert f"fairseq-train: error: {TOO_LONG}" in output and "Traceback" not in output
    assert not list(tmp_path.glob("*.pt"))


def _binarize(tmp_path, name, words):
    text = tmp_path / f"{name}.txt"
    text.write_text("".join(" ".join(words[(i + j) % len(words)] for j in range(9)) + "\n"
                            for i in range(40)))
    destination = tmp_path / name
    run_cli([console_script("fairseq-preprocess"), "--only-source", "--trainpref", text,
             "--validpref", text, "--destdir", destination, "--workers", "1"])
    return destination


@pytest.mark.slow
def test_resuming_on_data_with_another_dictionary_names_both_sizes(tmp_path, shakespeare_lm_data):
    save = tmp_path / "ckpt"
    run_cli([console_script("fairseq-train"), shakespeare_lm_data, *TRAIN, "--max-update", "2",
             "--save-dir", save])
    checkpoint_vocabulary = sum(1 for _ in open(shakespeare_lm_data / "dict.txt")) + 4

    other = _binarize(tmp_path, "other", [f"word{i}" for i in range(50)])
    other_vocabulary = sum(1 for _ in open(other / "dict.txt")) + 4
    _, output = run_failing([console_script("fairseq-train"), other, *TRAIN, "--max-update", "4",
                             "--save-dir", save])
    assert (f"ValueError: dictionary mismatch: the checkpoint's vocabulary has "
            f"{checkpoint_vocabulary} symbols but the current dictionary has {other_vocabulary}"
            ) in output, output[-3000:]
    assert "size mismatch for" not in output  # no raw torch dump

    # evaluating the checkpoint on the other data fails the same way
    _, output = run_failing([console_script("fairseq-eval-lm"), other, "--user-dir", REPO / "mega_fairseq",
                             "--path", save / "checkpoint_last.pt", "--gen-subset", "valid", "--cpu"])
    assert f"has {checkpoint_vocabulary} symbols but the current dictionary has {other_vocabulary}" in output
    assert "size mismatch for" not in output
