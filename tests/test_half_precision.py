"""Whole models in half precision: the same weights in float32, after ``model.half()`` /
``model.bfloat16()`` (what fairseq's ``--fp16`` / ``--bf16`` do) and under autocast
(``--amp``), for ``mega_lm``, ``mega`` (translation) and ``mega_encoder``, every attention
activation, chunked and not, incremental decoding included; finiteness at 4096 tokens.

Tolerance. A half-precision run rounds the residual stream at every stage that stores it
(the embedding, the two sub-layers of each block, the output projection), each time with a
relative error of at most the unit roundoff u (2^-11 for float16, 2^-8 for bfloat16), and
the log-probabilities inherit that error scaled by the logits (|logits| ~ 1-5 here). With
2L + 2 stages for L blocks and an allowance of 4 u per stage, the bound is
``4 u (2L + 2)``: 24 u for these two-block models, against at most 11 u measured (4-7 u
for the language models, 6-11 u for translation and the encoder, 7-9 u at 4096 tokens;
float16 and bfloat16, cast and autocast). Two differently initialised float32 models differ by about
5 in log-probability, 50 (bfloat16) to 400 (float16) times the bound, and every
half-precision run must also differ from float32 (it really ran in half precision).

These tests are marked ``device``: ``pytest -m device --device cuda`` runs them on a GPU.
"""

import copy
import math

import pytest
import torch

from lm_helpers import build_lm, make_dictionary, random_tokens
from mt_helpers import build_translation_model, padded_batch, random_sentence
from mega_fairseq.models.mega_encoder_model import MegaEncoderModel, MegaEncoderModelConfig

pytestmark = pytest.mark.device

UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
# (how, dtype): "cast" converts the parameters (fairseq --fp16/--bf16), "autocast" keeps
# float32 parameters and autocasts (fairseq --amp)
MODES = [("cast", torch.float16), ("cast", torch.bfloat16),
         ("autocast", torch.float16), ("autocast", torch.bfloat16)]
MODE_IDS = ["half", "bfloat16", "autocast-fp16", "autocast-bf16"]
LAYERS = 2


def tolerance(dtype: torch.dtype, layers: int = LAYERS) -> float:
    return 4 * UNIT_ROUNDOFF[dtype] * (2 * layers + 2)


def in_mode(model, mode, device):
    """A copy of ``model`` on ``device`` in ``mode`` and the context to run it in."""
    how, dtype = mode
    copied = copy.deepcopy(model).to(device)
    if how == "cast":
        return copied.to(dtype), torch.autocast(device.type, enabled=False)
    return copied, torch.autocast(device.type, dtype=dtype)


def assert_close_in_half(result, reference, mode, mask=None):
    """result, reference: float32 tensors; mask selects the positions that count."""
    if mask is not None:
        result, reference = result[mask], reference[mask]
    assert torch.isfinite(result).all()
    error = (result - reference).abs().max().item()
    bound = tolerance(mode[1])
    assert error <= bound, f"{mode}: max error {error:.3e} > {bound:.3e}"
    assert error > 0, f"{mode}: identical to float32, so it did not run in half precision"
    return error


def lm_log_probs(model, tokens, incremental_state=None):
    net_output = model(tokens, incremental_state=incremental_state)
    return model.get_normalized_probs(net_output, log_probs=True).float()


def decode_lm(model, tokens, schedule):
    """Incremental forward over ``tokens`` in blocks of the given sizes (1 = one step)."""
    state, outputs, end = {}, [], 0
    for size in schedule:
        end += size
        # as fairseq's generator: the whole prefix, of which only the new columns are run
        outputs.append(lm_log_probs(model, tokens[:, :end], incremental_state=state))
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("chunk", [-1, 4])
@pytest.mark.parametrize("activation", ["softmax", "laplace", "relu2"])
def test_language_model(activation, chunk, mode, device):
    torch.manual_seed(0)
    dictionary = make_dictionary(50)
    model = build_lm(dictionary, decoder_chunk_size=chunk, attention_activation_fn=activation,
                     decoder_layers=LAYERS).eval()
    tokens = random_tokens(dictionary, 2, 11).to(device)
    with torch.no_grad():
        reference = lm_log_probs(model.to(device), tokens)
        other = build_lm(dictionary, decoder_chunk_size=chunk, attention_activation_fn=activation,
                         decoder_layers=LAYERS).eval().to(device)
        assert (lm_log_probs(other, tokens) - reference).abs().max() > 20 * tolerance(mode[1])

        half_model, context = in_mode(model, mode, device)
        with context:
            full = lm_log_probs(half_model, tokens)
            stepwise = decode_lm(half_model, tokens, [1] * 11)
            blockwise = decode_lm(half_model, tokens, [3, 1, 5, 2])
    for result in (full, stepwise, blockwise):
        assert_close_in_half(result, reference, mode)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("chunk", [-1, 3])
@pytest.mark.parametrize("activation", ["softmax", "laplace", "relu2"])
def test_translation_model(activation, chunk, mode, device):
    torch.manual_seed(0)
    dictionary = make_dictionary(40)
    model = build_translation_model(dictionary, attention_activation_fn=activation,
                                    encoder_chunk_size=chunk, decoder_chunk_size=chunk).eval()
    sources = [random_sentence(dictionary, n, seed) for seed, n in enumerate((9, 6))]
    src = padded_batch(sources, dictionary.pad(), left=True).to(device)  # fairseq's default
    lengths = torch.tensor([9, 6], device=device)
    prev = random_tokens(dictionary, 2, 7, seed=3).to(device)

    def log_probs(m, tokens, state=None, encoder_out=None):
        out = m.decoder(tokens, encoder_out=encoder_out, incremental_state=state)
        return m.get_normalized_probs(out, log_probs=True).float()

    with torch.no_grad():
        model = model.to(device)
        reference = log_probs(model, prev, encoder_out=model.encoder(src, lengths))
        half_model, context = in_mode(model, mode, device)
        with context:
            encoder_out = half_model.encoder(src, lengths)
            full = log_probs(half_model, prev, encoder_out=encoder_out)
            state, steps = {}, []
            for end in range(1, prev.size(1) + 1):
                steps.append(log_probs(half_model, prev[:, :end], state, encoder_out))
    assert_close_in_half(full, reference, mode)
    assert_close_in_half(torch.cat(steps, dim=1), reference, mode)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("chunk", [-1, 3])
@pytest.mark.parametrize("activation", ["softmax", "laplace", "relu2"])
def test_encoder_model(activation, chunk, mode, device):
    torch.manual_seed(0)
    dictionary = make_dictionary(40)
    cfg = MegaEncoderModelConfig(
        encoder_embed_dim=16, encoder_hidden_dim=24, encoder_ffn_embed_dim=20, encoder_z_dim=8,
        encoder_n_dim=4, encoder_layers=LAYERS, dropout=0.0, max_source_positions=64,
        encoder_chunk_size=chunk, attention_activation_fn=activation)
    task = type("Task", (), {"source_dictionary": dictionary})()
    model = MegaEncoderModel.build_model(cfg, task)
    model.register_classification_head("cls", num_classes=3)
    model = model.eval().to(device)
    sources = [random_sentence(dictionary, n, seed) for seed, n in enumerate((10, 7, 4))]
    tokens = padded_batch(sources, dictionary.pad(), left=False).to(device)
    real = tokens.ne(dictionary.pad())

    def outputs(m):
        logits = torch.log_softmax(m(tokens)[0].float(), dim=-1)  # masked-LM head, B x T x V
        classes = torch.log_softmax(m(tokens, classification_head_name="cls")[0].float(), dim=-1)
        return logits, classes

    with torch.no_grad():
        reference_logits, reference_classes = outputs(model)
        half_model, context = in_mode(model, mode, device)
        with context:
            logits, classes = outputs(half_model)
    assert_close_in_half(logits, reference_logits, mode, mask=real)
    assert_close_in_half(classes, reference_classes, mode)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_long_chunked_language_model_stays_finite(mode, device):
    """4096 tokens with chunk 128: forward close to float32, and a finite backward (the
    half-precision gradients fairseq's FP16Optimizer copies to its float32 master weights)."""
    torch.manual_seed(0)
    dictionary = make_dictionary(50)
    model = build_lm(dictionary, decoder_chunk_size=128, tokens_per_sample=4096,
                     decoder_layers=LAYERS).to(device)
    tokens = random_tokens(dictionary, 1, 4096).to(device)
    with torch.no_grad():
        reference = lm_log_probs(model.eval(), tokens)
    half_model, context = in_mode(model, mode, device)
    half_model.train()
    with context:
        log_probs = lm_log_probs(half_model, tokens)
        loss = -log_probs.gather(-1, tokens.unsqueeze(-1)).mean()
    loss.backward()
    assert_close_in_half(log_probs.detach(), reference, mode)
    for name, parameter in half_model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert math.isfinite(loss.item())
