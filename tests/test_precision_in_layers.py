"""What computes in float32 inside the layers under half precision: the EMA (coefficients,
kernel, FFT, recurrent and block decoding), attention scores with their bias and
normalisation (self- and cross-attention), the relative position biases and the sequence
norms, whether the parameters are float16/bfloat16 (``model.half()``) or autocast is on.

With half-precision parameters the float32 computation is the same as that of a float32
module holding the same (already rounded) values, so the outputs must be *identical* to
that module's outputs rounded to the half dtype. Under autocast the float32 parts must
equal the float32 computation (EMA within 1e-6 relative).
"""

import copy

import pytest
import torch

from mega_fairseq.modules.ema import MultiDimensionalDampedEMA
from mega_fairseq.modules.gated_attention import MovingAverageGatedAttention
from mega_fairseq.modules.gated_cross_attention import GatedCrossAttention
from mega_fairseq.modules.relative_position import build_relative_positional_bias
from mega_fairseq.modules.sequence_norm import NORM_TYPES, SequenceNorm

pytestmark = pytest.mark.device

HALF = [torch.float16, torch.bfloat16]
HALF_IDS = ["float16", "bfloat16"]


def relative_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def rounded_copy(module, dtype, device):
    """(the module in ``dtype``, a float32 copy holding the same rounded values)."""
    half = module.to(device=device, dtype=dtype)
    return half, copy.deepcopy(half).float()


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("bidirectional,truncation", [(False, None), (True, None), (False, 7), (True, 7)])
def test_ema_under_autocast_equals_float32(bidirectional, truncation, dtype, device):
    """Before: relative error 1.7e-3 (bfloat16) / 2.0e-4 (float16) causal, 2.4e-3 / 3.1e-4
    bidirectional (the kernel's bmm and the decoding einsums ran in half precision)."""
    torch.manual_seed(0)
    ema = MultiDimensionalDampedEMA(24, ndim=8, bidirectional=bidirectional,
                                    truncation=truncation).to(device)
    x = torch.randn(300, 2, 24, device=device, requires_grad=True)
    expected = ema(x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    with torch.autocast(device.type, dtype=dtype):
        actual = ema(x)
        (actual_grad,) = torch.autograd.grad(actual.square().sum(), x)
    assert actual.dtype == torch.float32
    assert relative_error(actual, expected) <= 1e-6
    assert relative_error(actual_grad, expected_grad) <= 1e-6


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("truncation", [None, 5])
def test_ema_decoding_under_autocast_equals_float32(truncation, dtype, device):
    torch.manual_seed(0)
    ema = MultiDimensionalDampedEMA(16, ndim=4, truncation=truncation).to(device).eval()
    x = torch.randn(20, 3, 16, device=device)
    with torch.no_grad():
        expected = ema(x)
        with torch.autocast(device.type, dtype=dtype):
            steps, blocks = {}, {}
            stepwise = torch.cat([ema(x[t:t + 1], incremental_state=steps) for t in range(20)])
            blockwise = torch.cat([ema(x[a:b], incremental_state=blocks)
                                   for a, b in ((0, 6), (6, 7), (7, 20))])
    assert relative_error(stepwise, expected) <= 1e-6
    assert relative_error(blockwise, expected) <= 1e-6


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_ema_kernel_cached_under_autocast_serves_float32(dtype, device):
    """The eval-mode cache: a kernel built first under autocast is the float32 kernel."""
    torch.manual_seed(0)
    ema = MultiDimensionalDampedEMA(16, ndim=4, bidirectional=True).to(device).eval()
    x = torch.randn(64, 2, 16, device=device)
    with torch.no_grad():
        with torch.autocast(device.type, dtype=dtype):
            ema(x)
            kernel_under_autocast = ema.kernel(64)
        cached = ema(x)
        ema.clear_kernel_cache()
        fresh = ema(x)
    assert kernel_under_autocast.dtype == torch.float32
    assert torch.equal(cached, fresh)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_ema_with_half_parameters_computes_in_float32(bidirectional, dtype, device):
    torch.manual_seed(0)
    half, reference = rounded_copy(MultiDimensionalDampedEMA(16, ndim=4, bidirectional=bidirectional),
                                   dtype, device)
    x = torch.randn(50, 2, 16, device=device).to(dtype)
    with torch.no_grad():
        actual = half(x)
        expected = reference(x.float())
    assert actual.dtype == dtype
    assert torch.equal(actual, expected.to(dtype))
    if not bidirectional:
        with torch.no_grad():
            state = {}
            steps = torch.cat([half(x[t:t + 1], incremental_state=state) for t in range(50)])
        torch.testing.assert_close(steps.float(), expected.to(dtype).float(), rtol=0, atol=2 * 2.0 ** -8)


def _attention_inputs(device, batch=3, queries=6, keys=6, zdim=8):
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(batch, queries, zdim, generator=generator).to(device)
    k = torch.randn(batch, keys, zdim, generator=generator).to(device)
    mask = torch.zeros(batch, keys, dtype=torch.bool)
    mask[1, -2:] = True
    mask[2, :] = True  # a row with no visible key
    return q, k, mask.to(device)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("rel_pos_bias", ["simple", "rotary"])
@pytest.mark.parametrize("activation", ["softmax", "laplace", "relu2"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_weights_in_float32(causal, activation, rel_pos_bias, dtype, device):
    torch.manual_seed(0)
    layer = MovingAverageGatedAttention(16, 8, 5, 4, causal=causal, attention_activation=activation,
                                        rel_pos_bias=rel_pos_bias, max_positions=16).to(device)
    torch.nn.init.normal_(layer.rel_pos_bias.rel_pos_bias if rel_pos_bias == "simple"
                          else layer.rel_pos_bias.alpha, std=1.0)
    q, k, mask = _attention_inputs(device)
    positions = torch.arange(6, device=device)

    def weights(layer, q, k):  # the bias and the attention kernel, as the layer runs them
        return layer.attention.weights(q, k, layer.rel_pos_bias(positions, positions, 5), mask)

    with torch.no_grad():
        expected = weights(layer, q, k)
        with torch.autocast(device.type, dtype=dtype):
            under_autocast = weights(layer, q, k)
        half_layer, reference_layer = rounded_copy(layer, dtype, device)
        from_half = weights(half_layer, q.to(dtype), k.to(dtype))
        from_rounded = weights(reference_layer, q.to(dtype).float(), k.to(dtype).float())
    assert under_autocast.dtype == from_half.dtype == torch.float32
    torch.testing.assert_close(under_autocast, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(from_half, from_rounded)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("activation", ["softmax", "laplace", "relu2"])
def test_cross_attention_weights_in_float32(activation, dtype, device):
    torch.manual_seed(0)
    module = GatedCrossAttention(16, 8, attention_activation=activation, max_positions=16).to(device)
    q, k, mask = _attention_inputs(device, queries=4)

    def weights(module, q, k):  # queries from target position 2, as in a decoding step
        bias = module._position_bias(2, q.size(1), k.size(1), mask, q.device)
        return module.attention.weights(q, k, bias, mask)

    with torch.no_grad():
        expected = weights(module, q, k)
        with torch.autocast(device.type, dtype=dtype):
            under_autocast = weights(module, q, k)
        half_module, reference_module = rounded_copy(module, dtype, device)
        from_half = weights(half_module, q.to(dtype), k.to(dtype))
        from_rounded = weights(reference_module, q.to(dtype).float(), k.to(dtype).float())
    assert under_autocast.dtype == from_half.dtype == torch.float32
    torch.testing.assert_close(under_autocast, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(from_half, from_rounded)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_rotary_bias_in_float32_under_autocast_and_half(dtype, device):
    bias = build_relative_positional_bias("rotary", 8, 64).to(device)
    torch.nn.init.normal_(bias.alpha)
    torch.nn.init.normal_(bias.beta)
    positions = torch.arange(40, device=device)
    expected = bias(positions, positions)
    with torch.autocast(device.type, dtype=dtype):
        under_autocast = bias(positions, positions)
    half, reference = rounded_copy(bias, dtype, device)
    assert under_autocast.dtype == half(positions, positions).dtype == torch.float32
    torch.testing.assert_close(under_autocast, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(half(positions, positions), reference(positions, positions))


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("norm_type", [n for n in NORM_TYPES if n != "syncbatchnorm"])
def test_sequence_norms_in_float32(norm_type, dtype, device):
    torch.manual_seed(0)
    norm = SequenceNorm(norm_type, 16).to(device)
    for parameter in norm.parameters():
        torch.nn.init.normal_(parameter, mean=1.0, std=0.5)
    x = (3 + 4 * torch.randn(7, 2, 16)).to(device)
    mask = torch.zeros(2, 7, dtype=torch.bool, device=device)
    mask[1, -3:] = True
    half, reference = rounded_copy(norm, dtype, device)
    with torch.no_grad():
        actual = half(x.to(dtype), mask)
        expected = reference(x.to(dtype).float(), mask)
        with torch.autocast(device.type, dtype=dtype):
            under_autocast = reference(x, mask)
        plain = reference(x, mask)
    assert actual.dtype == dtype
    assert torch.equal(actual, expected.to(dtype))
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, plain, rtol=1e-6, atol=1e-6)
