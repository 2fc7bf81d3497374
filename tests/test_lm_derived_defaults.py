"""Defaults that derive from another option follow it, on the command line and in YAML
(hydra) configs alike.

fairseq 0.12.2's ``transformer_lm`` derives ``decoder_input_dim``/``decoder_output_dim``
from ``decoder_embed_dim`` by an OmegaConf interpolation that its command-line path does not
resolve.  ``mega_lm`` has no such interpolated sizes: ``decoder_embed_dim`` alone sizes the
token embeddings (or adaptive input projections), every block, the final norm and the output
projection (or adaptive softmax), and an unset ``max_target_positions`` follows the task's
``tokens_per_sample`` (the one interpolation, resolved by fairseq on both paths), which in
turn sizes the relative position bias unless attention is chunked.

Architecture presets are a command-line feature of fairseq: a YAML model config naming one
(``_name: mega_lm_tiny``) is filled from the ``mega_lm`` defaults before the preset runs, so
the preset changes nothing; the model logs a warning saying so.
"""

import re

import pytest
import torch
from omegaconf import OmegaConf

from fairseq.data import Dictionary
from fairseq.models import build_model
from fairseq.modules import AdaptiveInput

from conftest import REPO, console_script, run_cli
from lm_config_helpers import (
    build_from_arguments,
    build_from_command_line,
    build_from_yaml,
    parameter_shapes,
    write_dictionary,
)
from mega_fairseq.models.mega_lm import MegaLanguageModel, MegaLanguageModelConfig

WORDS = 100
VOCABULARY = WORDS + 4  # fairseq's special symbols
UNBOUNDED = int(1e6)

# (command line, the same model in YAML, what the model must look like)
CASES = {
    "embed-dim": (
        ["--arch", "mega_lm", "--decoder-embed-dim", "64", "--decoder-layers", "1",
         "--tokens-per-sample", "96"],
        dict(task=dict(tokens_per_sample=96),
             model=dict(_name="mega_lm", decoder_embed_dim=64, decoder_layers=1)),
        dict(width=64, stale=512, max_positions=96, bias=2 * 96 - 1, adaptive=False),
    ),
    "adaptive-max-target": (
        ["--arch", "mega_lm", "--decoder-embed-dim", "48", "--decoder-layers", "1",
         "--tokens-per-sample", "96", "--max-target-positions", "128", "--adaptive-input",
         "--adaptive-input-cutoff", "20,60", "--adaptive-softmax-cutoff", "20,60",
         "--tie-adaptive-weights"],
        dict(task=dict(tokens_per_sample=96),
             model=dict(_name="mega_lm", decoder_embed_dim=48, decoder_layers=1,
                        max_target_positions=128, adaptive_input=True,
                        adaptive_input_cutoff="20,60", adaptive_softmax_cutoff="20,60",
                        tie_adaptive_weights=True)),
        dict(width=48, stale=512, max_positions=128, bias=2 * 128 - 1, adaptive=True),
    ),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dictionary(tmp_path_factory.mktemp("lm-dict"), WORDS)


@pytest.fixture(scope="module")
def command_line_models(data):
    """Models built from each case's command line (once: each build takes ~1 s)."""
    return {name: build_from_command_line(data, *argv) for name, (argv, _, _) in CASES.items()}


def _check_model(model, width, stale, max_positions, bias, adaptive, tied=False):
    decoder = model.decoder
    # input: embeddings (or every adaptive input band's projection) are `width` wide
    if adaptive:
        assert isinstance(decoder.embed_tokens, AdaptiveInput)
        assert all(band[-1].weight.shape[0] == width for band in decoder.embed_tokens.embeddings)
        assert decoder.adaptive_softmax.head.class_proj.weight.shape[1] == width
        assert decoder.output_projection is None
    else:
        assert tuple(decoder.embed_tokens.weight.shape) == (VOCABULARY, width)
        assert tuple(decoder.output_projection.weight.shape) == (VOCABULARY, width)
        assert (decoder.output_projection.weight is decoder.embed_tokens.weight) == tied
    for layer in decoder.layers:
        assert layer.self_attn.embed_dim == width
        assert tuple(layer.self_attn.ema.omega.shape) == (width,)
        assert layer.ffn.fc1.in_features == width and layer.ffn.fc2.out_features == width
        assert layer.self_attn.rel_pos_bias.rel_pos_bias.numel() == bias
    # (the adaptive presets' final norm has no affine parameters)
    assert all(tuple(p.shape) == (width,) for p in decoder.final_norm.parameters())
    # nothing kept the preset's width
    stale_shapes = {n: s for n, s in parameter_shapes(model).items() if stale in s}
    assert not stale_shapes, stale_shapes
    assert decoder.max_positions() == max_positions
    assert model.max_positions() == max_positions
    # and it runs: features `width` wide, log-probabilities over the whole vocabulary
    tokens = torch.randint(4, VOCABULARY, (2, 7))
    model.eval()
    with torch.no_grad():
        features, _ = model(tokens, features_only=True)
        log_probs = model.get_normalized_probs(model(tokens), log_probs=True)
    assert features.shape == (2, 7, width)
    assert log_probs.shape == (2, 7, VOCABULARY)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 7))


@pytest.mark.parametrize("case", sorted(CASES))
def test_command_line(command_line_models, case):
    cfg, model = command_line_models[case]
    expected = CASES[case][2]
    assert cfg.model.decoder_embed_dim == expected["width"]
    assert cfg.model.tokens_per_sample == 96  # the interpolation is resolved
    _check_model(model, **expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_yaml_config_builds_the_command_line_model(command_line_models, data, tmp_path, case):
    _, spec, expected = CASES[case]
    task = dict(_name="language_modeling", data=str(data), **spec["task"])
    cfg, model = build_from_yaml(tmp_path, task=task, model=spec["model"], name=f"mega_{case}")
    assert cfg.model.tokens_per_sample == 96
    _check_model(model, **expected)
    assert parameter_shapes(model) == parameter_shapes(command_line_models[case][1])


@pytest.mark.parametrize(
    "argv, expected",
    [
        # a preset's sizes give way to the command line; its tied embeddings follow
        (["--arch", "mega_lm_tiny", "--decoder-embed-dim", "48"],
         dict(width=48, stale=64, max_positions=1024, bias=2 * 1024 - 1, adaptive=False, tied=True)),
        # adaptive presets (vocabulary-sized cutoffs overridden for the small dictionary)
        (["--arch", "mega_lm_adaptive_base", "--decoder-embed-dim", "64", "--decoder-layers", "1",
             "--rel-pos-bias", "simple",
          "--adaptive-input-cutoff", "20,60", "--adaptive-softmax-cutoff", "20,60",
          "--decoder-chunk-size", "32", "--tokens-per-sample", "96"],
         dict(width=64, stale=768, max_positions=UNBOUNDED, bias=2 * 32 - 1, adaptive=True)),
    ],
    ids=["tiny", "adaptive-base"],
)
def test_presets_follow_command_line_sizes(data, argv, expected):
    _check_model(build_from_arguments(data, *argv), **expected)


def test_preset_named_in_yaml_warns_that_fairseq_does_not_apply_it(data, tmp_path, caplog):
    """fairseq fills a YAML model config from the ``mega_lm`` dataclass defaults before the
    preset function runs, so ``_name: mega_lm_tiny`` silently builds ``mega_lm`` sizes; the
    model says so.  The same preset on the command line is applied and does not warn."""
    task = dict(_name="language_modeling", data=str(data), tokens_per_sample=32)
    model = dict(_name="mega_lm_tiny", decoder_layers=1)
    with caplog.at_level("WARNING", logger="mega_fairseq.models.model_building"):
        _, built = build_from_yaml(tmp_path, task=task, model=model, name="mega_tiny_preset")
    assert built.decoder.embed_tokens.weight.shape[1] == 512  # fairseq's behaviour, not the preset
    warnings = [r.getMessage() for r in caplog.records if r.name == "mega_fairseq.models.model_building"]
    assert len(warnings) == 1, warnings
    assert "model mega_lm_tiny: decoder_embed_dim=512" in warnings[0]
    assert "decoder_embed_dim=64" in warnings[0] and "decoder_layers" not in warnings[0]
    assert "use '_name: mega_lm'" in warnings[0]

    caplog.clear()
    with caplog.at_level("WARNING", logger="mega_fairseq.models.model_building"):
        cfg, built = build_from_command_line(data, "--arch", "mega_lm_tiny", "--decoder-layers", "1")
    assert cfg.model._name == "mega_lm_tiny" and built.decoder.embed_tokens.weight.shape[1] == 64
    assert not [r for r in caplog.records if r.name == "mega_fairseq.models.model_building"]


def test_config_without_a_task_falls_back_to_1024_positions():
    """A model config used on its own (no task to take tokens_per_sample from)."""
    dictionary = Dictionary()
    for i in range(WORDS):
        dictionary.add_symbol(f"w{i}")

    class Task:
        source_dictionary = target_dictionary = dictionary

    small = dict(decoder_embed_dim=16, decoder_hidden_dim=16, decoder_ffn_embed_dim=16,
                 decoder_z_dim=8, decoder_n_dim=2, decoder_layers=1)
    from_dict_config = build_model(OmegaConf.create(dict(_name="mega_lm", **small)), Task())
    from_dataclass = MegaLanguageModel.build_model(MegaLanguageModelConfig(**small), Task())
    assert from_dict_config.decoder.max_positions() == 1024
    assert from_dataclass.decoder.max_positions() == 1024


@pytest.mark.slow
def test_fairseq_hydra_train_with_yaml(tmp_path, shakespeare_lm_data):
    """fairseq-hydra-train builds the model a YAML file describes (and trains it)."""
    config = {
        "common": {"user_dir": str(REPO / "mega_fairseq"), "cpu": True, "seed": 1,
                   "log_format": "simple", "log_interval": 1},
        "task": {"_name": "language_modeling", "data": str(shakespeare_lm_data),
                 "tokens_per_sample": 48, "sample_break_mode": "none"},
        "model": {"_name": "mega_lm", "decoder_embed_dim": 40, "decoder_hidden_dim": 32,
                  "decoder_ffn_embed_dim": 32, "decoder_z_dim": 16, "decoder_n_dim": 4,
                  "decoder_layers": 1},
        "criterion": {"_name": "cross_entropy"},
        "optimizer": {"_name": "adam"},
        "lr_scheduler": {"_name": "fixed"},
        "optimization": {"lr": [0.001], "max_update": 2},
        "dataset": {"batch_size": 4},
        "checkpoint": {"save_dir": str(tmp_path / "ckpt"), "no_epoch_checkpoints": True},
    }
    OmegaConf.save(OmegaConf.create(config), tmp_path / "mega_tiny.yaml")
    result = run_cli([console_script("fairseq-hydra-train"), "--config-dir", tmp_path,
                      "--config-name", "mega_tiny", f"hydra.run.dir={tmp_path / 'run'}"])
    log = result.stdout + result.stderr
    vocabulary = sum(1 for _ in open(shakespeare_lm_data / "dict.txt")) + 4
    assert f"(embed_tokens): Embedding({vocabulary}, 40, padding_idx=1)" in log
    assert f"(output_projection): Linear(in_features=40, out_features={vocabulary}, bias=False)" in log
    # max_target_positions unset: the bias covers task.tokens_per_sample
    assert "SimpleRelativePositionalBias(max_positions=48)" in log
    assert re.search(r"num_updates 2\b", log), log[-3000:]
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").exists()
