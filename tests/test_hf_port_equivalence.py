"""MegaLayer and the Hugging Face port's MegaBlock (transformers 4.40.2) compute the same
function on identical weights (mapped by mega_fairseq.conversion.hf_mega; the port's
blocks built and run by scripts/benchmarking/hf_harness.py).

Compared: full-sequence forwards in eval mode (all dropouts inactive), outputs at real
(not padded) positions, in float32 (atol 1e-5, the port as it is) and float64 (atol
1e-10, with the port's three float32 shortcuts replaced by float64 ones; each shortcut is
demonstrated by its own test below), plus gradients for a few configurations.

Excluded from the equality tests, with the reason:
- norm_type='rmsnorm': the port's MegaRMSNorm does not normalise
  (test_port_rmsnorm_does_not_normalise).
- the port's incremental decoding: wrong for laplace/relu2 single-token steps and for
  chunked decoding; we compare full-sequence forwards only.
- left padding in causal layers: softmax gives NaN at the padded positions, which the
  next block's EMA spreads to real tokens (test_port_causal_softmax_left_padding_nan),
  and laplace/relu2 count the padded keys in their normaliser
  (test_port_causal_laplace_relu2_normaliser_counts_left_padding).
- chunked simple bias with max_positions != chunk_size: the port reads its table around
  entry chunk_size - 1 (test_port_chunked_simple_bias_reads_around_chunk_size); the
  helper refuses it, the grid uses max_positions == chunk_size (as the model options do).
- chunked inputs longer than a chunk but not a multiple of it: the port cannot reshape
  them (run_hf_block raises).
- outputs at padded positions: meaningless in both (the port adds omega * x of the
  unmasked input there), so only real positions are compared.
- training mode: the port's batch norm statistics include padding and its hidden dropout
  acts on the values instead of attn * r; only eval mode is compared.
- cross-attention blocks: not mapped by the helper (hf_config_kwargs refuses them).
Not excluded but worked around by the helper: MegaModel cannot initialise non-affine
layer norms (test_port_model_cannot_build_plain_layer_norms).
"""

import itertools
import math
import subprocess
import sys

import pytest
import torch
from transformers import activations as hf_activations
from transformers.models.mega import modeling_mega

from benchmarking.hf_harness import build_hf_block, mega_layer_from_hf_block, run_hf_block  # scripts/ (conftest)
from mega_fairseq.conversion.hf_mega import (
    hf_block_state_to_mega_layer_state,
    hf_config_kwargs,
    mega_layer_state_to_hf_block_state,
)
from mega_fairseq.modules.activations import laplace
from mega_fairseq.modules.mega_layer import MegaLayer, MegaLayerSettings
from mega_fairseq.modules.sequence_norm import SequenceNorm

T, B, C = 32, 3, 16
CHUNK = 8
MAX_POSITIONS = 64
RIGHT_PADDING = (0, 5, 11)  # padded steps at the end of each sequence; 11 > CHUNK: a padded chunk
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}

# the port's feature dropout calls dropout2d on 3-D tensors even in eval mode
pytestmark = pytest.mark.filterwarnings("ignore:dropout2d:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors here are tiny: a second intra-op thread only adds synchronisation cost
    (milliseconds per operation on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------- helpers
def layer_settings(causal: bool = False, chunk_size: int = -1, **options) -> MegaLayerSettings:
    """Small settings; a chunked simple bias covers exactly the chunk (as the model options
    build it)."""
    return MegaLayerSettings(
        embed_dim=C, zdim=8, hdim=24, ndim=4, ffn_hidden_dim=32, causal=causal, chunk_size=chunk_size,
        max_positions=chunk_size if chunk_size > 0 else MAX_POSITIONS, **options,
    )


def perturb_state(module: torch.nn.Module, seed: int) -> None:
    """Move every weight and batch-norm statistic away from its initial value (zero biases,
    unit norm weights and running statistics would hide mapping errors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("_float_tensor"):
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            else:
                tensor.add_(0.2 * noise)


def block_pair(settings: MegaLayerSettings, dtype: torch.dtype, seed: int = 0):
    """(HF block, our layer) with the same perturbed weights, in eval mode and ``dtype``."""
    hf_block = build_hf_block(settings, seed=seed)
    perturb_state(hf_block, seed)
    hf_block.to(dtype)
    return hf_block, mega_layer_from_hf_block(hf_block, settings)


def random_inputs(dtype: torch.dtype, seed: int = 0, length: int = T) -> torch.Tensor:
    """length x B x C."""
    return torch.randn(length, B, C, generator=torch.Generator().manual_seed(seed + 100), dtype=dtype)


def right_padding_mask(length: int = T) -> torch.Tensor:
    """B x length, True at the last RIGHT_PADDING[b] steps of sequence b."""
    mask = torch.zeros(B, length, dtype=torch.bool)
    for batch_index, padded in enumerate(RIGHT_PADDING):
        mask[batch_index, length - padded:] = padded > 0
    return mask


def real_positions(padding_mask, length: int = T) -> torch.Tensor:
    """length x B bool, True where the output is meaningful."""
    if padding_mask is None:
        return torch.ones(length, B, dtype=torch.bool)
    return ~padding_mask.t()


# ---------------------------------------------- the port in full precision
def _fft_convolution_in_input_dtype(self, inputs, kernel, length):
    """The port's MegaMultiDimensionDampedEma.fft_convolution without its .float() casts."""
    size = 2 * length
    return torch.fft.irfft(torch.fft.rfft(inputs, n=size) * torch.fft.rfft(kernel, n=size), n=size)


def _sinusoids_in_float64(max_positions: int, embedding_dim: int):
    """The port's rotary tables, computed in float64 instead of float32."""
    half = embedding_dim // 2
    inv_freq = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / half))
    angles = torch.arange(max_positions, dtype=torch.float64).unsqueeze(1) * inv_freq.unsqueeze(0)
    return torch.sin(angles), torch.cos(angles)


def exact_laplace(x: torch.Tensor) -> torch.Tensor:
    """Mega's laplace attention function from its definition: the CDF of a normal
    distribution with mean sqrt(1/2) and standard deviation sqrt(1/(4 pi))."""
    normal = torch.distributions.Normal(
        torch.tensor(math.sqrt(0.5), dtype=x.dtype), torch.tensor(math.sqrt(0.25 / math.pi), dtype=x.dtype)
    )
    return normal.cdf(x)


@pytest.fixture
def port_in_full_precision(monkeypatch):
    """Replace the port's float32 shortcuts (EMA FFT, rotary tables, 6-digit laplace
    constants) so that float64 comparisons can be exact. Each is demonstrated below."""
    monkeypatch.setattr(modeling_mega.MegaMultiDimensionDampedEma, "fft_convolution",
                        _fft_convolution_in_input_dtype)
    monkeypatch.setattr(modeling_mega.MegaRotaryRelativePositionalBias, "get_sinusoid_embeddings",
                        staticmethod(_sinusoids_in_float64))
    monkeypatch.setattr(hf_activations.LaplaceActivation, "forward", lambda self, input: exact_laplace(input))


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request):
    if request.param == torch.float64:
        request.getfixturevalue("port_in_full_precision")
    return request.param


# --------------------------------------------------------------- the grid
ATTENTION_KINDS = list(itertools.product(
    (False, True),  # causal
    ("softmax", "laplace", "relu2"),
    ("simple", "rotary"),
))
STRUCTURES = {
    "layernorm-prenorm": dict(norm_type="layernorm", prenorm=True),
    "scalenorm-postnorm-truncated": dict(norm_type="scalenorm", prenorm=False, truncation=5),
    "batchnorm-prenorm-chunked": dict(norm_type="batchnorm", prenorm=True, chunk_size=CHUNK),
    "layernorm-postnorm-chunked-truncated-gelu": dict(
        norm_type="layernorm", prenorm=False, chunk_size=CHUNK, truncation=4, activation="gelu"),
    "batchnorm-postnorm-one-chunk": dict(norm_type="batchnorm", prenorm=False, chunk_size=2 * T - 16),
    "scalenorm-prenorm-plain-norm-dropouts": dict(
        norm_type="scalenorm", norm_affine=False, activation="gelu_accurate", dropout=0.1,
        attention_dropout=0.1, hidden_dropout=0.1, activation_dropout=0.1, feature_dropout=True),
}
GRID = [
    dict(structure, causal=causal, attention_activation=attention, rel_pos_bias=bias)
    for (causal, attention, bias), structure in itertools.product(ATTENTION_KINDS, STRUCTURES.values())
]
GRID_IDS = [
    f"{'causal' if causal else 'encoder'}-{attention}-{bias}-{name}"
    for (causal, attention, bias), name in itertools.product(ATTENTION_KINDS, STRUCTURES)
]
EXTRA_CONFIGURATIONS = {
    "unidirectional-encoder-relu": dict(causal=False, bidirectional=False, activation="relu"),
    "encoder-linear-activation-syncbatchnorm": dict(activation="linear", norm_type="syncbatchnorm"),
    "causal-chunked-laplace-rotary-scalenorm-postnorm": dict(
        causal=True, chunk_size=CHUNK, attention_activation="laplace", rel_pos_bias="rotary",
        norm_type="scalenorm", prenorm=False, truncation=3),
    "causal-plain-layernorm-postnorm": dict(causal=True, norm_affine=False, prenorm=False),
    "encoder-plain-batchnorm-chunked": dict(norm_type="batchnorm", norm_affine=False, chunk_size=CHUNK),
}


def assert_outputs_agree(options: dict, padding_mask, dtype: torch.dtype) -> None:
    settings = layer_settings(**options)
    hf_block, layer = block_pair(settings, dtype)
    x = random_inputs(dtype)
    with torch.no_grad():
        expected = run_hf_block(hf_block, x, padding_mask)
        ours, _ = layer(x, padding_mask=padding_mask)
    real = real_positions(padding_mask)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(ours[real], expected[real], atol=TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "right-padded"])
@pytest.mark.parametrize("options", GRID, ids=GRID_IDS)
def test_outputs_agree(options, padded, dtype):
    assert_outputs_agree(options, right_padding_mask() if padded else None, dtype)


@pytest.mark.parametrize("options", EXTRA_CONFIGURATIONS.values(), ids=EXTRA_CONFIGURATIONS.keys())
def test_outputs_agree_extra_configurations(options, dtype):
    assert_outputs_agree(options, right_padding_mask(), dtype)


# --------------------------------------------------------------- gradients
GRADIENT_CONFIGURATIONS = {
    "encoder-softmax-rotary-batchnorm-chunked": dict(
        causal=False, rel_pos_bias="rotary", norm_type="batchnorm", chunk_size=CHUNK),
    "causal-laplace-simple-layernorm-postnorm-truncated": dict(
        causal=True, attention_activation="laplace", prenorm=False, truncation=5),
    "causal-relu2-simple-scalenorm-chunked": dict(
        causal=True, attention_activation="relu2", norm_type="scalenorm", chunk_size=CHUNK),
}


def _loss_and_gradients(forward, x, parameters, real, weights):
    x = x.clone().requires_grad_(True)
    loss = (forward(x)[real] * weights).sum()
    loss.backward()
    return x.grad, {name: parameter.grad for name, parameter in parameters}


@pytest.mark.parametrize("options", GRADIENT_CONFIGURATIONS.values(), ids=GRADIENT_CONFIGURATIONS.keys())
def test_gradients_agree(options, dtype):
    settings = layer_settings(**options)
    hf_block, layer = block_pair(settings, dtype)
    x, padding_mask = random_inputs(dtype), right_padding_mask()
    real = real_positions(padding_mask)
    weights = torch.randn(int(real.sum()), C, generator=torch.Generator().manual_seed(7), dtype=dtype)

    hf_input_grad, hf_grads = _loss_and_gradients(
        lambda inputs: run_hf_block(hf_block, inputs, padding_mask), x, hf_block.named_parameters(), real, weights)
    our_input_grad, our_grads = _loss_and_gradients(
        lambda inputs: layer(inputs, padding_mask=padding_mask)[0], x, layer.named_parameters(), real, weights)

    tolerance = dict(atol=10 * TOLERANCE[dtype], rtol=1e-4 if dtype == torch.float32 else 1e-9)
    torch.testing.assert_close(our_input_grad, hf_input_grad, **tolerance)
    # name the port's gradients as ours (buffers ride along to complete the state dict)
    hf_grads_state = dict(hf_block.state_dict(), **hf_grads)
    mapped = hf_block_state_to_mega_layer_state(hf_grads_state)
    assert set(our_grads) <= set(mapped)
    for name, grad in our_grads.items():
        assert grad is not None and mapped[name] is not None, name
        torch.testing.assert_close(grad, mapped[name], **tolerance, msg=lambda m: f"{name}: {m}")


def test_run_hf_block_backpropagates_after_a_weight_update():
    """The port caches its EMA kernel in eval mode; run_hf_block must neither reuse it
    across backward passes nor leave a kernel of old weights behind."""
    settings = layer_settings(causal=True)
    hf_block, layer = block_pair(settings, torch.float64)
    x = random_inputs(torch.float64)
    weights = torch.randn(T, B, C, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for _ in range(2):
        (run_hf_block(hf_block, x) * weights).mean().backward()
        (layer(x)[0] * weights).mean().backward()
        torch.testing.assert_close(layer.self_attn.ema.delta.grad,
                                   hf_block.mega_layer.ema_gate.damping_factor.grad, atol=1e-8, rtol=1e-5)
        with torch.no_grad():
            for module in (hf_block, layer):
                for parameter in module.parameters():
                    parameter.sub_(0.5 * parameter.grad)
                    parameter.grad = None
            torch.testing.assert_close(layer(x)[0], run_hf_block(hf_block, x), atol=1e-6, rtol=0)


# ------------------------------------------------------------- state dicts
ROUND_TRIP_SETTINGS = {
    "encoder-layernorm-simple": layer_settings(),
    "causal-scalenorm-rotary": layer_settings(causal=True, norm_type="scalenorm", rel_pos_bias="rotary"),
    "encoder-batchnorm-chunked": layer_settings(norm_type="batchnorm", chunk_size=CHUNK),
    "encoder-plain-batchnorm": layer_settings(norm_type="batchnorm", norm_affine=False),
    "unidirectional-plain-layernorm": layer_settings(bidirectional=False, norm_affine=False),
    "causal-rmsnorm": layer_settings(causal=True, norm_type="rmsnorm"),
}


@pytest.mark.parametrize("settings", ROUND_TRIP_SETTINGS.values(), ids=ROUND_TRIP_SETTINGS.keys())
def test_state_round_trip_through_the_port(settings):
    layer = MegaLayer(settings)
    perturb_state(layer, seed=3)
    ours = layer.state_dict()
    hf_state = mega_layer_state_to_hf_block_state(ours)
    # the names and shapes are those of a real block
    hf_block = build_hf_block(settings, allow_known_defects=True)
    hf_block.load_state_dict(hf_state, strict=True)
    back = hf_block_state_to_mega_layer_state(hf_block.state_dict())
    assert list(back) == list(ours)
    for name in ours:
        assert torch.equal(back[name], ours[name]), name
    hf_again = mega_layer_state_to_hf_block_state(back)
    assert set(hf_again) == set(hf_block.state_dict())
    assert all(torch.equal(hf_again[name], tensor) for name, tensor in hf_block.state_dict().items())


def _without(state, key):
    return {name: value for name, value in state.items() if name != key}


@pytest.mark.parametrize("settings, key", [
    (layer_settings(), "self_attn.ema.delta"),
    (layer_settings(), "ffn.norm.norm.bias"),
    (layer_settings(norm_type="batchnorm"), "self_attn.norm.norm.running_var"),
    (layer_settings(rel_pos_bias="rotary"), "self_attn.rel_pos_bias.beta"),
    (layer_settings(), "self_attn.rel_pos_bias.rel_pos_bias"),
])
def test_missing_keys_are_named(settings, key):
    ours = MegaLayer(settings).state_dict()
    with pytest.raises(ValueError, match=f"missing keys: .*'{key}'"):
        mega_layer_state_to_hf_block_state(_without(ours, key))


@pytest.mark.parametrize("hf_key", [
    "mega_layer.ema_gate.damping_factor",
    "mega_layer.qk_bias",
    "nffn.fc2.weight",
    "mega_layer.norm.norm.weight",
])
def test_missing_hf_keys_are_named(hf_key):
    hf_state = build_hf_block(layer_settings()).state_dict()
    with pytest.raises(ValueError, match=f"missing keys: .*'{hf_key}'"):
        hf_block_state_to_mega_layer_state(_without(hf_state, hf_key))


def test_unexpected_keys_are_named():
    ours = MegaLayer(layer_settings()).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys: \['self_attn.extra'\]"):
        mega_layer_state_to_hf_block_state(dict(ours, **{"self_attn.extra": torch.zeros(1)}))
    hf_state = mega_layer_state_to_hf_block_state(ours)
    with pytest.raises(ValueError, match=r"unexpected keys: \['mega_layer.cross_attn.k_proj.weight'\]"):
        hf_block_state_to_mega_layer_state(dict(hf_state, **{"mega_layer.cross_attn.k_proj.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"unexpected keys: \['mega_layer.rel_pos_bias._float_tensor'\]"):
        hf_block_state_to_mega_layer_state(dict(hf_state, **{"mega_layer.rel_pos_bias._float_tensor": torch.zeros(1)}))
    scale_norm_state = mega_layer_state_to_hf_block_state(MegaLayer(layer_settings(norm_type="scalenorm")).state_dict())
    with pytest.raises(ValueError, match="unexpected keys: .*'nffn.norm.norm.bias'"):
        hf_block_state_to_mega_layer_state(dict(scale_norm_state, **{
            "mega_layer.norm.norm.bias": torch.zeros(1), "nffn.norm.norm.bias": torch.zeros(1)}))


# ------------------------------------------------------- config and helpers
def test_config_kwargs_carry_every_setting():
    settings = MegaLayerSettings(
        embed_dim=C, zdim=6, hdim=20, ndim=3, ffn_hidden_dim=40, causal=True, dropout=0.1,
        attention_dropout=0.2, hidden_dropout=0.3, activation_dropout=0.4, feature_dropout=True,
        activation="gelu", attention_activation="relu2", norm_type="batchnorm", prenorm=False,
        norm_affine=False, rel_pos_bias="rotary", max_positions=100, chunk_size=CHUNK, truncation=7,
    )
    kwargs = hf_config_kwargs(settings, vocab_size=5)
    assert kwargs == dict(
        vocab_size=5, num_hidden_layers=1, hidden_size=C, intermediate_size=20,
        shared_representation_size=6, ema_projection_size=3, nffn_hidden_size=40, bidirectional=False,
        is_decoder=True, add_cross_attention=False, use_chunking=True, chunk_size=CHUNK, truncation=7,
        normalize_before_mega=False, normalize_before_ffn=False, normalization_type="batchnorm",
        norm_affine=False, activation="gelu", attention_activation="relu2",
        relative_positional_bias="rotary", max_positions=100, dropout_prob=0.1,
        attention_probs_dropout_prob=0.2, hidden_dropout_prob=0.3, nffn_activation_dropout_prob=0.4,
        use_feature_dropout=True, use_normalized_ffn=True, add_token_type_embeddings=False,
    )
    encoder = hf_config_kwargs(layer_settings(chunk_size=0))
    assert (encoder["bidirectional"], encoder["is_decoder"], encoder["use_chunking"], encoder["chunk_size"]) == (
        True, False, False, -1)


@pytest.mark.parametrize("options, setting", [
    (dict(cross_attention=True), "cross_attention"),
    (dict(norm_type="rmsnorm"), "rmsnorm"),
    (dict(chunk_size=CHUNK, max_positions=MAX_POSITIONS), "max_positions"),
])
def test_config_kwargs_refuse_what_the_port_cannot_compute(options, setting):
    base = dict(embed_dim=C, zdim=8, hdim=24, ndim=4, ffn_hidden_dim=32, causal=False)
    with pytest.raises(ValueError, match=setting):
        hf_config_kwargs(MegaLayerSettings(**dict(base, **options)))


def test_rmsnorm_builds_when_defects_are_allowed():
    assert build_hf_block(layer_settings(norm_type="rmsnorm"), allow_known_defects=True).mega_layer.config.normalization_type == "rmsnorm"


def test_layer_from_block_checks_the_settings():
    hf_block = build_hf_block(layer_settings(causal=True))
    with pytest.raises(ValueError, match="is_decoder"):
        mega_layer_from_hf_block(hf_block, layer_settings(causal=False))


def test_build_is_seeded_and_leaves_the_global_generator_alone():
    torch.manual_seed(11)
    expected_next = torch.rand(1)
    torch.manual_seed(11)
    first = build_hf_block(layer_settings(), seed=5).state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    second = build_hf_block(layer_settings(), seed=5).state_dict()
    other = build_hf_block(layer_settings(), seed=6).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["mega_layer.v_proj.weight"], other["mega_layer.v_proj.weight"])
    assert not build_hf_block(layer_settings()).training


def test_run_hf_block_refuses_lengths_the_port_cannot_chunk():
    hf_block = build_hf_block(layer_settings(chunk_size=CHUNK))
    with pytest.raises(ValueError, match="multiple"):
        run_hf_block(hf_block, random_inputs(torch.float32, length=CHUNK + 3))


def test_importing_the_helpers_does_not_import_transformers():
    code = ("import sys, mega_fairseq, mega_fairseq.conversion.hf_mega; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


# ------------------------------------------- divergences of the port, shown
def test_port_rmsnorm_does_not_normalise():
    x = 3.0 + 5.0 * torch.randn(T, B, C)
    hf_norm = modeling_mega.MegaSequenceNorm("rmsnorm", C)
    torch.nn.init.ones_(hf_norm.norm.weight)
    torch.testing.assert_close(hf_norm(x), x)  # returns x * weight, not normalised
    ours = SequenceNorm("rmsnorm", C)(x)
    rms = ours.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)


def test_port_model_cannot_build_plain_layer_norms():
    """MegaModel's initialiser zeroes LayerNorm.bias even when it is None; build_hf_block
    works around it (and test_outputs_agree_extra_configurations checks the result)."""
    config = modeling_mega.MegaConfig(**dict(hf_config_kwargs(layer_settings(norm_affine=False))))
    with pytest.raises(AttributeError):
        modeling_mega.MegaModel(config)
    norm = build_hf_block(layer_settings(norm_affine=False)).mega_layer.norm.norm
    assert isinstance(norm, torch.nn.LayerNorm) and norm.weight is None


def _direct_recurrence(ema, x):
    """silu(y + omega x) of a unidirectional EMA, by the recurrence h_t = q h_{t-1} + p beta
    x_t, y_t = sum_n gamma_n / sqrt(N) h_t[n]; from the port's parameters. x: T x B x D."""
    p = torch.sigmoid(ema.damping_factor.squeeze(-1))
    q = 1.0 - p * torch.sigmoid(ema.decay_factor.squeeze(-1))
    gamma = ema.kernel_projection_matrix / math.sqrt(ema.ndim)
    state = x.new_zeros(x.size(1), *q.shape)
    outputs = []
    for step in x:
        state = q * state + p * ema.ema_expansion_matrix.squeeze(-1) * step.unsqueeze(-1)
        outputs.append((state * gamma).sum(-1))
    return torch.nn.functional.silu(torch.stack(outputs) + ema.residual_weight * x)


def test_port_ema_runs_in_float32_even_in_float64():
    hf_block, layer = block_pair(layer_settings(causal=True), torch.float64)
    x = random_inputs(torch.float64)
    with torch.no_grad():
        expected = _direct_recurrence(hf_block.mega_layer.ema_gate, x)
        hf_error = (hf_block.mega_layer.ema_gate(x)[0] - expected).abs().max()
        our_error = (layer.self_attn.ema(x) - expected).abs().max()
    assert hf_error > 1e-9 and our_error < 1e-12, (hf_error, our_error)


def test_port_laplace_constants_are_rounded():
    x = torch.linspace(-1.0, 2.0, 301, dtype=torch.float64)
    expected = exact_laplace(x)
    hf_error = (hf_activations.LaplaceActivation()(x) - expected).abs().max()
    our_error = (laplace(x) - expected).abs().max()
    assert hf_error > 1e-8 and our_error < 1e-14, (hf_error, our_error)


def _rotary_bias_independently(alpha, beta, length):
    """bias[i, j] = rot(alpha, i) . rot(beta, j), with the halves of each vector read as
    complex numbers turned by angle position * 10000^(-k / half): L x L."""
    half = alpha.numel() // 2
    frequencies = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    alpha_c = torch.complex(alpha[:half], alpha[half:]).to(torch.complex128)
    beta_c = torch.complex(beta[:half], beta[half:]).to(torch.complex128)
    offsets = torch.arange(length, dtype=torch.float64).view(-1, 1) - torch.arange(length, dtype=torch.float64)
    turn = torch.polar(torch.ones(()).double(), offsets.unsqueeze(-1) * frequencies)  # L x L x half
    return (alpha_c * beta_c.conj() * turn).real.sum(-1)


def test_port_rotary_tables_are_float32_even_in_float64():
    hf_block, layer = block_pair(layer_settings(rel_pos_bias="rotary"), torch.float64)
    with torch.no_grad():
        hf_bias_module = hf_block.mega_layer.rel_pos_bias
        hf_bias_module.alpha.normal_()
        hf_bias_module.b_param.normal_()
        layer.load_state_dict(hf_block_state_to_mega_layer_state(hf_block.state_dict()))
        expected = _rotary_bias_independently(hf_bias_module.alpha[0], hf_bias_module.b_param[0], T)
        positions = torch.arange(T)
        hf_error = (hf_bias_module(T) - expected).abs().max()
        our_error = (layer.self_attn.rel_pos_bias(positions, positions) - expected).abs().max()
    assert hf_error > 1e-9 and our_error < 1e-12, (hf_error, our_error)


def test_port_chunked_simple_bias_reads_around_chunk_size():
    """With chunk_size < max_positions the port reads entry chunk_size - 1 + (key - query)
    of its table instead of max_positions - 1 + (key - query)."""
    config = modeling_mega.MegaConfig(**dict(
        hf_config_kwargs(layer_settings(chunk_size=CHUNK)), max_positions=MAX_POSITIONS))
    hf_bias = modeling_mega.MegaSimpleRelativePositionalBias(config)
    with torch.no_grad():
        hf_bias.rel_pos_bias.copy_(torch.arange(2 * MAX_POSITIONS - 1, dtype=torch.float32))
    offsets = torch.arange(CHUNK).view(1, -1) - torch.arange(CHUNK).view(-1, 1)
    torch.testing.assert_close(hf_bias(CHUNK), (CHUNK - 1 + offsets).float())


def _left_padded_pair(options, dtype=torch.float64, padded=4):
    """Outputs of the real steps of a sequence that follows ``padded`` pad steps, and of the
    same sequence alone, for the port and for ours: (hf, hf_alone, ours, ours_alone)."""
    hf_block, layer = block_pair(layer_settings(**options), dtype)
    x = random_inputs(dtype, length=T)
    padding_mask = torch.zeros(B, T, dtype=torch.bool)
    padding_mask[:, :padded] = True
    with torch.no_grad():
        hf_out = run_hf_block(hf_block, x, padding_mask)
        hf_alone = run_hf_block(hf_block, x[padded:])
        ours, _ = layer(x, padding_mask=padding_mask)
        ours_alone, _ = layer(x[padded:])
    return hf_block, layer, x, padding_mask, (hf_out, hf_alone, ours, ours_alone)


def test_port_causal_softmax_left_padding_nan(port_in_full_precision):
    """A left-padded query of a causal softmax layer sees only padded keys: the port's row
    is all -inf and its softmax NaN. The next block's EMA multiplies the input by the mask
    (NaN * 0 = NaN), so the NaN reaches the real tokens. Ours stays finite and its real
    outputs equal those of the unpadded sequence."""
    hf_block, layer, _, padding_mask, (hf_out, hf_alone, ours, ours_alone) = _left_padded_pair(dict(causal=True))
    assert torch.isnan(hf_out[:4]).all() and torch.isfinite(hf_out[4:]).all()
    with torch.no_grad():
        assert torch.isnan(run_hf_block(hf_block, hf_out, padding_mask)[4:]).all()
        assert torch.isfinite(layer(ours, padding_mask=padding_mask)[0]).all()
    torch.testing.assert_close(ours[4:], ours_alone, atol=1e-12, rtol=0)
    torch.testing.assert_close(hf_out[4:], hf_alone, atol=1e-12, rtol=0)  # only the pad steps break


@pytest.mark.parametrize("activation", ["laplace", "relu2"])
def test_port_causal_laplace_relu2_normaliser_counts_left_padding(activation, port_in_full_precision):
    """In a causal laplace/relu2 layer the port divides q.k by the query's position + 1,
    counting left-padded keys, so its real outputs depend on how much padding precedes them.
    Ours divides by the number of visible real keys: the same outputs as the sequence alone."""
    *_, (hf_out, hf_alone, ours, ours_alone) = _left_padded_pair(
        dict(causal=True, attention_activation=activation))
    torch.testing.assert_close(ours[4:], ours_alone, atol=1e-12, rtol=0)
    torch.testing.assert_close(ours_alone, hf_alone, atol=1e-10, rtol=0)  # unpadded: equal
    assert (hf_out[4:] - hf_alone).abs().max() > 1e-4
