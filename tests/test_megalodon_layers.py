"""Megalodon's layers against computations written out here: the complex EMA against its
explicit complex recurrence, the timestep norm against per-position statistics of the
positions seen so far, normalized attention without the update gate against the
sublayer's equations, the two-hop residual and the SwiGLU FFN."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from incremental_helpers import reorder_all
from mega_fairseq.modules.complex_ema import ComplexMultiDimensionalDampedEMA
from mega_fairseq.modules.gated_attention import MovingAverageGatedAttention
from mega_fairseq.modules.layer_settings import MegaLayerSettings
from mega_fairseq.modules.mega_layer import MegaLayer
from mega_fairseq.modules.normalized_ffn import NormalizedFeedForwardNetwork
from mega_fairseq.modules.timestep_norm import TimestepNorm

D, N, T, B = 6, 4, 23, 3


def randomised_cema(bidirectional=False, truncation=None, seed=0):
    torch.manual_seed(seed)
    module = ComplexMultiDimensionalDampedEMA(D, ndim=N, bidirectional=bidirectional,
                                              truncation=truncation).double().eval()
    with torch.no_grad():
        module.gamma[..., 1].normal_()  # a complex output weight, not the real init
        module.theta.normal_()
    return module


def explicit_decay(module, rows):
    """(q, input weight, output weight) from the parameters, by the paper's definitions."""
    p = torch.sigmoid(module.delta[rows, :, 0])
    magnitude = 1 - p * torch.sigmoid(module.alpha[rows, :, 0])
    n = torch.arange(1, N + 1, dtype=torch.float64)
    phase = 2 * math.pi * n / N * torch.sigmoid(module.theta[rows, :, 0])
    q = magnitude * torch.exp(1j * phase)
    eta = torch.complex(module.gamma[rows, :, 0], module.gamma[rows, :, 1]) / math.sqrt(N)
    return q, p * module.beta[rows, :, 0], eta


def explicit_cema(module, x, truncation=None):
    """silu(y + omega x) with y from the complex recurrence, step by step (a window sum of
    the explicit kernel with truncation); a bidirectional module adds the recurrence over
    the reversed sequence with its second parameter half."""

    def one_direction(rows, inputs):
        q, input_weight, eta = explicit_decay(module, rows)
        if truncation is None:
            h = torch.zeros(inputs.size(1), D, N, dtype=torch.complex128)
            outputs = []
            for t in range(inputs.size(0)):
                h = q * h + input_weight * inputs[t].unsqueeze(-1)
                outputs.append((eta * h).sum(-1).real)
            return torch.stack(outputs)
        kernel = torch.stack([(eta * input_weight * q ** j).sum(-1).real for j in range(truncation)])
        return torch.stack([
            sum(kernel[j] * inputs[t - j] for j in range(min(truncation, t + 1)))
            for t in range(inputs.size(0))
        ])

    y = one_direction(slice(0, D), x)
    if module.bidirectional:
        y = y + one_direction(slice(D, 2 * D), x.flip(0)).flip(0)
    return F.silu(y + module.omega * x)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("truncation", [None, 5])
def test_cema_fft_path_equals_the_complex_recurrence(bidirectional, truncation):
    module = randomised_cema(bidirectional, truncation)
    x = torch.randn(T, B, D, dtype=torch.float64)
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[1, -4:] = True
    with torch.no_grad():
        expected = explicit_cema(module, x.masked_fill(padding.t().unsqueeze(-1), 0.0), truncation)
        actual = module(x, padding)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_cema_phase_matters():
    """The same magnitudes without the phases (a real EMA) give another output: the
    comparison above sees the complex part."""
    module = randomised_cema()
    x = torch.randn(T, B, D, dtype=torch.float64)
    with torch.no_grad():
        complex_output = module(x)
        module.theta.fill_(-60.0)  # sigmoid -> 0: no rotation
        real_output = module(x)
    assert (complex_output - real_output).abs().max() > 1e-2


@pytest.mark.parametrize("truncation", [None, 4])
def test_cema_incremental_steps_and_blocks_equal_the_full_pass(truncation):
    module = randomised_cema(truncation=truncation)
    x = torch.randn(T, B, D, dtype=torch.float64)
    with torch.no_grad():
        full = module(x)
        state = {}
        pieces = [module(x[t:t + 1], incremental_state=state) for t in range(5)]
        pieces += [module(x[5:12], incremental_state=state), module(x[12:13], incremental_state=state),
                   module(x[13:], incremental_state=state)]
    torch.testing.assert_close(torch.cat(pieces), full, rtol=0, atol=1e-12)
    carried = state[next(iter(state))]["prev_state"]
    assert carried.is_complex() and carried.shape == (B, D, N)


def test_cema_state_reorders_like_the_batch():
    module = randomised_cema()
    x = torch.randn(T, B, D, dtype=torch.float64)
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        state = {}
        module(x[:10], incremental_state=state)
        reorder_all(module, state, order)
        continued = module(x[10:, order], incremental_state=state)
        expected = module(x[:, order])[10:]
    torch.testing.assert_close(continued, expected, rtol=0, atol=1e-12)


def test_cema_gradients_match_finite_differences():
    torch.manual_seed(1)
    module = ComplexMultiDimensionalDampedEMA(3, ndim=2, bidirectional=True).double()
    with torch.no_grad():
        module.gamma[..., 1].normal_()
    names = [name for name, _ in module.named_parameters()]
    x = torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)

    def run(inputs, *parameters):
        return functional_call(module, dict(zip(names, parameters)), (inputs,))

    parameters = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    assert torch.autograd.gradcheck(run, (x, *parameters), eps=1e-6, atol=1e-7)


def test_cema_in_float32_matches_float64():
    module = randomised_cema()
    x = torch.randn(64, B, D, dtype=torch.float64)
    with torch.no_grad():
        reference = module(x)
        single = module.float()(x.float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), reference, rtol=0, atol=2e-5)


def test_cema_in_half_precision_computes_in_float32():
    module = randomised_cema().float()
    x = torch.randn(16, 2, D)
    with torch.no_grad():
        half = ComplexMultiDimensionalDampedEMA(D, ndim=N).half()
        half.load_state_dict({k: v.half() for k, v in module.state_dict().items()})
        rounded = ComplexMultiDimensionalDampedEMA(D, ndim=N)
        rounded.load_state_dict({k: v.half().float() for k, v in module.state_dict().items()})
        actual = half(x.half())
        expected = rounded(x.half().float())
    assert actual.dtype == torch.float16
    assert torch.equal(actual, expected.half())


# ------------------------------------------------------------------ timestep norm
def explicit_timestep_norm(norm, x, padding):
    """Each real position normalised by the mean and variance of its group over the real
    positions up to it; padded positions 0."""
    length, batch, channels = x.shape
    groups = norm.num_groups
    out = torch.zeros_like(x)
    for b in range(batch):
        seen = []
        for t in range(length):
            if padding[b, t]:
                continue
            seen.append(x[t, b].view(groups, -1))
            history = torch.stack(seen)  # n x G x d_g
            mean = history.mean(dim=(0, 2))
            variance = history.var(dim=(0, 2), unbiased=False)
            normalised = (x[t, b].view(groups, -1) - mean[:, None]) / torch.sqrt(variance[:, None] + norm.eps)
            out[t, b] = normalised.reshape(channels) * norm.weight + norm.bias
    return out


def randomised_timestep_norm(groups=2, channels=8):
    torch.manual_seed(0)
    norm = TimestepNorm(channels, groups).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


def padded_inputs(length=11, channels=8):
    x = 5 + 3 * torch.randn(length, 3, channels, dtype=torch.float64)
    padding = torch.zeros(3, length, dtype=torch.bool)
    padding[0, 4] = True  # inside the sequence
    padding[1, -5:] = True  # right padding
    padding[2, :3] = True  # left padding
    return x, padding


def test_timestep_norm_equals_cumulative_statistics_with_padding():
    norm = randomised_timestep_norm()
    x, padding = padded_inputs()
    with torch.no_grad():
        actual = norm(x, padding)
    torch.testing.assert_close(actual, explicit_timestep_norm(norm, x, padding), rtol=0, atol=1e-12)


def test_timestep_norm_carries_its_statistics_across_blocks():
    norm = randomised_timestep_norm()
    x, padding = padded_inputs()
    with torch.no_grad():
        full = norm(x, padding)
        state = {}
        pieces = [norm(x[a:b], padding[:, a:b], incremental_state=state)
                  for a, b in ((0, 1), (1, 4), (4, 5), (5, 11))]
    torch.testing.assert_close(torch.cat(pieces), full, rtol=0, atol=1e-12)
    order = torch.tensor([1, 1, 0])
    with torch.no_grad():
        state = {}
        norm(x[:6], padding[:, :6], incremental_state=state)
        reorder_all(norm, state, order)
        continued = norm(x[6:, order], padding[order, 6:], incremental_state=state)
        expected = norm(x[:, order], padding[order])[6:]
    torch.testing.assert_close(continued, expected, rtol=0, atol=1e-12)


def test_timestep_norm_is_accurate_far_from_zero_in_float32():
    """Statistics of values around 1000 over 4096 positions stay accurate in float32 (the
    sums run over centred values)."""
    norm = randomised_timestep_norm()
    x = 1000 + torch.randn(4096, 2, 8, dtype=torch.float64)
    with torch.no_grad():
        reference = norm(x)
        single = norm.float()(x.float())
    torch.testing.assert_close(single.double(), reference, rtol=0, atol=1e-3)


def test_timestep_norm_gradients_match_finite_differences():
    norm = randomised_timestep_norm(groups=2, channels=4)
    x = torch.randn(6, 2, 4, dtype=torch.float64, requires_grad=True)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 2] = True
    assert torch.autograd.gradcheck(lambda inputs, w, b: functional_call(norm, {"weight": w, "bias": b},
                                                                         (inputs, padding)),
                                    (x, norm.weight.detach().clone().requires_grad_(True),
                                     norm.bias.detach().clone().requires_grad_(True)))


def test_timestep_norm_groups_must_divide_the_channels():
    with pytest.raises(ValueError, match="num_groups must be a positive divisor of embed_dim=8, got 3"):
        TimestepNorm(8, 3)


# ------------------------------------------------------------ normalized attention
def megalodon_settings(**changes):
    options = dict(embed_dim=8, zdim=4, hdim=6, ndim=2, ffn_hidden_dim=10, causal=True,
                   ema_type="cema", norm_type="timestepnorm", timestep_norm_groups=2,
                   normalized_attention=True, update_gate=False, two_hop_residual=True,
                   ffn_type="swiglu", max_positions=32)
    options.update(changes)
    return MegaLayerSettings(**options)


def randomised(module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
            elif "ema" not in name:
                parameter.normal_(0.0, 0.5)
    return module.double().eval()


def test_normalized_attention_without_update_gate_equals_its_equations():
    """out = x + silu(hx + W_h((A v) * r)) with v = silu(W_v x'), x' the timestep norm of x,
    [z, r, hx] = W_mx CEMA(x') (r = silu), q, k = z / |z| * gamma + beta and A the causal
    softmax of the unscaled scores q k^T plus the simple relative bias."""
    layer = randomised(MovingAverageGatedAttention.from_settings(megalodon_settings()))
    x = torch.randn(9, 2, 8, dtype=torch.float64)
    with torch.no_grad():
        actual, _ = layer(x)
        normalised = layer.norm(x)
        v = F.silu(normalised @ layer.v_proj.weight.t() + layer.v_proj.bias)
        projected = layer.ema(normalised) @ layer.mx_proj.weight.t() + layer.mx_proj.bias
        z, r, hx = projected.split([4, 6, 8], dim=-1)
        z = z / z.norm(dim=-1, keepdim=True)
        q, k = z * layer.gamma[0] + layer.beta[0], z * layer.gamma[1] + layer.beta[1]
        positions = torch.arange(9)
        table = layer.rel_pos_bias.rel_pos_bias
        bias = table[positions[None, :] - positions[:, None] + layer.max_positions - 1]
        scores = torch.einsum("ibz,jbz->bij", q, k) + bias
        scores = scores.masked_fill(positions[None, :] > positions[:, None], float("-inf"))
        attention = torch.einsum("bij,jbh->ibh", scores.softmax(-1), v)
        h = F.silu(hx + (attention * F.silu(r)) @ layer.h_proj.weight.t() + layer.h_proj.bias)
        expected = x + h
    assert layer.mx_proj.out_features == 4 + 6 + 8  # no update gate rows
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_normalized_attention_ignores_the_scale_of_z():
    """Scaling z's projection rows changes nothing with normalized attention, and changes
    the output of Mega's attention."""
    for normalized, should_change in ((True, False), (False, True)):
        layer = randomised(MovingAverageGatedAttention.from_settings(
            megalodon_settings(normalized_attention=normalized)))
        x = torch.randn(9, 2, 8, dtype=torch.float64)
        with torch.no_grad():
            before, _ = layer(x)
            layer.mx_proj.weight[:4] *= 3.7
            layer.mx_proj.bias[:4] *= 3.7
            after, _ = layer(x)
        changed = (after - before).abs().max() > 1e-6
        assert changed == should_change, normalized


def test_two_hop_residual_adds_the_ffn_to_the_block_input():
    block = randomised(MegaLayer(megalodon_settings()))
    x = torch.randn(9, 2, 8, dtype=torch.float64)
    with torch.no_grad():
        actual, _ = block(x)
        attended, _ = block.self_attn(x)
        ffn = block.ffn
        normalised = ffn.norm(attended)
        branch = (F.silu(normalised @ ffn.fc1.weight.t()) * (normalised @ ffn.fc3.weight.t())) @ ffn.fc2.weight.t()
        expected = x + branch
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)
    assert ffn.fc1.bias is None and ffn.fc2.bias is None
    assert ffn.norm.norm_type == "layernorm"  # the position-wise FFN is layer-normalised


def test_two_hop_residual_needs_pre_norm():
    with pytest.raises(ValueError, match="two_hop_residual needs pre-norm blocks"):
        megalodon_settings(prenorm=False)
    with pytest.raises(ValueError, match="two-hop residual"):
        NormalizedFeedForwardNetwork(8, 10, prenorm=False)(torch.zeros(2, 1, 8), residual=torch.zeros(2, 1, 8))


def test_megalodon_block_decodes_incrementally_exactly():
    block = randomised(MegaLayer(megalodon_settings(chunk_size=4, rel_pos_bias="rotary")))
    x = torch.randn(13, 2, 8, dtype=torch.float64)
    with torch.no_grad():
        full, _ = block(x)
        state = {}
        pieces = [block(x[t:t + 1], incremental_state=state)[0] for t in range(6)]
        pieces.append(block(x[6:], incremental_state=state)[0])
    torch.testing.assert_close(torch.cat(pieces), full, rtol=0, atol=1e-12)
