"""Errors speak the user's language: bad model options name the command-line option, and
a user-facing error ends a console script with one line ``<prog>: error: <message>``
(the traceback only with MEGA_FAIRSEQ_TRACEBACK=1), exit status 1."""

import os
import subprocess
import sys

import pytest

from conftest import REPO, console_script
from lm_helpers import build_lm
from mega_fairseq.errors import DataError, MissingDataError, OptionError
from mega_fairseq.models.option_names import SETTING_OPTIONS, option_name
from mega_fairseq.modules.mega_layer import MegaLayerSettings
from mega_fairseq_compat import user_errors
from tiny_lm_data import write_tiny_lm_data


# ------------------------------------------------------------- option names
@pytest.mark.parametrize("options, message", [
    (dict(decoder_z_dim=0), "--decoder-z-dim must be a positive integer, got 0"),
    (dict(decoder_hidden_dim=-4), "--decoder-hidden-dim must be a positive integer, got -4"),
    (dict(decoder_n_dim=0), "--decoder-n-dim must be"),
    (dict(decoder_embed_dim=0), "--decoder-embed-dim must be"),
    (dict(decoder_ffn_embed_dim=0), "--decoder-ffn-embed-dim must be"),
    (dict(decoder_layers=0), "--decoder-layers must be a positive integer, got 0"),
    (dict(dropout=1.0), r"--dropout must be a probability in \[0, 1\), got 1.0"),
    (dict(attention_dropout=-0.5), "--attention-dropout must be"),
    (dict(hidden_dropout=2.0), "--hidden-dropout must be"),
    (dict(activation_dropout=1.0), "--activation-dropout must be"),
    (dict(decoder_chunk_size=-3), "--decoder-chunk-size must be a positive integer, or -1 or 0"),
    (dict(truncation_length=-3), "--truncation-length must be"),
    (dict(rel_pos_bias="rotary", decoder_z_dim=7), "--rel-pos-bias rotary needs an even --decoder-z-dim, got 7"),
    (dict(rel_pos_bias="rotary", max_target_positions=0), "--max-target-positions must be"),
])
def test_model_options_are_refused_naming_the_option(options, message):
    with pytest.raises(OptionError, match=message):
        build_lm(**options)


def test_every_layer_setting_with_a_check_has_an_option():
    from mega_fairseq.modules import layer_settings

    named = set(SETTING_OPTIONS)
    assert named <= set(MegaLayerSettings.__dataclass_fields__)
    checked = (set(layer_settings.POSITIVE_FIELDS) | set(layer_settings.PROBABILITY_FIELDS)
               | set(layer_settings.CHOICE_FIELDS) | set(layer_settings.LENGTH_FIELDS))
    assert checked <= named
    assert option_name("zdim", "encoder") == "--encoder-z-dim"
    assert option_name("max_positions", "encoder") == "--max-source-positions"
    assert option_name("max_positions", "decoder") == "--max-target-positions"


def test_user_facing_classes_keep_their_builtin_bases():
    assert issubclass(OptionError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(MissingDataError, FileNotFoundError)
    for error in (OptionError, DataError, MissingDataError):
        assert error.user_facing is True


# ------------------------------------------------------------- the excepthook
class _Facing(RuntimeError):
    user_facing = True


def _raised(error):
    try:
        raise error
    except BaseException as caught:
        return type(caught), caught, caught.__traceback__


def test_hook_prints_user_facing_errors_as_one_line(capsys, monkeypatch):
    monkeypatch.delenv(user_errors.TRACEBACK_VARIABLE, raising=False)
    monkeypatch.setattr(sys, "argv", ["/some/bin/fairseq-train", "data"])
    seen = []
    hook = user_errors.make_excepthook(lambda *info: seen.append(info))
    hook(*_raised(_Facing("--x must be\n  positive")))
    assert capsys.readouterr().err == "fairseq-train: error: --x must be positive\n"
    assert not seen

    monkeypatch.setenv(user_errors.TRACEBACK_VARIABLE, "1")
    hook(*_raised(_Facing("--x must be positive")))
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("fairseq-train: error: --x must be positive\n")


def test_hook_finds_a_user_facing_error_that_fairseq_wrapped(capsys, monkeypatch):
    # fairseq's Trainer.load_checkpoint replaces any load failure by a generic Exception
    monkeypatch.delenv(user_errors.TRACEBACK_VARIABLE, raising=False)
    monkeypatch.setattr(sys, "argv", ["fairseq-train"])
    seen = []
    hook = user_errors.make_excepthook(lambda *info: seen.append(info))
    try:
        try:
            raise _Facing("dictionary mismatch: use --srcdict")
        except Exception:
            raise Exception("Cannot load model parameters from checkpoint ck/last.pt")
    except Exception as wrapped:
        hook(type(wrapped), wrapped, wrapped.__traceback__)
    assert capsys.readouterr().err == (
        "fairseq-train: error: dictionary mismatch: use --srcdict "
        "[Cannot load model parameters from checkpoint ck/last.pt]\n")
    assert not seen


def test_hook_passes_other_errors_on(capsys):
    seen = []
    hook = user_errors.make_excepthook(lambda *info: seen.append(info))
    info = _raised(ValueError("internal"))
    hook(*info)
    assert seen == [info] and capsys.readouterr().err == ""


def test_hook_is_installed_once_when_fairseq_is_imported():
    assert getattr(sys.excepthook, "_mega_fairseq_user_errors", False)
    before = sys.excepthook
    user_errors.apply()
    assert sys.excepthook is before


# ------------------------------------------------------------- through fairseq-train
TRAIN = [
    "--user-dir", REPO / "mega_fairseq", "--task", "language_modeling", "--arch", "mega_lm_tiny",
    "--tokens-per-sample", "16", "--sample-break-mode", "none", "--optimizer", "adam", "--lr", "1e-3",
    "--batch-size", "4", "--cpu", "--no-progress-bar", "--num-workers", "0", "--max-update", "1",
]


def _train(tmp_path, extra, traceback=False):
    data = write_tiny_lm_data(tmp_path / "data")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(user_errors.TRACEBACK_VARIABLE, None)
    if traceback:
        env[user_errors.TRACEBACK_VARIABLE] = "1"
    command = [console_script("fairseq-train"), data, *TRAIN, "--save-dir", tmp_path / "ckpt", *extra]
    return subprocess.run([str(a) for a in command], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_fairseq_train_prints_one_line_for_a_bad_option(tmp_path):
    result = _train(tmp_path, ["--decoder-z-dim", "0"])
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "fairseq-train: error: --decoder-z-dim must be a positive integer, got 0"
    assert not list(tmp_path.glob("ckpt/*.pt"))


@pytest.mark.slow
def test_fairseq_train_prints_the_traceback_on_request(tmp_path):
    result = _train(tmp_path, ["--decoder-chunk-size", "-3"], traceback=True)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "fairseq-train: error: --decoder-chunk-size must be a positive integer, or -1 or 0 (off); got -3")
