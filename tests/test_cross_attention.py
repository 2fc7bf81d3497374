"""GatedCrossAttention against a naive per-sequence reference written here, padding
invariance, incremental decoding (with beam reordering) and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from incremental_helpers import reorder_all
from mega_fairseq.modules.gated_cross_attention import GatedCrossAttention

C, ZDIM = 8, 6
ATTENTION_ACTIVATIONS = ["softmax", "laplace", "relu2"]
REL_POS_BIASES = ["simple", "rotary"]


def make_module(attention_activation="softmax", rel_pos_bias="simple", prenorm=True,
                norm_type="layernorm", max_positions=16, seed=0, **kwargs):
    torch.manual_seed(seed)
    module = GatedCrossAttention(C, ZDIM, attention_activation=attention_activation,
                                 rel_pos_bias=rel_pos_bias, prenorm=prenorm, norm_type=norm_type,
                                 max_positions=max_positions, **kwargs).double().eval()
    with torch.no_grad():  # parameters far from their tiny init, so every term matters
        for name, p in module.named_parameters():
            if name.startswith("norm."):
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.3, 0.3)
            else:
                p.normal_(0.0, 0.5)
    return module


def padding_mask(lengths, max_len):
    return torch.arange(max_len)[None, :] >= torch.tensor(lengths)[:, None]


def reference_bias(module, i, j):
    """Relative position bias for target position i and source position j."""
    bias = module.rel_pos_bias
    if hasattr(bias, "rel_pos_bias"):
        return bias.rel_pos_bias[bias.max_positions - 1 + j - i]
    # rotary: pairs (x[k], x[k + half]) as complex numbers z; rot(z, p) = z * exp(i p theta_k)
    # and rot(a, i) . rot(b, j) = Re(sum_k conj(a_k) b_k exp(i (j - i) theta_k))
    half = module.zdim // 2
    theta = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    a = torch.complex(bias.alpha[:half], bias.alpha[half:])
    b = torch.complex(bias.beta[:half], bias.beta[half:])
    return torch.real(torch.sum(torch.conj(a) * b * torch.exp(1j * (j - i) * theta)))


@torch.no_grad()
def reference_forward(module, query, key, key_padding_mask=None):
    """Loops over sequences, target positions and source positions."""
    tgt_len, bsz, _ = query.shape
    src_len = key.size(0)
    norm = module.norm.norm
    act = module.attention_activation

    def layer_norm(t):
        return F.layer_norm(t, (C,), norm.weight, norm.bias, eps=1e-5)

    outputs, all_weights = [], []
    for b in range(bsz):
        x = query[:, b]
        proj = (layer_norm(x) if module.prenorm else x) @ module.q_proj.weight.t() + module.q_proj.bias
        u, r, q = torch.sigmoid(proj[:, :C]), F.silu(proj[:, C:2 * C]), proj[:, 2 * C:]
        k = key[:, b] @ module.k_proj.weight.t() + module.k_proj.bias
        v = F.silu(key[:, b] @ module.v_proj.weight.t() + module.v_proj.bias)
        real = [j for j in range(src_len) if key_padding_mask is None or not key_padding_mask[b, j]]
        weights = torch.zeros(tgt_len, src_len, dtype=query.dtype)
        for i in range(tgt_len):
            if act == "softmax":
                scores = torch.stack([q[i] @ k[j] / math.sqrt(ZDIM) + reference_bias(module, i, j) for j in real])
                weights[i, real] = torch.exp(scores) / torch.exp(scores).sum()
            else:
                for j in real:
                    s = q[i] @ k[j] / len(real) + reference_bias(module, i, j)
                    if act == "relu2":
                        weights[i, j] = max(s, 0.0) ** 2
                    else:
                        weights[i, j] = 0.5 * (1 + math.erf((s - math.sqrt(0.5)) / (math.sqrt(1 / (4 * math.pi)) * math.sqrt(2))))
        h = F.silu(((weights @ v) * r) @ module.h_proj.weight.t() + module.h_proj.bias)
        out = x + u * (h - x)
        if not module.prenorm:
            out = layer_norm(out)
        outputs.append(out)
        all_weights.append(weights)
    return torch.stack(outputs, dim=1), torch.stack(all_weights)


def random_inputs(tgt_len=5, src_len=7, lengths=(7, 4, 2), seed=1):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(tgt_len, len(lengths), C, generator=g, dtype=torch.float64)
    key = torch.randn(src_len, len(lengths), C, generator=g, dtype=torch.float64)
    return query, key, padding_mask(lengths, src_len)


@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("rel_pos_bias", REL_POS_BIASES)
@pytest.mark.parametrize("attention_activation", ATTENTION_ACTIVATIONS)
def test_matches_naive_reference(attention_activation, rel_pos_bias, prenorm):
    module = make_module(attention_activation, rel_pos_bias, prenorm)
    query, key, mask = random_inputs()
    out, weights = module(query, key, key_padding_mask=mask, need_weights=True)
    expected_out, expected_weights = reference_forward(module, query, key, mask)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(out, expected_out)
    assert weights.shape == (3, 5, 7)
    assert torch.all(weights[mask.unsqueeze(1).expand_as(weights)] == 0)
    if attention_activation == "softmax":
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5, dtype=torch.float64))


def test_no_mask_and_no_weights():
    module = make_module("laplace")
    query, key, _ = random_inputs()
    out, weights = module(query, key)
    assert weights is None
    torch.testing.assert_close(out, reference_forward(module, query, key)[0])


@pytest.mark.parametrize("attention_activation", ATTENTION_ACTIVATIONS)
@pytest.mark.parametrize("rel_pos_bias", REL_POS_BIASES)
def test_padded_batch_equals_each_sequence_alone(attention_activation, rel_pos_bias):
    module = make_module(attention_activation, rel_pos_bias)
    lengths = (7, 4, 2)
    query, key, mask = random_inputs(lengths=lengths)
    key = key.masked_fill(mask.t().unsqueeze(-1), 123.0)  # padding content must not matter
    out, weights = module(query, key, key_padding_mask=mask, need_weights=True)
    for b, n in enumerate(lengths):
        alone, alone_weights = module(query[:, b:b + 1], key[:n, b:b + 1], need_weights=True)
        torch.testing.assert_close(out[:, b:b + 1], alone)
        torch.testing.assert_close(weights[b:b + 1, :, :n], alone_weights)


def decode_in_blocks(module, query, key, mask, blocks, state, first_position=0):
    """``query`` (the target positions from ``first_position`` on) in blocks of ``blocks``."""
    outputs, start = [], 0
    for size in blocks:
        out, _ = module(query[start:start + size], key, key_padding_mask=mask, incremental_state=state,
                        start_position=first_position + start)
        outputs.append(out)
        start += size
    return torch.cat(outputs)


@pytest.mark.parametrize("rel_pos_bias", REL_POS_BIASES)
@pytest.mark.parametrize("attention_activation", ATTENTION_ACTIVATIONS)
@pytest.mark.parametrize("blocks", [[1] * 6, [2, 1, 3]])
def test_incremental_decoding_matches_full_forward(attention_activation, rel_pos_bias, blocks):
    module = make_module(attention_activation, rel_pos_bias)
    query, key, mask = random_inputs(tgt_len=6)
    full, _ = module(query, key, key_padding_mask=mask)
    state = {}
    steps = decode_in_blocks(module, query, key, mask, blocks, state)
    torch.testing.assert_close(steps, full)


@pytest.mark.parametrize("rel_pos_bias", REL_POS_BIASES)
@pytest.mark.parametrize("attention_activation", ATTENTION_ACTIVATIONS)
def test_reorder_then_continue_equals_decoding_reordered_inputs(attention_activation, rel_pos_bias):
    module = make_module(attention_activation, rel_pos_bias)
    query, key, mask = random_inputs(tgt_len=6)
    new_order = torch.tensor([2, 0, 2, 1])  # duplicates (beam expansion) and reordering
    expected, _ = module(query[:, new_order], key[:, new_order], key_padding_mask=mask[new_order])

    state = {}
    first = decode_in_blocks(module, query[:2], key, mask, [1, 1], state)
    torch.testing.assert_close(first, module(query[:2], key, key_padding_mask=mask)[0])
    reorder_all(module, state, new_order)
    # the cached encoder keys/values are used from now on: pass a different key to be sure
    rest = decode_in_blocks(module, query[2:, new_order], torch.zeros_like(key), None, [1, 3], state, first_position=2)
    torch.testing.assert_close(rest, expected[2:])

    prune = torch.tensor([3, 1])  # beam search also shrinks the batch
    reorder_all(module, state, prune)
    state_out, _ = module(query[:1, new_order[prune]], key, incremental_state=state, start_position=6)
    full_pruned, _ = module(torch.cat([query, query[:1]])[:, new_order[prune]], key[:, new_order[prune]],
                            key_padding_mask=mask[new_order[prune]])
    torch.testing.assert_close(state_out, full_pruned[6:])


def test_incremental_positions_checked_against_max_positions():
    module = make_module("softmax", "simple", max_positions=4)
    query, key, mask = random_inputs(tgt_len=5, src_len=4, lengths=(4, 3, 2))
    state = {}
    decode_in_blocks(module, query, key, mask, [2, 2], state)
    with pytest.raises(ValueError, match="max_positions=4"):
        module(query[4:5], key, key_padding_mask=mask, incremental_state=state, start_position=4)
    with pytest.raises(ValueError, match=r"input of length 7 exceeds max_positions=4"):
        module(query[:2], torch.randn(7, 3, C, dtype=torch.float64))
    rotary = make_module("softmax", "rotary", max_positions=4)
    assert rotary(query, torch.randn(7, 3, C, dtype=torch.float64))[0].shape == (5, 3, C)


@pytest.mark.parametrize("attention_activation", ATTENTION_ACTIVATIONS)
def test_gradcheck(attention_activation):
    module = make_module(attention_activation, "rotary" if attention_activation == "laplace" else "simple",
                         max_positions=4, seed=3)
    query, key, mask = random_inputs(tgt_len=3, src_len=4, lengths=(4, 2), seed=2)
    names = ["q_proj.weight", "k_proj.weight", "v_proj.weight", "rel_pos_bias." + next(
        n for n, _ in module.rel_pos_bias.named_parameters())]
    params = dict(module.named_parameters())

    def run(query, key, *tensors):
        overrides = dict(params, **dict(zip(names, tensors)))
        return torch.func.functional_call(module, overrides, (query, key), {"key_padding_mask": mask})[0]

    inputs = [query.requires_grad_(), key.requires_grad_()] + [params[n].detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(run, inputs, fast_mode=True)


def test_post_norm_with_rmsnorm_normalises_output():
    module = make_module("softmax", prenorm=False, norm_type="rmsnorm")
    with torch.no_grad():
        module.norm.norm.weight.fill_(1.0)
    query, key, mask = random_inputs()
    out, _ = module(query, key, key_padding_mask=mask)
    torch.testing.assert_close(out.pow(2).mean(-1).sqrt(), torch.ones(5, 3, dtype=torch.float64), atol=1e-4, rtol=0)


def test_init_and_options():
    torch.manual_seed(0)
    module = GatedCrossAttention(64, 32)
    for linear in (module.q_proj, module.k_proj, module.v_proj, module.h_proj):
        # Xavier-uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))
        bound = (6.0 / (linear.in_features + linear.out_features)) ** 0.5
        assert linear.weight.abs().max().item() <= bound
        assert abs(linear.weight.std().item() - bound / 3 ** 0.5) < 0.1 * bound
        assert torch.count_nonzero(linear.bias) == 0
    assert module.q_proj.out_features == 2 * 64 + 32
    with pytest.raises(ValueError, match=r"attention_activation must be one of \['softmax', 'laplace', 'relu2'\], got 'sigmoid'"):
        GatedCrossAttention(8, 4, attention_activation="sigmoid")
    with pytest.raises(ValueError, match="rel_pos_bias must be one of"):
        GatedCrossAttention(8, 4, rel_pos_bias="none")


@pytest.mark.parametrize("attention_activation", ATTENTION_ACTIVATIONS)
def test_bfloat16_close_to_float32(attention_activation):
    module = make_module(attention_activation, "rotary").float()
    query, key, mask = (t.float() if t.is_floating_point() else t for t in random_inputs())
    expected, _ = module(query, key, key_padding_mask=mask)
    low, _ = module.to(torch.bfloat16)(query.bfloat16(), key.bfloat16(), key_padding_mask=mask)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), expected, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("norm_type", ["batchnorm", "syncbatchnorm"])
def test_padded_target_positions_stay_out_of_batch_norm_statistics(norm_type, prenorm):
    """In training mode a batch norm's statistics must come from real target positions only:
    what sits at padded target positions cannot change the outputs at real ones (without
    the query padding mask, padding moved real outputs by about 6e-4)."""
    module = make_module(norm_type=norm_type, prenorm=prenorm).train()
    query, key, source_mask = random_inputs()
    target_mask = padding_mask((5, 3, 1), 5)
    other = query.masked_fill(target_mask.t().unsqueeze(-1), 50.0)
    out, _ = module(query, key, key_padding_mask=source_mask, query_padding_mask=target_mask)
    out_other, _ = module(other, key, key_padding_mask=source_mask, query_padding_mask=target_mask)
    real = ~target_mask.t()
    torch.testing.assert_close(out_other[real], out[real])
    # and the padded values do matter without the mask, so the check above can fail
    unmasked, _ = module(other, key, key_padding_mask=source_mask)
    assert (unmasked[real] - out[real]).abs().max() > 1e-3


@pytest.mark.parametrize("attention_activation", ATTENTION_ACTIVATIONS)
def test_source_of_only_padding_attends_to_nothing(attention_activation):
    """A batch row whose source is all padding gets zero attention weights and finite
    outputs (softmax gave NaN there); the other rows are unchanged."""
    module = make_module(attention_activation)
    query, key, _ = random_inputs(lengths=(7, 4, 2))
    mask = padding_mask((7, 0, 2), 7)
    out, weights = module(query, key, key_padding_mask=mask, need_weights=True)
    assert torch.isfinite(out).all()
    assert torch.all(weights[1] == 0)
    for b, n in ((0, 7), (2, 2)):
        alone, _ = module(query[:, b:b + 1], key[:n, b:b + 1])
        torch.testing.assert_close(out[:, b:b + 1], alone)
    # the output of an empty row is what attending to nothing gives: the gated residual
    # of h = act(W_h 0 + b_h)
    x = module.norm(query[:, 1:2]) if module.prenorm else query[:, 1:2]
    u = torch.sigmoid(module.q_proj(x)[..., :C])
    h = module.activation(module.h_proj(torch.zeros_like(x)))
    torch.testing.assert_close(out[:, 1:2], query[:, 1:2] + u * (h - query[:, 1:2]))
