"""Norms, activations, dropout and the normalized feed-forward network against formulas
written here."""

import math

import pytest
import torch
import torch.nn.functional as F

from mega_fairseq.modules.activations import ACTIVATIONS, get_activation_fn, laplace, relu2
from mega_fairseq.modules.dropout import FeatureDropout, build_dropout
from mega_fairseq.modules.normalized_ffn import NormalizedFeedForwardNetwork
from mega_fairseq.modules.sequence_norm import NORM_TYPES, SequenceNorm

T, B, C = 7, 3, 8


def rms_normalise(x, eps=1e-5):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def right_padding_mask(lengths, max_len):
    return torch.arange(max_len)[None, :] >= torch.tensor(lengths)[:, None]


# ---------------------------------------------------------------- activations


@pytest.mark.parametrize("name,expected", [
    ("silu", lambda x: x * torch.sigmoid(x)),
    ("relu", lambda x: torch.clamp(x, min=0)),
    ("linear", lambda x: x),
    ("gelu", lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))),
    ("gelu_accurate", lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
])
def test_activations_match_formulas(name, expected):
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    torch.testing.assert_close(get_activation_fn(name)(x), expected(x))


def test_all_listed_activations_exist():
    for name in ACTIVATIONS:
        get_activation_fn(name)


def test_attention_activations():
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    torch.testing.assert_close(relu2(x), torch.where(x > 0, x * x, torch.zeros_like(x)))
    mu, sigma = math.sqrt(0.5), math.sqrt(1 / (4 * math.pi))
    normal_cdf = torch.distributions.Normal(mu, sigma).cdf(x)
    torch.testing.assert_close(laplace(x), normal_cdf)


def test_unknown_activation_names_option_and_choices():
    with pytest.raises(ValueError, match=r"activation must be one of \['silu', 'relu'.*got 'tanhh'"):
        get_activation_fn("tanhh")


# ---------------------------------------------------------------- dropout


def test_feature_dropout_drops_whole_channels():
    torch.manual_seed(0)
    drop = FeatureDropout(0.5).train()
    x = torch.ones(20, 4, 64)
    y = drop(x)
    # each (batch, channel) is either dropped for all time steps or kept and rescaled
    assert torch.all(y == y[:1])
    assert set(y.unique().tolist()) == {0.0, 2.0}
    kept = (y[0] != 0).float().mean().item()
    assert 0.3 < kept < 0.7
    # masks differ between sequences of the batch
    assert not torch.equal(y[0, 0], y[0, 1])


def test_feature_dropout_identity_in_eval():
    drop = FeatureDropout(0.5).eval()
    x = torch.randn(5, 2, 6)
    assert torch.equal(drop(x), x)


def test_build_dropout_kinds():
    from fairseq.modules.fairseq_dropout import FairseqDropout

    assert isinstance(build_dropout(0.1, True, "m"), FeatureDropout)
    assert isinstance(build_dropout(0.1, False, "m"), FairseqDropout)


# ---------------------------------------------------------------- norms


def test_layernorm_matches_functional():
    norm = SequenceNorm("layernorm", C)
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 1.5)
        norm.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(T, B, C)
    expected = F.layer_norm(x, (C,), norm.norm.weight, norm.norm.bias, eps=1e-5)
    torch.testing.assert_close(norm(x), expected)


def test_scalenorm_formula():
    norm = SequenceNorm("scalenorm", C)
    assert [p.numel() for p in norm.parameters()] == [1]
    with torch.no_grad():
        next(norm.parameters()).fill_(1.7)
    x = torch.randn(T, B, C) * 3
    torch.testing.assert_close(norm(x), rms_normalise(x) * 1.7)


def test_rmsnorm_formula_and_unit_rms():
    norm = SequenceNorm("rmsnorm", C)
    x = torch.randn(T, B, C) * 5 + 2
    # weight initialised to ones: the output has unit root mean square (reference defect (d))
    y = norm(x)
    torch.testing.assert_close(y.pow(2).mean(-1).sqrt(), torch.ones(T, B), atol=1e-4, rtol=0)
    weight = torch.linspace(0.5, 2.0, C)
    with torch.no_grad():
        next(norm.parameters()).copy_(weight)
    torch.testing.assert_close(norm(x), rms_normalise(x) * weight)


@pytest.mark.parametrize("norm_type", ["batchnorm", "syncbatchnorm"])
def test_batchnorm_uses_only_real_tokens(norm_type):
    torch.manual_seed(0)
    lengths = [7, 4, 2]
    mask = right_padding_mask(lengths, T)
    x = torch.randn(T, B, C) * 2 + 1
    real = torch.cat([x[:n, b] for b, n in enumerate(lengths)])  # N x C, ordered by sequence
    real_positions = ~mask.t()  # T x B

    def real_rows(t):  # real positions of a T x B x C tensor, ordered by sequence like `real`
        return t.transpose(0, 1)[real_positions.t()]
    mean, var = real.mean(0), real.var(0, unbiased=False)

    norm = SequenceNorm(norm_type, C).train()
    y = norm(x, mask)
    torch.testing.assert_close(real_rows(y), (real - mean) / torch.sqrt(var + 1e-5))
    real_out = real_rows(y)
    torch.testing.assert_close(real_out.mean(0), torch.zeros(C), atol=1e-5, rtol=0)
    torch.testing.assert_close(real_out.var(0, unbiased=False), torch.ones(C), atol=1e-3, rtol=0)
    # running statistics from the real tokens only (momentum 0.1, unbiased variance)
    bn = norm.norm
    torch.testing.assert_close(bn.running_mean, 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * real.var(0, unbiased=True))

    # padding values do not change anything
    garbage = x.clone()
    garbage[mask.t()] = 1e3
    other = SequenceNorm(norm_type, C).train()
    y2 = other(garbage, mask)
    torch.testing.assert_close(y2[~mask.t()], y[~mask.t()])
    torch.testing.assert_close(other.norm.running_mean, bn.running_mean)
    torch.testing.assert_close(other.norm.running_var, bn.running_var)

    # eval: running statistics
    norm.eval()
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + 1e-5)
    torch.testing.assert_close(norm(x, mask), expected)


def test_batchnorm_without_mask_matches_torch():
    x = torch.randn(T, B, C)
    norm = SequenceNorm("batchnorm", C).train()
    reference = torch.nn.BatchNorm1d(C).train()
    expected = reference(x.reshape(-1, C)).reshape(T, B, C)
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(norm.norm.running_var, reference.running_var)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_affine_false_has_no_parameters(norm_type):
    norm = SequenceNorm(norm_type, C, affine=False, num_groups=2)
    assert list(norm.parameters()) == []
    assert norm(torch.randn(T, B, C)).shape == (T, B, C)


def test_unknown_norm_type():
    with pytest.raises(ValueError, match=r"norm_type must be one of \['layernorm', 'scalenorm', 'rmsnorm', 'batchnorm', 'syncbatchnorm', 'timestepnorm'\], got 'groupnorm'"):
        SequenceNorm("groupnorm", C)


# ---------------------------------------------------------------- feed-forward


@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm"])
def test_normalized_ffn_matches_manual(prenorm, norm_type):
    torch.manual_seed(0)
    ffn = NormalizedFeedForwardNetwork(C, 16, activation="gelu", norm_type=norm_type, prenorm=prenorm).eval()
    x = torch.randn(T, B, C)

    def norm(t):
        if norm_type == "layernorm":
            return F.layer_norm(t, (C,), eps=1e-5)
        return rms_normalise(t)

    h = norm(x) if prenorm else x
    h = F.gelu(h @ ffn.fc1.weight.t() + ffn.fc1.bias) @ ffn.fc2.weight.t() + ffn.fc2.bias
    out = x + h
    if not prenorm:
        out = norm(out)
    torch.testing.assert_close(ffn(x), out)


def test_normalized_ffn_init_and_dropout_modes():
    ffn = NormalizedFeedForwardNetwork(C, 16, dropout=0.5, hidden_dropout=0.5, feature_dropout=True)
    assert abs(ffn.fc1.weight.std().item() - 0.02) < 0.01
    assert torch.count_nonzero(ffn.fc1.bias) == 0
    assert isinstance(ffn.dropout, FeatureDropout) and isinstance(ffn.hidden_dropout, FeatureDropout)
    torch.manual_seed(1)
    x = torch.randn(T, B, C)
    # default activation silu, pre-norm layer norm (unit weight, zero bias at init)
    expected = x + F.silu(F.layer_norm(x, (C,), eps=1e-5) @ ffn.fc1.weight.t() + ffn.fc1.bias) \
        @ ffn.fc2.weight.t() + ffn.fc2.bias
    ffn.eval()
    # eval mode: both feature dropouts are the identity, so the output is the formula above
    # (catches dropout left active in eval mode, or a wrong activation default)
    torch.testing.assert_close(ffn(x), expected)
    ffn.train()
    # train mode: the output dropout zeroes whole channels of the branch fc2(...) for each
    # sequence, so at a dropped (sequence, channel) the output is exactly the residual x at
    # every time step; catches element-wise dropout or dropout not applied in train mode
    equal = ffn(x) == x  # T x B x C
    assert torch.equal(equal.all(dim=0), equal.any(dim=0))  # dropped at all time steps or none
    assert equal.any() and not equal.all()
    with pytest.raises(ValueError, match="activation must be one of"):
        NormalizedFeedForwardNetwork(C, 16, activation="swish")
