"""MovingAverageGatedAttention: a naive reference from the formulas, chunking as a
block-diagonal mask, incremental decoding == full forward, padding invariance, gradients,
beam reordering and option checks."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from incremental_helpers import reorder_all
from mega_fairseq.modules.gated_attention import MovingAverageGatedAttention

EMBED, ZDIM, HDIM, NDIM = 8, 4, 6, 3
ATTENTION_ACTIVATIONS = ("softmax", "laplace", "relu2")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The tensors here are tiny: thread-pool hand-offs cost more than they save, and on a
    busy machine they make each small op wait for a time slice (gradcheck 30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_layer(seed=0, embed_dim=EMBED, zdim=ZDIM, hdim=HDIM, ndim=NDIM, eval_mode=True, **options):
    """A float64 layer whose own parameters are redrawn larger than their init, so that
    attention weights are far from uniform and the gates far from 1/2. The EMA keeps its
    own initialisation."""
    torch.manual_seed(seed)
    options.setdefault("max_positions", 32)
    layer = MovingAverageGatedAttention(embed_dim, zdim, hdim, ndim, **options)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            if not name.startswith("ema."):
                parameter.normal_(0.0, 0.5)
    layer = layer.double()
    return layer.eval() if eval_mode else layer.train()


def random_input(length, batch, embed_dim=EMBED, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(length, batch, embed_dim, generator=generator, dtype=torch.float64)


def assert_close_on_real(actual, expected, padding_mask, **tolerances):
    """Compare T x B x C outputs at the positions padding_mask (B x T) marks as real."""
    real = ~padding_mask.transpose(0, 1)
    torch.testing.assert_close(actual[real], expected[real], **tolerances)


# ----------------------------------------------------------------- reference
def laplace_reference(s):
    mu, sigma = math.sqrt(0.5), math.sqrt(1.0 / (4.0 * math.pi))
    return 0.5 * (1.0 + torch.erf((s - mu) / (sigma * math.sqrt(2.0))))


def block_diagonal_mask(length, chunk_size, causal):
    """allowed[i, j]: query i may attend key j (same chunk, and j <= i when causal)."""
    window = chunk_size if chunk_size > 0 else length
    chunk_of = torch.arange(length) // window
    allowed = chunk_of.unsqueeze(1) == chunk_of.unsqueeze(0)
    if causal:
        allowed &= torch.ones(length, length, dtype=torch.bool).tril()
    return allowed


def reference_layer(layer, x, padding_mask, allowed, bias_positions, activation=F.silu):
    """The whole layer from the formulas, one query at a time.

    allowed: T x T bool (query i may see key j); bias_positions: T, the position of each
    token inside its attention window. Uses the layer's weights, norm, EMA and relative
    bias table; everything else is recomputed here.
    """
    length, batch, embed_dim = x.shape
    zdim, hdim = layer.zdim, layer.hdim
    if padding_mask is None:
        padding_mask = torch.zeros(batch, length, dtype=torch.bool)
    residual = x
    if layer.prenorm:
        x = layer.norm(x, padding_mask)
    v = activation(x @ layer.v_proj.weight.T + layer.v_proj.bias)
    mx = layer.ema(x, padding_mask)
    base = mx @ layer.mx_proj.weight.T + layer.mx_proj.bias
    u = torch.sigmoid(base[..., :embed_dim])
    zr = F.silu(base[..., embed_dim: embed_dim + zdim + hdim])
    hx = base[..., embed_dim + zdim + hdim:]
    z, r = zr[..., :zdim], zr[..., zdim:]
    q = z * layer.gamma[0] + layer.beta[0]
    k = z * layer.gamma[1] + layer.beta[1]

    attn = torch.zeros(length, batch, hdim, dtype=x.dtype)
    for b in range(batch):
        for i in range(length):
            if padding_mask[b, i]:
                continue
            keys = [j for j in range(length) if allowed[i, j] and not padding_mask[b, j]]
            bias = layer.rel_pos_bias(bias_positions[i: i + 1], bias_positions[keys])[0]
            dots = k[keys, b] @ q[i, b]
            if layer.attention_activation == "softmax":
                weights = torch.softmax(dots / math.sqrt(zdim) + bias, dim=0)
            else:
                scores = dots / len(keys) + bias
                if layer.attention_activation == "laplace":
                    weights = laplace_reference(scores)
                else:
                    weights = torch.relu(scores) ** 2
            attn[i, b] = weights @ v[keys, b]
    h = activation(hx + (attn * r) @ layer.h_proj.weight.T + layer.h_proj.bias)
    out = residual + u * (h - residual)
    if not layer.prenorm:
        out = layer.norm(out, padding_mask)
    return out


def padded_mask(batch, length, left=(), right=()):
    """B x T mask with (row, count) left and right padding."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row, count in left:
        mask[row, :count] = True
    for row, count in right:
        mask[row, length - count:] = True
    return mask


# ------------------------------------------------------------- naive formulas
REFERENCE_CONFIGS = [
    dict(attention_activation="softmax", causal=False, chunk_size=-1),
    dict(attention_activation="laplace", causal=False, chunk_size=-1, rel_pos_bias="rotary"),
    dict(attention_activation="relu2", causal=True, chunk_size=-1),
    dict(attention_activation="softmax", causal=True, chunk_size=-1, prenorm=False, norm_type="rmsnorm"),
    dict(attention_activation="laplace", causal=True, chunk_size=-1, bidirectional=False),
    dict(attention_activation="softmax", causal=False, chunk_size=-1, bidirectional=False, truncation=3),
]


@pytest.mark.parametrize("config", REFERENCE_CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_layer_matches_naive_reference(config):
    layer = build_layer(**config)
    length, batch = 7, 3
    x = random_input(length, batch)
    mask = padded_mask(batch, length, left=[(1, 2)], right=[(2, 3)])
    with torch.no_grad():
        out, _ = layer(x, mask)
        expected = reference_layer(layer, x, mask, block_diagonal_mask(length, -1, layer.causal),
                                   torch.arange(length))
    assert torch.isfinite(out).all()
    assert_close_on_real(out, expected, mask)


# ------------------------------------------------------------------- chunking
@pytest.mark.parametrize("activation", ATTENTION_ACTIVATIONS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [10, 8, 3])  # not a multiple, a multiple, shorter than a chunk
def test_chunked_attention_is_block_diagonal_attention(activation, causal, length):
    chunk = 4
    layer = build_layer(attention_activation=activation, causal=causal, chunk_size=chunk,
                        rel_pos_bias="rotary" if length == 10 else "simple")
    batch = 2
    x = random_input(length, batch)
    mask = padded_mask(batch, length, right=[(1, min(2, length - 1))])
    with torch.no_grad():
        out, _ = layer(x, mask)
        expected = reference_layer(layer, x, mask, block_diagonal_mask(length, chunk, causal),
                                   torch.arange(length) % chunk)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert_close_on_real(out, expected, mask)


def test_chunks_do_not_see_each_other():
    layer = build_layer(chunk_size=4, bidirectional=False)  # causal EMA, chunked full attention
    x = random_input(8, 1)
    changed = x.clone()
    changed[6] += random_input(1, changed.size(1), seed=9)[0]  # not a constant: layer norm would cancel it
    with torch.no_grad():
        before, _ = layer(x)
        after, _ = layer(changed)
    # a unidirectional EMA and chunked attention: the first chunk cannot see token 6
    torch.testing.assert_close(after[:4], before[:4])
    assert not torch.allclose(after[4:6], before[4:6])


# ------------------------------------------------------- incremental decoding
SCHEDULES = {
    "steps": [1] * 11,
    "blocks": [3, 1, 4, 3],
    "across_chunks": [3, 2, 4, 2],
    "long_block": [1, 9, 1],
}


def decode(layer, x, mask, schedule, state=None, need_weights=False):
    """Feed x (T x B x C) in blocks of the given sizes; padding mask per block, None when
    the block has no padding (as the decoder does)."""
    state = {} if state is None else state
    outputs, weights, start = [], [], 0
    for size in schedule:
        block_mask = mask[:, start: start + size]
        out, w = layer(x[start: start + size], None if not block_mask.any() else block_mask,
                       incremental_state=state, need_weights=need_weights)
        outputs.append(out)
        weights.append(w)
        start += size
    assert start == x.size(0)
    return torch.cat(outputs), weights, state


@pytest.mark.parametrize("activation", ATTENTION_ACTIVATIONS)
@pytest.mark.parametrize("bias", ["simple", "rotary"])
@pytest.mark.parametrize("chunk", [-1, 4])
def test_incremental_decoding_matches_full_forward(activation, bias, chunk):
    layer = build_layer(causal=True, attention_activation=activation, rel_pos_bias=bias, chunk_size=chunk)
    length, batch = 11, 3
    x = random_input(length, batch)
    mask = padded_mask(batch, length, left=[(2, 2)], right=[(1, 3)])
    with torch.no_grad():
        full, _ = layer(x, mask)
        for name, schedule in SCHEDULES.items():
            decoded, _, _ = decode(layer, x, mask, schedule)
            assert torch.isfinite(decoded).all(), name
            assert_close_on_real(decoded, full, mask, msg=lambda m: f"{name}: {m}")


def test_incremental_state_resets_at_chunk_boundaries():
    layer = build_layer(causal=True, chunk_size=4)
    x = random_input(10, 2)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    with torch.no_grad():
        for decoded_tokens, schedule in ((3, [3]), (4, [3, 1]), (9, [3, 6]), (10, [10])):
            _, _, state = decode(layer, x[:decoded_tokens], mask[:, :decoded_tokens], schedule)
            (cache,) = [v for k, v in state.items() if k.startswith(layer._incremental_state_id)]
            cached = cache["prev_key"].size(1)
            assert cached == decoded_tokens % 4
            assert cache["prev_value"].size(1) == cached
            # no block is padded, so no mask is cached (None: no cached key is padded)
            assert cache["prev_key_padding_mask"] is None


def test_incremental_weights_match_full_weights():
    layer = build_layer(causal=True, chunk_size=4, attention_activation="laplace")
    length = 10
    x = random_input(length, 2)
    mask = padded_mask(2, length, left=[(1, 3)])
    with torch.no_grad():
        _, full_weights = layer(x, mask, need_weights=True)
        _, step_weights, _ = decode(layer, x, mask, [2, 5, 3], need_weights=True)
    assert full_weights.shape == (2, length, 4)
    step_weights = torch.cat(step_weights, dim=1)
    real = ~mask
    torch.testing.assert_close(step_weights[real], full_weights[real])


def test_incremental_decoding_needs_a_causal_layer():
    layer = build_layer(causal=False)
    with pytest.raises(ValueError, match="causal"):
        layer(random_input(1, 2), incremental_state={})


@pytest.mark.parametrize("chunk", [-1, 4])
def test_reorder_mid_decoding_matches_decoding_reordered_inputs(chunk):
    layer = build_layer(causal=True, chunk_size=chunk, attention_activation="laplace")
    length, batch = 9, 3
    x = random_input(length, batch)
    mask = padded_mask(batch, length, left=[(2, 2)])
    order = torch.tensor([2, 0, 2])  # beam search both reorders and duplicates
    prefix = 5
    with torch.no_grad():
        _, _, state = decode(layer, x[:prefix], mask[:, :prefix], [3, 2])
        reorder_all(layer, state, order)
        continued, _, _ = decode(layer, x[prefix:, order], mask[order, prefix:], [1, 3], state=state)
        expected, _, _ = decode(layer, x[:, order], mask[order], [1] * length)
    assert_close_on_real(continued, expected[prefix:], mask[order, prefix:])


# ------------------------------------------------------------------- padding
@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("chunk", [-1, 4])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("activation", ["softmax", "laplace"])
def test_padded_batch_matches_sequences_alone(causal, chunk, side, activation):
    layer = build_layer(causal=causal, chunk_size=chunk, attention_activation=activation)
    long_seq = random_input(10, 1, seed=2)
    short_seq = random_input(6, 1, seed=3)
    filler = torch.full((4, 1, EMBED), 7.0, dtype=torch.float64)  # padding must not matter
    if side == "left":
        short_padded = torch.cat([filler, short_seq])
        mask = padded_mask(2, 10, left=[(1, 4)])
    else:
        short_padded = torch.cat([short_seq, filler])
        mask = padded_mask(2, 10, right=[(1, 4)])
    # 4 padded positions: with chunk 4 left padding shifts the chunks by exactly one
    with torch.no_grad():
        together, _ = layer(torch.cat([long_seq, short_padded], dim=1), mask)
        long_alone, _ = layer(long_seq)
        short_alone, _ = layer(short_seq)
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together[:, :1], long_alone)
    real = ~mask[1]
    torch.testing.assert_close(together[real, 1:], short_alone)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("activation", ["softmax", "laplace"])
@pytest.mark.parametrize("causal, chunk", [(False, -1), (True, 2)])
def test_gradcheck(activation, causal, chunk):
    # train mode with zero dropout: deterministic, and no kernel cached by the EMA
    layer = build_layer(embed_dim=4, zdim=2, hdim=4, ndim=2, eval_mode=False, max_positions=8,
                        attention_activation=activation, causal=causal, chunk_size=chunk)
    x = random_input(5, 2, embed_dim=4).requires_grad_()
    mask = padded_mask(2, 5, right=[(1, 2)])
    names = [name for name, _ in layer.named_parameters()]
    parameters = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]

    def layer_output(inputs, *params):
        out, _ = functional_call(layer, dict(zip(names, params)), (inputs, mask))
        return out

    assert torch.autograd.gradcheck(layer_output, (x, *parameters), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------- directions
def test_bidirectional_encoder_sees_the_future():
    layer = build_layer(causal=False)
    x = random_input(8, 2)
    changed = x.clone()
    changed[-1] += random_input(1, changed.size(1), seed=9)[0]  # not a constant: layer norm would cancel it
    with torch.no_grad():
        before, _ = layer(x)
        after, _ = layer(changed)
    assert not torch.allclose(after[0], before[0])


def test_causal_layer_does_not_see_the_future():
    layer = build_layer(causal=True)
    x = random_input(8, 2)
    changed = x.clone()
    changed[-1] += random_input(1, changed.size(1), seed=9)[0]  # not a constant: layer norm would cancel it
    with torch.no_grad():
        before, _ = layer(x)
        after, _ = layer(changed)
    torch.testing.assert_close(after[:-1], before[:-1])
    assert not torch.allclose(after[-1], before[-1])


# ------------------------------------------------------------------ weights
@pytest.mark.parametrize("chunk", [-1, 4])
def test_attention_weights(chunk):
    layer = build_layer(chunk_size=chunk)
    length = 10
    x = random_input(length, 2)
    mask = padded_mask(2, length, right=[(1, 3)])
    with torch.no_grad():
        _, weights = layer(x, mask, need_weights=True)
        _, no_weights = layer(x, mask)
    assert no_weights is None
    assert weights.shape == (2, length, length if chunk < 0 else chunk)
    real = ~mask
    torch.testing.assert_close(weights[real].sum(-1), torch.ones(int(real.sum()), dtype=torch.float64))
    if chunk < 0:
        assert torch.all(weights[1, :, -3:] == 0)  # padded keys
    else:
        # query 4..6 of row 1: chunk [4, 8) of which 7 is padded
        assert torch.all(weights[1, 4:7, 3] == 0)


# -------------------------------------------------------------- train mode
def test_train_mode_with_dropouts_backpropagates():
    torch.manual_seed(0)
    layer = MovingAverageGatedAttention(EMBED, ZDIM, HDIM, NDIM, dropout=0.1, attention_dropout=0.1,
                                        hidden_dropout=0.1, feature_dropout=True, chunk_size=4,
                                        norm_type="batchnorm").train()
    x = torch.randn(10, 3, EMBED, requires_grad=True)
    mask = padded_mask(3, 10, right=[(2, 5)])
    out, _ = layer(x, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("activation", ATTENTION_ACTIVATIONS)
def test_queries_that_see_no_key_have_finite_gradients(activation):
    # causal and left-padded: the padded queries of row 1 see no real key at all
    layer = build_layer(causal=True, chunk_size=4, attention_activation=activation, eval_mode=False)
    x = random_input(7, 2).requires_grad_()
    mask = padded_mask(2, 7, left=[(1, 5)])
    out, _ = layer(x, mask)
    assert torch.isfinite(out).all()
    (out * (~mask).transpose(0, 1).unsqueeze(-1)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


def test_initialisation():
    torch.manual_seed(0)
    layer = MovingAverageGatedAttention(64, 32, 128, 4)
    for linear in (layer.v_proj, layer.mx_proj, layer.h_proj):
        assert torch.all(linear.bias == 0)
        assert abs(linear.weight.std().item() - 0.02) < 0.003
    assert torch.all(layer.beta == 0) and layer.gamma.shape == (2, 32)
    assert layer.mx_proj.out_features == 64 + 32 + 128 + 64


# -------------------------------------------------------------------- options
@pytest.mark.parametrize("options, option_name", [
    (dict(attention_activation="foo"), "attention_activation"),
    (dict(activation="foo"), "activation"),
    (dict(norm_type="foo"), "norm_type"),
    (dict(rel_pos_bias="foo"), "rel_pos_bias"),
    (dict(chunk_size=-2), "chunk_size"),
    (dict(zdim=0), "zdim"),
    (dict(hdim=0), "hdim"),
    (dict(ndim=-1), "ndim"),
    (dict(embed_dim=0), "embed_dim"),
    (dict(causal=True, bidirectional=True), "bidirectional"),
    (dict(dropout=1.0), "dropout"),
    (dict(attention_dropout=-0.1), "attention_dropout"),
    (dict(truncation=-3), "truncation"),
    (dict(max_positions=0), "max_positions"),
])
def test_invalid_options_raise(options, option_name):
    arguments = dict(embed_dim=EMBED, zdim=ZDIM, hdim=HDIM, ndim=NDIM)
    arguments.update(options)
    with pytest.raises(ValueError, match=option_name):
        MovingAverageGatedAttention(**arguments)


def test_choice_errors_list_allowed_values():
    with pytest.raises(ValueError, match=r"attention_activation must be one of \['softmax', 'laplace', 'relu2'\]"):
        MovingAverageGatedAttention(EMBED, ZDIM, HDIM, NDIM, attention_activation="gelu")


def test_off_chunk_sizes_mean_no_chunking():
    for off in (-1, 0, None):
        assert not MovingAverageGatedAttention(EMBED, ZDIM, HDIM, NDIM, chunk_size=off).chunked


def test_too_long_input_for_simple_bias_raises():
    layer = build_layer(max_positions=8)
    with torch.no_grad():
        with pytest.raises(ValueError, match="max_positions=8"):
            layer(random_input(10, 1))
        # chunking bounds the positions; rotary extrapolates
        build_layer(max_positions=8, chunk_size=4)(random_input(10, 1))
        build_layer(max_positions=8, rel_pos_bias="rotary")(random_input(10, 1))


def test_too_long_decoding_for_simple_bias_raises():
    layer = build_layer(max_positions=4, causal=True)
    x = random_input(5, 1)
    with torch.no_grad():
        with pytest.raises(ValueError, match="max_positions=4"):
            decode(layer, x, torch.zeros(1, 5, dtype=torch.bool), [4, 1])


def test_wrong_padding_mask_shape_raises():
    layer = build_layer()
    with pytest.raises(ValueError, match="padding_mask"):
        layer(random_input(5, 2), torch.zeros(5, 2, dtype=torch.bool))


# ------------------------------------------------- fast attention path vs plain masks
def plain_attend(layer, q, k, v, query_positions, key_positions, key_padding_mask):
    """The attention of one window with a materialised N x Lq x Lk visibility mask, masking
    after the activation: the straightforward form the fast path (-inf scores, masks folded
    into the bias) must reproduce."""
    n, lq, lk = q.size(0), q.size(1), k.size(1)
    visible = torch.ones(n, lq, lk, dtype=torch.bool)
    if key_padding_mask is not None:
        visible &= ~key_padding_mask.unsqueeze(1)
    if layer.causal:
        visible &= key_positions.unsqueeze(0) <= query_positions.unsqueeze(1)
    bias = layer.rel_pos_bias(query_positions, key_positions)
    dots = q @ k.transpose(1, 2)
    if layer.attention_activation == "softmax":
        scores = (dots / math.sqrt(layer.zdim) + bias).masked_fill(~visible, float("-inf"))
        weights = torch.softmax(scores.masked_fill(~visible.any(-1, keepdim=True), 0.0), dim=-1)
    else:
        scores = dots / visible.sum(-1, keepdim=True).clamp(min=1) + bias
        weights = laplace_reference(scores) if layer.attention_activation == "laplace" else torch.relu(scores) ** 2
    weights = weights * visible
    return weights @ v, weights


@pytest.mark.parametrize("activation", ATTENTION_ACTIVATIONS)
# causal windows can also attend block by block (one query per block)
@pytest.mark.parametrize("causal,causal_block", [(False, 0), (True, 0), (True, 1)])
@pytest.mark.parametrize("padding", ["none", "some", "whole rows"])
@pytest.mark.parametrize("query_offset", [0, 3])  # 3: the last queries of a window, as in decoding
def test_fast_attention_path_equals_plain_masks(activation, causal, causal_block, padding, query_offset):
    layer = build_layer(attention_activation=activation, causal=causal, eval_mode=True)
    layer.attention.causal_block_size = causal_block
    torch.manual_seed(2)
    n, lk = 3, 7
    lq = lk - query_offset
    q = torch.randn(n, lq, layer.zdim, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n, lk, layer.zdim, dtype=torch.float64, requires_grad=True)
    v = torch.randn(n, lk, layer.hdim, dtype=torch.float64, requires_grad=True)
    query_positions, key_positions = torch.arange(query_offset, lk), torch.arange(lk)
    mask = None
    if padding != "none":
        mask = torch.zeros(n, lk, dtype=torch.bool)
        mask[0, :2] = True  # left padding: early causal queries see no key
        mask[1, -3:] = True
        if padding == "whole rows":
            mask[2] = True  # a window made only of padding
    results = []
    def fast_attend(q, k, v, query_positions, key_positions, mask):
        bias = layer.rel_pos_bias(query_positions, key_positions)
        return layer.attention(q, k, v, bias, mask)

    for attend in (fast_attend, lambda *args: plain_attend(layer, *args)):
        output, weights = attend(q, k, v, query_positions, key_positions, mask)
        grads = torch.autograd.grad((output * torch.linspace(-1, 1, layer.hdim, dtype=torch.float64)).sum()
                                    + weights.pow(2).sum(), (q, k, v, layer.rel_pos_bias.rel_pos_bias))
        results.append((output, weights, grads))
    (fast_out, fast_weights, fast_grads), (plain_out, plain_weights, plain_grads) = results
    torch.testing.assert_close(fast_out, plain_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast_weights, plain_weights, rtol=1e-10, atol=1e-12)
    for fast_grad, plain_grad in zip(fast_grads, plain_grads):
        assert torch.isfinite(fast_grad).all()
        torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ATTENTION_ACTIVATIONS)
@pytest.mark.parametrize("chunk", [-1, 8])
def test_blockwise_causal_attention_equals_whole_window(activation, chunk):
    """A whole layer with causal windows split into query blocks (of 2 when chunked, 3
    otherwise: at most 8 blocks) against the same layer attending over whole windows:
    outputs, attention weights and every gradient."""
    x = random_input(19, 3).requires_grad_()
    mask = padded_mask(3, 19, left=[(1, 4)], right=[(2, 5)])
    results = []
    for block in (0, 2):
        layer = build_layer(attention_activation=activation, causal=True, chunk_size=chunk)
        layer.attention.causal_block_size = block
        window_calls = []
        attend_window = layer.attention.attend_window
        layer.attention.attend_window = lambda *args, **kwargs: window_calls.append(1) or attend_window(*args, **kwargs)
        out, weights = layer(x, mask, need_weights=True)
        # chunk 8: 3 chunks (19 tokens) of 4 blocks each; whole window: 7 blocks of 3 queries
        assert len(window_calls) == (1 if block == 0 else (4 if chunk > 0 else 7))
        real = ~mask.transpose(0, 1).unsqueeze(-1)
        grads = torch.autograd.grad((out * real).pow(2).sum(), [x, *layer.parameters()])
        results.append((out, weights, grads))
    (blocked, blocked_weights, blocked_grads), (whole, whole_weights, whole_grads) = results[1], results[0]
    assert_close_on_real(blocked, whole, mask, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(blocked_weights, whole_weights, rtol=1e-10, atol=1e-12)
    for blocked_grad, whole_grad in zip(blocked_grads, whole_grads):
        torch.testing.assert_close(blocked_grad, whole_grad, rtol=1e-9, atol=1e-11)
