"""``mega`` presets built the way ``fairseq-train --task translation --arch ...`` builds
them: sizes, parameter counts (printed), user options winning over presets, and clear
errors for models used with the wrong task or checkpoint."""

from pathlib import Path

import pytest
import torch

from fairseq import options, tasks

import mega_fairseq  # noqa: F401  (registers the models, like --user-dir)

REPO = Path(__file__).resolve().parents[1]


def _write_joined_dictionaries(directory: Path, words: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for lang in ("en", "de"):
        with open(directory / f"dict.{lang}.txt", "w") as handle:
            for i in range(words):
                handle.write(f"w{i} {words - i}\n")
    return directory


@pytest.fixture(scope="module")
def wmt_sized_data(tmp_path_factory):
    """dict.en.txt == dict.de.txt with 32,000 symbols (the paper's joined BPE vocabulary)."""
    return _write_joined_dictionaries(tmp_path_factory.mktemp("joined32k"), 32000 - 4)


def _build(data: Path, *argv: str, task: str = "translation"):
    languages = ["--source-lang", "en", "--target-lang", "de"] if task == "translation" else []
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[
        str(data), "--task", task, *languages, "--user-dir", str(REPO / "mega_fairseq"), *argv])
    return args, tasks.setup_task(args).build_model(args)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


EXPECTED = {
    # arch: (embed, hidden, ffn, z, EMA ndim, layers, dropout,
    #        attention/hidden/activation dropout, truncation)
    "mega": (512, 1024, 1024, 128, 16, 6, 0.1, 0.0, None),
    "mega_wmt_en_de": (512, 1024, 1024, 128, 16, 6, 0.1, 0.1, 1024),
    "mega_wmt_en_de_big": (1024, 2048, 2048, 256, 16, 6, 0.3, 0.1, 1024),
    "mega_tiny": (64, 128, 128, 32, 4, 2, 0.1, 0.0, None),
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_presets_and_parameter_counts(arch, wmt_sized_data):
    _, model = _build(wmt_sized_data, "--arch", arch, "--share-all-embeddings")
    embed, hidden, ffn, z, ndim, layers, dropout, inner_dropout, truncation = EXPECTED[arch]
    for side in ("encoder", "decoder"):
        stack = getattr(model, side)
        assert len(stack.layers) == layers
        assert stack.embedding_dropout.p == dropout
        assert stack.final_norm is None  # post-norm
        for block in stack.layers:
            attention = block.self_attn
            assert (attention.embed_dim, attention.hdim, attention.zdim) == (embed, hidden, z)
            assert attention.ema.ndim == ndim and attention.ema.truncation == truncation
            assert block.ffn.fc1.out_features == ffn
            assert attention.dropout.p == block.ffn.dropout.p == dropout
            assert attention.attention.dropout.p == attention.hidden_dropout.p == inner_dropout
            assert block.ffn.hidden_dropout.p == inner_dropout  # --activation-dropout
            assert attention.attention_activation == "softmax" and not attention.prenorm
            assert type(attention.rel_pos_bias).__name__ == "SimpleRelativePositionalBias"
            assert isinstance(attention.norm.norm, torch.nn.LayerNorm)
            assert attention.causal is (side == "decoder")
            assert (block.cross_attn is not None) is (side == "decoder")
    count = _count(model)
    print(f"{arch}: {count:,} parameters ({count / 1e6:.2f}M) with shared embeddings, 32k joined vocabulary")
    if arch == "mega_wmt_en_de":
        # the issue: about 63M (the paper quotes 67M for its setup)
        assert 62.0e6 < count < 64.0e6


def test_command_line_options_win_over_presets(wmt_sized_data):
    _, model = _build(wmt_sized_data, "--arch", "mega_wmt_en_de", "--encoder-layers", "3",
                      "--decoder-chunk-size", "16", "--dropout", "0.2", "--normalize-before")
    assert len(model.encoder.layers) == 3 and len(model.decoder.layers) == 6
    attention = model.decoder.layers[0].self_attn
    assert attention.chunk_size == 16
    assert attention.dropout.p == 0.2 and attention.attention.dropout.p == 0.1
    assert model.encoder.final_norm is not None and model.decoder.final_norm is not None
    # not shared unless asked: separate source/target embeddings and output projection
    assert model.encoder.embed_tokens is not model.decoder.embed_tokens
    assert model.decoder.output_projection.weight is not model.decoder.embed_tokens.weight


def test_models_refuse_the_wrong_task(wmt_sized_data, tmp_path):
    with pytest.raises(ValueError, match="mega_lm is a decoder-only language model"):
        _build(wmt_sized_data, "--arch", "mega_lm_tiny")
    lm_data = tmp_path / "lm"
    lm_data.mkdir()
    (lm_data / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(20)))
    with pytest.raises(ValueError, match="needs a task with source and target dictionaries"):
        _build(lm_data, "--arch", "mega_tiny", task="language_modeling")


def test_checkpoint_of_another_model_type_is_refused(wmt_sized_data, tmp_path):
    small = _write_joined_dictionaries(tmp_path / "small", 40)
    _, mega = _build(small, "--arch", "mega_tiny")
    _, transformer = _build(small, "--arch", "transformer", "--encoder-layers", "1",
                            "--decoder-layers", "1", "--encoder-embed-dim", "16",
                            "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "16",
                            "--decoder-ffn-embed-dim", "16")
    with pytest.raises(ValueError, match="not a 'mega' encoder-decoder: it has no Mega encoder"):
        mega.load_state_dict(transformer.state_dict())
    decoder_only = {k: v for k, v in mega.state_dict().items() if not k.startswith("encoder.")}
    with pytest.raises(ValueError, match="it has no Mega encoder"):
        mega.load_state_dict(decoder_only)
    mega.load_state_dict(mega.state_dict())  # its own state loads
    # a checkpoint trained with another dictionary names both sizes
    bigger = _write_joined_dictionaries(tmp_path / "bigger", 60)
    _, other = _build(bigger, "--arch", "mega_tiny")
    with pytest.raises(ValueError, match="source dictionary mismatch: the checkpoint's vocabulary has 64"):
        mega.load_state_dict(other.state_dict())
    assert torch.is_tensor(next(iter(mega.state_dict().values())))
