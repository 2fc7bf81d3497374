"""Relative positional biases against hand-built matrices and explicit 2x2 rotations."""

import math

import pytest
import torch

from mega_fairseq.modules.relative_position import (
    RotaryRelativePositionalBias,
    SimpleRelativePositionalBias,
    build_relative_positional_bias,
)


def test_simple_bias_matches_hand_built_matrix():
    max_positions = 6
    bias = SimpleRelativePositionalBias(max_positions)
    assert bias.rel_pos_bias.shape == (2 * max_positions - 1,)
    with torch.no_grad():
        bias.rel_pos_bias.copy_(torch.arange(2 * max_positions - 1, dtype=torch.float))
    query_positions, key_positions = torch.tensor([2, 3, 5]), torch.arange(6)
    expected = torch.empty(3, 6)
    for a, i in enumerate(query_positions.tolist()):
        for j in key_positions.tolist():
            # offset j - i stored at index max_positions - 1 + (j - i)
            expected[a, j] = max_positions - 1 + j - i
    torch.testing.assert_close(bias(query_positions, key_positions), expected)


def test_simple_bias_raises_past_max_positions():
    bias = SimpleRelativePositionalBias(4)
    bias(torch.arange(4), torch.arange(4))
    with pytest.raises(ValueError, match=r"input of length 5 exceeds max_positions=4 .*rotary"):
        bias(torch.arange(5), torch.arange(3))
    with pytest.raises(ValueError, match="max_positions=4"):
        bias(torch.tensor([0]), torch.arange(7))


def rotate_explicitly(vector, position):
    """Rotate each pair (x1[k], x2[k]) by the angle position * 10000^(-k / half)."""
    half = vector.numel() // 2
    out = torch.empty_like(vector)
    for k in range(half):
        theta = position * 10000.0 ** (-k / half)
        rotation = torch.tensor([[math.cos(theta), -math.sin(theta)],
                                 [math.sin(theta), math.cos(theta)]], dtype=vector.dtype)
        pair = rotation @ torch.stack([vector[k], vector[k + half]])
        out[k], out[k + half] = pair[0], pair[1]
    return out


def test_rotary_bias_matches_explicit_rotations():
    torch.manual_seed(0)
    zdim = 8
    bias = RotaryRelativePositionalBias(zdim, max_positions=16).double()
    with torch.no_grad():
        bias.alpha.normal_()
        bias.beta.normal_()
    query_positions, key_positions = torch.tensor([0, 3, 9]), torch.tensor([0, 1, 5, 12])
    expected = torch.empty(3, 4, dtype=torch.float64)
    for a, i in enumerate(query_positions.tolist()):
        for b, j in enumerate(key_positions.tolist()):
            expected[a, b] = rotate_explicitly(bias.alpha.detach(), i) @ rotate_explicitly(bias.beta.detach(), j)
    torch.testing.assert_close(bias(query_positions, key_positions), expected)


def test_rotary_bias_depends_only_on_offset_and_extrapolates():
    torch.manual_seed(0)
    bias = RotaryRelativePositionalBias(16, max_positions=8).double()
    with torch.no_grad():
        bias.alpha.normal_()
        bias.beta.normal_()
    near = bias(torch.arange(0, 6), torch.arange(0, 10))
    far = bias(torch.arange(100, 106), torch.arange(100, 110))  # well past max_positions
    torch.testing.assert_close(near, far)
    assert far.shape == (6, 10)


def test_rotary_needs_even_zdim_and_builder_checks_kind():
    with pytest.raises(ValueError, match="even"):
        RotaryRelativePositionalBias(7, 8)
    assert isinstance(build_relative_positional_bias("simple", 8, 4), SimpleRelativePositionalBias)
    assert isinstance(build_relative_positional_bias("rotary", 8, 4), RotaryRelativePositionalBias)
    with pytest.raises(ValueError, match=r"rel_pos_bias must be one of \['simple', 'rotary'\], got 'alibi'"):
        build_relative_positional_bias("alibi", 8, 4)


def test_initialisation_scale():
    torch.manual_seed(0)
    bias = SimpleRelativePositionalBias(512)
    assert abs(bias.rel_pos_bias.std().item() - 0.02) < 0.005


@pytest.mark.parametrize("kind", ["simple", "rotary"])
def test_per_sequence_key_positions_equal_one_call_per_sequence(kind):
    """B x Lk key positions (used for left-padded cross-attention sources) give B x Lq x Lk,
    row b equal to the bias for key positions[b] alone."""
    torch.manual_seed(0)
    bias = build_relative_positional_bias(kind, 8, 16).double()
    query_positions = torch.arange(2, 7)
    key_positions = torch.stack([torch.arange(9), (torch.arange(9) - 3).clamp(min=0), torch.arange(9).flip(0)])
    batched = bias(query_positions, key_positions)
    assert batched.shape == (3, 5, 9)
    for row, positions in enumerate(key_positions):
        torch.testing.assert_close(batched[row], bias(query_positions, positions), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["simple", "rotary"])
@pytest.mark.parametrize("length", [1, 2, 7, 16])
def test_window_bias_equals_bias_of_all_positions(kind, length):
    """The whole-window fast path (a flipped sliding view of the table for "simple")
    against the gathered bias, in value and gradient."""
    torch.manual_seed(0)
    bias = build_relative_positional_bias(kind, 8, 16).double()
    positions = torch.arange(length)
    upstream = torch.randn(length, length, dtype=torch.float64)
    results = []
    for compute in (lambda: bias.window_bias(length), lambda: bias(positions, positions)):
        bias.zero_grad(set_to_none=True)
        value = compute()
        (value * upstream).sum().backward()
        results.append((value.detach(), [p.grad.clone() for p in bias.parameters()]))
    (fast, fast_grads), (gathered, gathered_grads) = results
    torch.testing.assert_close(fast, gathered, rtol=0, atol=1e-14)
    for fast_grad, gathered_grad in zip(fast_grads, gathered_grads):
        torch.testing.assert_close(fast_grad, gathered_grad, rtol=1e-12, atol=1e-12)


def test_window_bias_longer_than_the_table_raises():
    bias = build_relative_positional_bias("simple", 8, 16)
    with pytest.raises(ValueError, match="exceeds max_positions=16"):
        bias.window_bias(17)
