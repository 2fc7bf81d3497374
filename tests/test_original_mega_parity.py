"""Whole models against outputs of the original Mega code (facebookresearch/mega).

``tests/fixtures/original_mega/`` (see its README.md) holds three checkpoints written by
the original code and the outputs it computed for fixed inputs: a ``mega_lm`` language
model (lm_a), a ``mega_wmt_en_de`` translation model (mt_a) and an LRA ListOps classifier
(lra_a). Each checkpoint is converted with :mod:`mega_fairseq.conversion.original_mega`
and our model's outputs are compared in float32 with atol = rtol = 1e-5.

Where ours deliberately differs from the original, the tests say so and compare what is
defined in both:

* Padded positions. The original multiplies the LM / translation decoder features by the
  inverse padding mask, so its features there are 0, its logits 0 and its log-probs
  uniform (-log V). Ours leaves outputs at padded positions unspecified (finite, not
  zeroed); only real positions are compared, and ours are checked to be finite there.
* Left-padded sources. Our encoder right-aligns a left-padded batch (outputs and
  ``encoder_padding_mask`` are right-padded); the comparison realigns the original's.
  The original's cross-attention relative bias counts source positions from the start of
  the padded row, ours from the first real token (so that the result does not depend on
  the padding in the batch). The MT row with a left-padded source is therefore compared
  with our cross-attention made to count like the original.
* Incremental decoding. The original LM decoder takes exactly one new token per step
  (it does not slice the prefix); ours, like fairseq's SequenceGenerator, takes the whole
  prefix and runs only the columns not decoded yet. The original's incremental EMA ignores
  ``truncation_length``; these inputs are far shorter than the truncation, so that does not
  show here.
* LRA. The original pads the sequence to a multiple of the chunk size (10 -> 12) before
  the blocks; ours pads the attention chunks only, and returns 10 positions. The original's
  extra positions are checked to be 0.
"""

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mega_fairseq.conversion.original_mega import (
    config_from_original_args,
    convert_original_checkpoint,
    load_original_checkpoint,
    original_kind,
    state_dict_from_original,
)
from mega_fairseq.modules.gated_cross_attention import GatedCrossAttention
from mega_fairseq.tasks.lra_common import DEFAULT_HEAD_NAME

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "original_mega"
TOLERANCE = dict(atol=1e-5, rtol=1e-5)
PAD = 1


def _load(name: str):
    """(converted model, io.pt inputs, io.pt outputs) of fixture ``name``."""
    folder = FIXTURES / name
    converted = convert_original_checkpoint(str(folder / "checkpoint.pt"), str(folder))
    io = torch.load(folder / "io.pt", map_location="cpu", weights_only=True)
    return converted, io["inputs"], io["outputs"]


def _assert_close(ours: torch.Tensor, original: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(ours.float(), original.float(), **TOLERANCE, msg=lambda m: f"{what}: {m}")


def _incremental_lprobs(decoder, tokens: torch.Tensor, encoder_out=None) -> torch.Tensor:
    """B x T x V log-probs, decoding token by token with an incremental state; each step
    passes the prefix tokens[:, :t+1] (B x (t+1))."""
    state = {}
    steps = []
    for t in range(tokens.size(1)):
        logits, _ = decoder(tokens[:, : t + 1], encoder_out=encoder_out, incremental_state=state)
        steps.append(F.log_softmax(logits.float(), dim=-1))
    return torch.cat(steps, dim=1)


# ------------------------------------------------------------------------- LM
@pytest.fixture(scope="module")
def lm():
    return _load("lm_a")


def test_lm_converts_to_our_model(lm):
    converted, _, _ = lm
    assert converted.kind == "lm"
    assert type(converted.model).__name__ == "MegaLanguageModel"
    assert len(converted.task.target_dictionary) == 56
    assert converted.model.decoder.output_projection.weight is converted.model.decoder.embed_tokens.weight


def test_lm_full_forward_matches_original(lm):
    converted, inputs, outputs = lm
    model, tokens = converted.model, inputs["src_tokens"]
    real = tokens.ne(PAD)
    with torch.no_grad():
        net_output = model(tokens, src_lengths=inputs["src_lengths"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        features, _ = model.decoder.extract_features(tokens)
    _assert_close(net_output[0][real], outputs["logits"][real], "logits")
    _assert_close(lprobs[real], outputs["lprobs"][real], "lprobs")
    _assert_close(features[real], outputs["features"][real], "features")
    assert torch.isfinite(net_output[0]).all()


def test_lm_incremental_decoding_matches_original(lm):
    converted, inputs, outputs = lm
    tokens = inputs["src_tokens"]
    real = tokens.ne(PAD)
    with torch.no_grad():
        lprobs = _incremental_lprobs(converted.model.decoder, tokens)
    _assert_close(lprobs[real], outputs["lprobs_incremental_step"][real], "incremental lprobs")
    assert torch.isfinite(lprobs).all()


def test_lm_original_zeroes_padded_positions(lm):
    """What the original gives at padded positions (not compared with ours, see the module
    docstring): features 0, logits 0, uniform log-probs."""
    _, inputs, outputs = lm
    pad = inputs["src_tokens"].eq(PAD)
    uniform = torch.full_like(outputs["lprobs"][pad], -math.log(56))
    assert torch.equal(outputs["features"][pad], torch.zeros_like(outputs["features"][pad]))
    assert torch.equal(outputs["logits"][pad], torch.zeros_like(outputs["logits"][pad]))
    _assert_close(outputs["lprobs"][pad], uniform, "original lprobs at padding")
    _assert_close(outputs["lprobs_incremental_step"][pad], uniform, "original incremental lprobs at padding")


# ------------------------------------------------------------------------- MT
@pytest.fixture(scope="module")
def mt():
    converted, inputs, outputs = _load("mt_a")
    with torch.no_grad():
        encoder_out = converted.model.encoder(inputs["src_tokens"], inputs["src_lengths"])
    return converted, inputs, outputs, encoder_out


def _right_aligned(time_major: torch.Tensor, left_padding_mask: torch.Tensor) -> torch.Tensor:
    """A left-padded S x B x C tensor -> right-padded (real positions first in each row)."""
    aligned = torch.zeros_like(time_major)
    for b in range(time_major.size(1)):
        real = (~left_padding_mask[b]).nonzero().squeeze(-1)
        aligned[: real.numel(), b] = time_major[real, b]
    return aligned


def test_mt_converts_to_our_model(mt):
    converted, _, _, _ = mt
    model = converted.model
    assert converted.kind == "translation"
    assert type(model).__name__ == "MegaModel"
    assert model.encoder.embed_tokens.weight is model.decoder.embed_tokens.weight
    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight


def test_mt_encoder_matches_original(mt):
    """Ours is right-aligned, the original's output left-padded; both are 0 at padding."""
    _, inputs, outputs, encoder_out = mt
    original_mask = outputs["encoder_padding_mask"]
    assert torch.equal(original_mask, inputs["src_tokens"].eq(PAD))
    ours_mask = encoder_out["encoder_padding_mask"][0]
    lengths = (~original_mask).sum(dim=1)
    assert torch.equal(ours_mask, torch.arange(original_mask.size(1)).unsqueeze(0) >= lengths.unsqueeze(1))
    ours = encoder_out["encoder_out"][0]
    assert ours.shape == outputs["encoder_out"].shape  # S x B x C, time-major
    _assert_close(ours, _right_aligned(outputs["encoder_out"], original_mask), "encoder_out")


def _first_row_without_source_padding(inputs) -> int:
    return int(inputs["src_tokens"].eq(PAD).any(dim=1).logical_not().nonzero()[0])


def test_mt_decoder_matches_original_for_unpadded_source(mt):
    converted, inputs, outputs, encoder_out = mt
    model, b = converted.model, _first_row_without_source_padding(inputs)
    real = inputs["prev_output_tokens"][b].ne(PAD)
    with torch.no_grad():
        net_output = model(inputs["src_tokens"], inputs["src_lengths"], inputs["prev_output_tokens"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        incremental = _incremental_lprobs(model.decoder, inputs["prev_output_tokens"], encoder_out)
    _assert_close(net_output[0][b][real], outputs["logits"][b][real], "logits")
    _assert_close(lprobs[b][real], outputs["lprobs"][b][real], "lprobs")
    _assert_close(incremental[b][real], outputs["lprobs_incremental_step"][b][real], "incremental lprobs")


def _original_cross_attention_positions(self, first_position, tgt_len, src_len, key_padding_mask, device):
    """GatedCrossAttention._position_bias counting source positions from the start of the
    (padded) row, as the original does."""
    return _OUR_POSITION_BIAS(self, first_position, tgt_len, src_len, None, device)


_OUR_POSITION_BIAS = GatedCrossAttention._position_bias


def test_mt_decoder_matches_original_for_left_padded_source(mt, monkeypatch):
    """Every row, the left-padded one included, once our cross-attention counts source
    positions as the original (from the start of the padded row) and reads the original's
    left-padded encoder output."""
    converted, inputs, outputs, _ = mt
    decoder, tokens = converted.model.decoder, inputs["prev_output_tokens"]
    monkeypatch.setattr(GatedCrossAttention, "_position_bias", _original_cross_attention_positions)
    original_encoder_out = {"encoder_out": [outputs["encoder_out"]],
                            "encoder_padding_mask": [outputs["encoder_padding_mask"]]}
    real = tokens.ne(PAD)
    with torch.no_grad():
        logits, _ = decoder(tokens, encoder_out=original_encoder_out)
        incremental = _incremental_lprobs(decoder, tokens, original_encoder_out)
    _assert_close(logits[real], outputs["logits"][real], "logits")
    _assert_close(F.log_softmax(logits, dim=-1)[real], outputs["lprobs"][real], "lprobs")
    _assert_close(incremental[real], outputs["lprobs_incremental_step"][real], "incremental lprobs")


# ------------------------------------------------------------------------ LRA
@pytest.fixture(scope="module")
def lra():
    return _load("lra_a")


def test_lra_converts_to_our_model(lra):
    converted, _, _ = lra
    model = converted.model
    assert converted.kind == "lra"
    assert type(model).__name__ == "MegaEncoderModel"
    assert len(converted.task.source_dictionary) == 57  # the original appends <CLS>
    head = model.classification_heads[DEFAULT_HEAD_NAME]
    assert (head.dense.out_features, head.out_proj.out_features) == (160, 10)
    assert torch.equal(head.out_proj.bias, torch.zeros(10))


def test_lra_matches_original(lra):
    converted, inputs, outputs = lra
    model, tokens, lengths = converted.model, inputs["src_tokens"], inputs["src_lengths"]
    with torch.no_grad():
        logits, _ = model(tokens, lengths, classification_head_name=DEFAULT_HEAD_NAME)
        encoder_out = model.encoder(tokens, lengths)
        sentence = model.sentence_representation(tokens)
    _assert_close(logits, outputs["logits"], "logits")
    _assert_close(sentence, outputs["sentence_rep"], "sentence representation")
    last_state = encoder_out["encoder_out"][0]  # T x B x C
    length = tokens.size(1)
    _assert_close(last_state, outputs["encoder_last_state"][:length], "encoder last state")
    assert torch.equal(outputs["encoder_last_state"][length:], torch.zeros_like(outputs["encoder_last_state"][length:]))


# ------------------------------------------------------------------ refusals
def _args(name: str) -> argparse.Namespace:
    return load_original_checkpoint(str(FIXTURES / name / "checkpoint.pt"))["args"]


@pytest.mark.parametrize("name, option, value, message", [
    ("lm_a", "truncation_length", 0, "--truncation-length=0"),
    ("lm_a", "decoder_input_dim", 8, "--decoder-input-dim=8"),
    ("lm_a", "attention_activation_fn", "element", "--attention-activation-fn='element'"),
    ("mt_a", "normalize_embedding", True, "--normalize-embedding=True"),
    ("mt_a", "encoder_chunk_size", 0, "--encoder-chunk-size=0"),
    ("lra_a", "layer_type", "transformer", "--layer-type='transformer'"),
    ("lra_a", "sen_rep_type", "cp", "--sen-rep-type='cp'"),
    ("lra_a", "classifier_layers", 2, "--classifier-layers=2"),
])
def test_unmappable_option_values_are_refused(name, option, value, message):
    args = _args(name)
    setattr(args, option, value)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        config_from_original_args(args)


def test_unknown_state_dict_key_is_refused():
    checkpoint = load_original_checkpoint(str(FIXTURES / "lm_a" / "checkpoint.pt"))
    state = dict(checkpoint["model"])
    state["decoder.layers.0.mega_layer.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="mega_layer.extra.weight"):
        state_dict_from_original(original_kind(checkpoint["args"]), state)


def test_other_models_are_refused():
    args = _args("mt_a")
    args.arch = "transformer_wmt_en_de"
    with pytest.raises(ValueError, match="transformer_wmt_en_de"):
        original_kind(args)


# ------------------------------------- LRA variants without a fixture of their own
def _lra_variant(tmp_path, change) -> Path:
    """lra_a's checkpoint with ``change(args, state)`` applied, saved as a new checkpoint
    of the original's format."""
    checkpoint = load_original_checkpoint(str(FIXTURES / "lra_a" / "checkpoint.pt"))
    change(checkpoint["args"], checkpoint["model"])
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)
    return path


def test_lra_retrieval_pair_head_reads_the_documents_as_the_original(tmp_path):
    """The original's Retrieval classifier reads [rep(second document), rep(first)]; ours
    [u, v] (``--pair-features concat``): the converted head must compute the original's
    formula on the sentence vectors (which test_lra_matches_original checks)."""
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(160, 32, generator=generator) * 0.2

    def pair(args, state):
        args.classifier_in_dim = 32
        state["classifier.0.0.weight"] = weight.clone()

    converted = convert_original_checkpoint(str(_lra_variant(tmp_path, pair)), str(FIXTURES / "lra_a"))
    assert converted.task.cfg.paired and converted.task.cfg.pair_features == "concat"
    model = converted.model
    inputs = _io_inputs("lra_a")
    first = {"src_tokens": inputs["src_tokens"]}
    second = {"src_tokens": inputs["src_tokens"].flip(0)}
    original = load_original_checkpoint(str(FIXTURES / "lra_a" / "checkpoint.pt"))["model"]
    with torch.no_grad():
        ours = model.classify_pair(DEFAULT_HEAD_NAME, first, second)
        u, v = model.sentence_representation(**first), model.sentence_representation(**second)
        hidden = F.gelu(torch.cat([v, u], dim=-1) @ weight.t() + original["classifier.0.0.bias"])
        expected = hidden @ original["sentence_projection_layer.weight"].t()
    _assert_close(ours, expected, "pair logits")


def test_lra_image_model_embeds_pixels_as_the_original(tmp_path):
    """The original's real-number embedding of a normalised pixel x is x * w + b; the
    converted image model must equal the token model whose table holds exactly those rows
    (same blocks, same head)."""
    generator = torch.Generator().manual_seed(8)
    w, b = torch.randn(16, generator=generator), torch.randn(16, generator=generator) * 0.1

    def image(args, state):
        args.input_type, args.pixel_normalization = "image", [0.48, 0.24]
        del state["encoder.encoder.embed_tokens.embed.weight"]
        state["encoder.encoder.embed_tokens.weight"], state["encoder.encoder.embed_tokens.bias"] = w, b

    converted = convert_original_checkpoint(str(_lra_variant(tmp_path, image)), str(FIXTURES / "lra_a"))
    assert type(converted.task).__name__ == "LRAImageTask" and converted.task.cfg.image_size == 8
    image_model = converted.model
    token_model = convert_original_checkpoint(str(FIXTURES / "lra_a" / "checkpoint.pt"),
                                              str(FIXTURES / "lra_a")).model
    offset = converted.task.dictionary.nspecial
    pixels = torch.randint(0, 256, (2, 64), generator=generator)
    table = torch.zeros(offset + 256, 16)
    table[offset:] = ((torch.arange(256) / 255.0 - 0.48) / 0.24).unsqueeze(-1) * w + b
    token_model.encoder.embed_tokens = torch.nn.Embedding.from_pretrained(table)
    with torch.no_grad():
        ours = image_model(pixels + offset, classification_head_name=DEFAULT_HEAD_NAME)[0]
        expected = token_model(pixels + offset, classification_head_name=DEFAULT_HEAD_NAME)[0]
    _assert_close(ours, expected, "image logits")


def _io_inputs(name: str):
    return torch.load(FIXTURES / name / "io.pt", map_location="cpu", weights_only=True)["inputs"]


def test_lm_with_adaptive_input_and_softmax_keeps_every_tensor(tmp_path):
    """The WikiText-103 models use fairseq's adaptive input and softmax, which the
    original's fork and fairseq 0.12 name alike: every tensor is carried over under its
    name (checked here by name, shape and value; no original outputs exist for them), the
    buffers the original may lack are filled in, and the model computes finite
    log-probabilities over the whole vocabulary."""
    from mega_fairseq.conversion.original_mega import lm_state_dict
    from lm_helpers import build_lm, make_dictionary

    reference = build_lm(make_dictionary(52), decoder_embed_dim=16, adaptive_input=True,
                         adaptive_input_cutoff="10,30", adaptive_softmax_cutoff="10,30",
                         tie_adaptive_weights=True, tie_adaptive_proj=True)
    adaptive = {k: v + 0.01 for k, v in reference.state_dict().items()
                if k.startswith(("decoder.embed_tokens.embeddings.", "decoder.adaptive_softmax."))
                and not k.endswith(("_float_tensor", "version"))}

    def make_adaptive(args, state):
        args.adaptive_input, args.tie_adaptive_weights, args.tie_adaptive_proj = True, True, True
        args.adaptive_input_cutoff = args.adaptive_softmax_cutoff = "10,30"
        args.adaptive_input_factor = args.adaptive_softmax_factor = 4
        args.share_decoder_input_output_embed = False
        del state["decoder.embed_tokens.weight"], state["decoder.output_projection.weight"]
        state.update(adaptive)

    checkpoint = load_original_checkpoint(str(FIXTURES / "lm_a" / "checkpoint.pt"))
    make_adaptive(checkpoint["args"], checkpoint["model"])
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)
    converted = convert_original_checkpoint(str(path), str(FIXTURES / "lm_a"))
    state = converted.model.state_dict()
    for key, value in adaptive.items():
        assert torch.equal(state[key], value), key
    assert set(lm_state_dict(checkpoint["model"])) >= set(adaptive)
    tokens = _io_inputs("lm_a")["src_tokens"]
    with torch.no_grad():
        lprobs = converted.model.get_normalized_probs(converted.model(tokens), log_probs=True)
    assert lprobs.shape == (2, 13, 56) and torch.isfinite(lprobs).all()
    torch.testing.assert_close(lprobs.exp().sum(-1), torch.ones(2, 13))


def test_speech_commands_raw_model_embeds_samples_as_the_original(tmp_path):
    """The original's SC-Raw encoder is its LRA encoder with the real-number embedding
    x * w + b over waveform samples: lra_a made into an ``sc_raw`` checkpoint must compute
    what the verified LRA model computes with that embedding in place of its token table,
    on the same float samples (mean pooling and the 160-wide head as the original)."""
    generator = torch.Generator().manual_seed(9)
    w, b = torch.randn(16, generator=generator), torch.randn(16, generator=generator) * 0.1

    def speech(args, state):
        args.task, args.arch, args.sc_all_classes, args.mfcc = "speech_commands", "mega_sc_raw", False, False
        del state["encoder.encoder.embed_tokens.embed.weight"]
        state["encoder.encoder.embed_tokens.weight"], state["encoder.encoder.embed_tokens.bias"] = w, b

    converted = convert_original_checkpoint(str(_lra_variant(tmp_path, speech)), str(tmp_path))
    assert converted.kind == "sc_raw" and type(converted.model).__name__ == "MegaSCRawModel"
    assert converted.task.labels[:2] == ["yes", "no"] and len(converted.task.labels) == 10
    token_model = convert_original_checkpoint(str(FIXTURES / "lra_a" / "checkpoint.pt"),
                                              str(FIXTURES / "lra_a")).model

    class RealNumbers(torch.nn.Module):
        weight = torch.nn.Parameter(w.unsqueeze(-1))

        def forward(self, samples):
            return samples.unsqueeze(-1) * w + b

    token_model.encoder.embed_tokens = RealNumbers()
    samples = torch.randn(2, 10, generator=generator) * 0.5 + 2.0  # no sample equals the pad index 1
    with torch.no_grad():
        ours = converted.model(samples, torch.tensor([10, 10]), classification_head_name=DEFAULT_HEAD_NAME)[0]
        expected = token_model(samples, classification_head_name=DEFAULT_HEAD_NAME)[0]
    _assert_close(ours, expected, "speech logits")


def test_tensors_that_do_not_fit_the_options_or_the_dictionary_are_refused_clearly(tmp_path):
    def wider(args, state):
        args.z_dim = 4  # the checkpoint's tensors have z = 8

    with pytest.raises(ValueError, match=r"do not fit its own options \(args\): encoder.layers.0.self_attn.gamma \[2, 8\] \(the options make \[2, 4\]\)"):
        convert_original_checkpoint(str(_lra_variant(tmp_path, wider)), str(FIXTURES / "lra_a"))
    data = tmp_path / "data"
    (data / "src-bin").mkdir(parents=True)
    (data / "label-bin").mkdir()
    lines = (FIXTURES / "lra_a" / "src-bin" / "dict.txt").read_text().splitlines()
    (data / "src-bin" / "dict.txt").write_text("\n".join(lines[:-3]) + "\n")
    (data / "label-bin" / "dict.txt").write_text((FIXTURES / "lra_a" / "label-bin" / "dict.txt").read_text())
    with pytest.raises(ValueError, match="dictionary mismatch: .* 57 rows but .* 54 symbols"):
        convert_original_checkpoint(str(FIXTURES / "lra_a" / "checkpoint.pt"), str(data))
