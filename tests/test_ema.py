"""MultiDimensionalDampedEMA against an explicit recurrence / window sum written here."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from incremental_helpers import reorder_all
from mega_fairseq.modules.ema import EMACoefficients, MultiDimensionalDampedEMA

PARAMETER_NAMES = ("delta", "alpha", "beta", "gamma", "omega")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The tensors here are tiny: extra intra-op threads only add scheduling stalls, badly so
    on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_ema(embed_dim=4, ndim=3, bidirectional=False, truncation=None, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    module = MultiDimensionalDampedEMA(embed_dim, ndim=ndim, bidirectional=bidirectional, truncation=truncation)
    with torch.no_grad():
        # a wider spread of decays than the default initialisation
        module.delta.normal_(0.0, 1.0)
        module.alpha.normal_(0.0, 1.0)
    return module.to(dtype)


def ema_factors(module):
    """p * beta, q, gamma / sqrt(N) (each D' x N, float64) straight from the definition."""
    delta, alpha, beta = (getattr(module, name).detach().double()[..., 0] for name in ("delta", "alpha", "beta"))
    p = torch.sigmoid(delta)
    q = 1.0 - p * torch.sigmoid(alpha)
    return p * beta, q, module.gamma.detach().double() / math.sqrt(module.ndim)


def reference_forward(module, x, padding_mask=None, truncation="module"):
    """silu(EMA(x) + omega * x) in float64: untruncated by running the recurrence step by
    step, truncated by summing over the window directly. x: T x B x D."""
    window = module.truncation if truncation == "module" else truncation
    x = x.detach().double().clone()
    if padding_mask is not None:
        x[padding_mask.t()] = 0.0
    seq_len, batch_size, dim = x.shape
    input_weight, decay, output_weight = ema_factors(module)

    def causal_ema(rows, sequence):
        b, q, c = input_weight[rows], decay[rows], output_weight[rows]
        out = torch.zeros_like(sequence)
        if window is None:
            h = torch.zeros(batch_size, dim, module.ndim, dtype=torch.float64)
            for t in range(seq_len):
                h = q * h + b * sequence[t].unsqueeze(-1)
                out[t] = (c * h).sum(-1)
        else:
            for t in range(seq_len):
                for lag in range(min(window, t + 1)):
                    out[t] += (c * b * q ** lag).sum(-1) * sequence[t - lag]
        return out

    y = causal_ema(slice(0, dim), x)
    if module.bidirectional:
        # anti-causal direction: the causal EMA of the time-reversed input, reversed back
        y = y + causal_ema(slice(dim, 2 * dim), x.flip(0)).flip(0)
    return F.silu(y + module.omega.detach().double() * x)


def random_padding(batch_size, seq_len, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, seq_len, generator=generator) < 0.3


def decode(module, x, blocks, padding_mask=None, state=None):
    """Feed x (T x B x D) in blocks of the given sizes; returns the concatenated outputs."""
    state = {} if state is None else state
    outputs, start = [], 0
    for size in blocks:
        mask = None if padding_mask is None else padding_mask[:, start:start + size]
        outputs.append(module(x[start:start + size], mask, incremental_state=state))
        start += size
    assert start == x.size(0)
    return torch.cat(outputs, dim=0), state


# ------------------------------------------------------------------ full forward
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("truncation", [None, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_fft_forward_matches_reference(bidirectional, truncation, padded):
    module = make_ema(bidirectional=bidirectional, truncation=truncation)
    for seq_len in (1, 2, 7, 13, 16):
        x = torch.randn(seq_len, 3, 4, dtype=torch.float64)
        mask = random_padding(3, seq_len, seed=seq_len) if padded else None
        expected = reference_forward(module, x, mask)
        torch.testing.assert_close(module(x, mask), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("truncation", [0, -1])
def test_non_positive_truncation_means_none(truncation):
    module = make_ema(bidirectional=True, truncation=truncation)
    assert module.truncation is None
    x = torch.randn(9, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(module(x), reference_forward(module, x, truncation=None), rtol=1e-10, atol=1e-10)


def test_truncation_changes_output_only_past_window():
    full, truncated = make_ema(truncation=None), make_ema(truncation=3)
    x = torch.randn(8, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(full(x)[:3], truncated(x)[:3])
    assert not torch.allclose(full(x)[3:], truncated(x)[3:])


def test_kernel_matches_definition():
    module = make_ema(bidirectional=True, dtype=torch.float32)
    input_weight, decay, output_weight = ema_factors(module)
    lags = torch.arange(6, dtype=torch.float64)
    expected = (output_weight.unsqueeze(-1) * input_weight.unsqueeze(-1) * decay.unsqueeze(-1) ** lags).sum(1)
    kernel = module.kernel(6)
    assert kernel.shape == (8, 6) and kernel.dtype == torch.float32
    torch.testing.assert_close(kernel.double(), expected, rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("start,length", [(0, 1), (0, 2), (0, 17), (5, 64), (0, 1000), (700, 333)])
def test_factorised_kernel_equals_direct_powers(start, length):
    """The block-factorised kernel (fast path) against q^t materialised term by term, in
    value and gradient, with decays from 0.002 to 0.998."""
    module = make_ema(embed_dim=3, ndim=5, bidirectional=True, dtype=torch.float64)
    with torch.no_grad():
        module.delta.uniform_(-6.0, 6.0)
        module.alpha.uniform_(-6.0, 6.0)
    upstream = torch.randn(6, length, dtype=torch.float64)
    results = []
    for method in ("kernel", "kernel_direct"):
        module.zero_grad(set_to_none=True)
        kernel = getattr(module.coefficients(), method)(start, length)
        (kernel * upstream).sum().backward()
        results.append((kernel.detach(), [p.grad.clone() for p in (module.delta, module.alpha, module.beta, module.gamma)]))
    (fast, fast_grads), (direct, direct_grads) = results
    assert fast.shape == direct.shape == (6, length)
    torch.testing.assert_close(fast, direct, rtol=1e-12, atol=1e-14)
    for fast_grad, direct_grad in zip(fast_grads, direct_grads):
        torch.testing.assert_close(fast_grad, direct_grad, rtol=1e-10, atol=1e-12)


def test_factorised_kernel_float32_close_to_float64_definition():
    module = make_ema(embed_dim=8, ndim=16, bidirectional=False, dtype=torch.float32)
    input_weight, decay, output_weight = ema_factors(module)
    lags = torch.arange(4096, dtype=torch.float64)
    expected = (output_weight.unsqueeze(-1) * input_weight.unsqueeze(-1) * decay.unsqueeze(-1) ** lags).sum(1)
    kernel = module.coefficients().kernel(0, 4096)
    torch.testing.assert_close(kernel.double(), expected, rtol=1e-5, atol=1e-6)


def test_factorised_kernel_gradcheck():
    torch.manual_seed(0)
    input_weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    log_decay = torch.log(torch.rand(3, 4, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    output_weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def kernel(input_weight, log_decay, output_weight):
        return EMACoefficients(input_weight, log_decay, output_weight).kernel(3, 23)

    assert torch.autograd.gradcheck(kernel, (input_weight, log_decay, output_weight))


# ------------------------------------------------------------ incremental decoding
@pytest.mark.parametrize("truncation", [None, 4, 2, 20])
@pytest.mark.parametrize("padded", [False, True])
def test_one_step_decoding_matches_full_forward(truncation, padded):
    module = make_ema(truncation=truncation)
    x = torch.randn(11, 2, 4, dtype=torch.float64)
    mask = random_padding(2, 11, seed=1) if padded else None
    expected = reference_forward(module, x, mask)
    stepwise, _ = decode(module, x, [1] * 11, mask)
    torch.testing.assert_close(stepwise, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(module(x, mask), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("truncation", [None, 4, 2, 20])
@pytest.mark.parametrize("blocks", [(3, 1, 5, 2), (11,), (1, 6, 4)])
def test_block_decoding_matches_full_forward(truncation, blocks):
    module = make_ema(truncation=truncation)
    x = torch.randn(11, 2, 4, dtype=torch.float64)
    mask = random_padding(2, 11, seed=2)
    expected = reference_forward(module, x, mask)
    blockwise, _ = decode(module, x, blocks, mask)
    torch.testing.assert_close(blockwise, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("truncation", [None, 3])
def test_reorder_incremental_state(truncation):
    module = make_ema(truncation=truncation)
    x = torch.randn(9, 3, 4, dtype=torch.float64)
    _, state = decode(module, x[:4], [3, 1])
    order = torch.tensor([2, 0, 0])  # reorder, prune row 1, duplicate row 0
    reorder_all(module, state, order)
    reordered = x[:, order]
    continued, _ = decode(module, reordered[4:], [1, 4], state=state)
    expected = reference_forward(module, reordered)[4:]
    torch.testing.assert_close(continued, expected, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------- gradients
def _gradcheck_inputs(module, x):
    params = tuple(getattr(module, name).detach().clone().requires_grad_(True) for name in PARAMETER_NAMES)
    return (x.requires_grad_(True),) + params


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("truncation", [None, 3])
def test_gradcheck_full_forward(bidirectional, truncation):
    module = make_ema(embed_dim=2, ndim=3, bidirectional=bidirectional, truncation=truncation)
    mask = torch.tensor([[False] * 5, [False] * 4 + [True]])

    def run(x, *params):
        return functional_call(module, dict(zip(PARAMETER_NAMES, params)), (x, mask))

    inputs = _gradcheck_inputs(module, torch.randn(5, 2, 2, dtype=torch.float64))
    assert torch.autograd.gradcheck(run, inputs, fast_mode=True)


def test_gradcheck_incremental_block():
    module = make_ema(embed_dim=2, ndim=3, truncation=2)

    def run(x, *params):
        state = {}
        parameters = dict(zip(PARAMETER_NAMES, params))
        first = functional_call(module, parameters, (x[:3],), {"incremental_state": state})
        second = functional_call(module, parameters, (x[3:],), {"incremental_state": state})
        return torch.cat([first, second])

    inputs = _gradcheck_inputs(module, torch.randn(6, 2, 2, dtype=torch.float64))
    assert torch.autograd.gradcheck(run, inputs, fast_mode=True)


# ----------------------------------------------------------------- kernel cache
def test_eval_cache_follows_load_state_dict():
    module, other = make_ema(seed=0), make_ema(seed=1)
    x = torch.randn(7, 2, 4, dtype=torch.float64)
    module.eval()
    with torch.no_grad():
        before = module(x)
        assert module._kernel_cache, "eval mode should cache the kernel"
        module.load_state_dict(other.state_dict())
        after = module(x)
        fresh = make_ema(seed=1).eval()(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh)
    torch.testing.assert_close(after, reference_forward(other, x), rtol=1e-10, atol=1e-10)


def test_decoding_coefficients_cached_in_eval_and_follow_parameter_updates():
    module = make_ema(truncation=3).eval()
    x = torch.randn(6, 2, 4, dtype=torch.float64)
    with torch.no_grad():
        state = {}
        first = torch.cat([module(x[t:t + 1], incremental_state=state) for t in range(6)])
        assert any(key[0] == "coefficients" for key in module._kernel_cache)
        torch.testing.assert_close(first, reference_forward(module, x, truncation=3), rtol=1e-10, atol=1e-10)
        module.alpha.add_(1.0)
        state = {}
        second = torch.cat([module(x[t:t + 1], incremental_state=state) for t in range(6)])
    torch.testing.assert_close(second, reference_forward(module, x, truncation=3), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(first, second)


def test_eval_cache_follows_in_place_parameter_updates():
    module = make_ema().eval()
    x = torch.randn(7, 2, 4, dtype=torch.float64)
    with torch.no_grad():
        before = module(x)
        module.delta.add_(0.5)
        module.gamma.mul_(-2.0)
        after = module(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference_forward(module, x), rtol=1e-10, atol=1e-10)

    # an optimizer step taken in eval mode
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    module(x).pow(2).sum().backward()
    optimizer.step()
    with torch.no_grad():
        stepped = module(x)
    assert not torch.allclose(after, stepped)
    torch.testing.assert_close(stepped, reference_forward(module, x), rtol=1e-10, atol=1e-10)


def test_train_mode_never_caches_and_train_invalidates():
    module = make_ema()
    x = torch.randn(7, 2, 4, dtype=torch.float64)
    module.eval()
    with torch.no_grad():
        module(x)
    assert module._kernel_cache
    module.train()
    assert not module._kernel_cache
    with torch.no_grad():
        module(x)
    assert not module._kernel_cache

    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    module(x).pow(2).sum().backward()
    optimizer.step()
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x), reference_forward(module, x), rtol=1e-10, atol=1e-10)


def test_eval_cache_serves_each_length_correctly():
    module = make_ema(bidirectional=True, truncation=6).eval()
    with torch.no_grad():
        for seq_len in (5, 9, 5, 1, 9):
            x = torch.randn(seq_len, 2, 4, dtype=torch.float64)
            torch.testing.assert_close(module(x), reference_forward(module, x), rtol=1e-10, atol=1e-10)


def test_cache_from_inference_mode_allows_input_gradients():
    module = make_ema().eval().requires_grad_(False)
    x = torch.randn(7, 2, 4, dtype=torch.float64)
    with torch.inference_mode():
        module(x)
    x.requires_grad_(True)
    module(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------------ reduced precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_half_precision_input_close_to_float32(dtype, bidirectional):
    module = make_ema(embed_dim=8, ndim=4, bidirectional=bidirectional, dtype=torch.float32)
    x = torch.randn(33, 2, 8).to(dtype)
    mask = random_padding(2, 33, seed=3)
    out = module(x, mask)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), module(x.float(), mask), rtol=1e-2, atol=1e-2)


def test_bfloat16_module_and_decoding():
    reference = make_ema(embed_dim=8, ndim=4, truncation=5, dtype=torch.float32)
    module = make_ema(embed_dim=8, ndim=4, truncation=5, dtype=torch.bfloat16)
    with torch.no_grad():
        for name in PARAMETER_NAMES:  # same (rounded) weights in float32
            getattr(reference, name).copy_(getattr(module, name).float())
    x = torch.randn(12, 2, 8).to(torch.bfloat16)
    expected = reference(x.float())
    out = module(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
    decoded, state = decode(module, x, [5, 1, 6])
    assert decoded.dtype == torch.bfloat16
    assert next(iter(state.values()))["prev_state"].dtype == torch.float32
    torch.testing.assert_close(decoded.float(), expected, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"embed_dim": 4, "ndim": 0}, "ndim"),
        ({"embed_dim": 4, "ndim": -2}, "ndim"),
        ({"embed_dim": 4, "ndim": 2.5}, "ndim"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"embed_dim": 4, "truncation": "8"}, "truncation"),
    ],
)
def test_invalid_options(kwargs, option):
    with pytest.raises(ValueError, match=option):
        MultiDimensionalDampedEMA(**kwargs)


def test_bidirectional_incremental_is_rejected():
    module = make_ema(bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        module(torch.randn(1, 2, 4, dtype=torch.float64), incremental_state={})


def test_parameter_shapes_and_initialisation():
    module = MultiDimensionalDampedEMA(6, ndim=4, bidirectional=True)
    for name in ("delta", "alpha", "beta"):
        assert getattr(module, name).shape == (12, 4, 1)
    assert module.gamma.shape == (12, 4) and module.omega.shape == (6,)
    signs = module.beta.detach()[..., 0].mean(0).sign()
    assert signs.tolist() == [1.0, -1.0, 1.0, -1.0]
