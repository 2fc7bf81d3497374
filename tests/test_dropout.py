"""Element dropout's CPU masks (mega_fairseq.modules.dropout): the drop rate, independence
of the four 16-bit integers drawn per 64-bit word, exact scaling of kept units, gradients,
seeding, and fairseq's training / --retain-dropout switches."""

import math

import pytest
import torch

from mega_fairseq.modules.dropout import MASK_LEVELS, ElementDropout, element_dropout, keep_mask

COUNT = 1 << 20


def binomial_bound(p: float, n: int, sigmas: float = 6.0) -> float:
    return sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_every_element_is_dropped_with_probability_p(p):
    torch.manual_seed(0)
    keep, scale = keep_mask((COUNT,), p)
    # the four 16-bit lanes of each 64-bit draw are separate integers: each lane, and
    # each lane's sign bit, follows the same law (the top bit of a default int64
    # random_() draw is always 0, which would never drop one lane in four)
    lanes = keep.view(-1, 4)
    for lane in range(4):
        dropped = 1.0 - lanes[:, lane].double().mean().item()
        assert abs(dropped - p) < binomial_bound(p, COUNT // 4), (lane, dropped)
    # neighbouring lanes are independent: both dropped at rate p^2
    both = (~lanes[:, 0] & ~lanes[:, 1]).double().mean().item()
    assert abs(both - p * p) < binomial_bound(p * p, COUNT // 4)
    levels = min(round(p * MASK_LEVELS), MASK_LEVELS - 1)
    assert scale == MASK_LEVELS / (MASK_LEVELS - levels)
    assert abs(levels / MASK_LEVELS - p) <= 0.5 / MASK_LEVELS


def test_kept_units_are_scaled_to_keep_the_expectation():
    torch.manual_seed(1)
    x = torch.rand(64, 33, 17) + 0.5
    y = element_dropout(x, 0.3)
    kept = y != 0
    _, scale = keep_mask((1,), 0.3)
    torch.testing.assert_close(y[kept], x[kept] * scale, rtol=0, atol=0)
    assert 0.25 < 1 - kept.double().mean().item() < 0.35
    # unbiased: E[y] = x, checked on many draws of one element
    torch.manual_seed(2)
    ones = torch.ones(COUNT)
    assert abs(element_dropout(ones, 0.3).double().mean().item() - 1.0) < 6 * math.sqrt(0.3 / 0.7 / COUNT)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(3)
    x = torch.randn(40, 50, dtype=torch.float64, requires_grad=True)
    y = element_dropout(x, 0.4)
    grad = torch.randn_like(y)
    y.backward(grad)
    _, scale = keep_mask((1,), 0.4)
    kept = (y != 0).to(x.dtype)
    torch.testing.assert_close(x.grad, grad * kept * scale, rtol=0, atol=0)
    # the output is linear in x for a fixed mask: y = x * kept * scale
    torch.testing.assert_close(y, x.detach() * kept * scale, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_keep_their_dtype(dtype):
    torch.manual_seed(4)
    x = torch.randn(8, 16, dtype=dtype)
    y = element_dropout(x, 0.5)
    assert y.dtype == dtype
    kept = y != 0
    torch.testing.assert_close(y[kept], (x[kept].float() * 2).to(dtype))


def test_seeded_masks_repeat_and_differ_between_calls():
    x = torch.ones(1000)
    torch.manual_seed(5)
    first, second = element_dropout(x, 0.5), element_dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(element_dropout(x, 0.5), first)
    assert not torch.equal(first, second)


def test_module_follows_training_mode_and_retain_dropout():
    module = ElementDropout(0.5, module_name="MovingAverageGatedAttention")
    x = torch.ones(2000)
    module.train()
    assert (module(x) == 0).any()
    module.eval()
    assert module(x) is x
    module.make_generation_fast_("layer", retain_dropout=True,
                                 retain_dropout_modules=["MovingAverageGatedAttention"])
    assert (module(x) == 0).any()
    assert ElementDropout(0.0).train()(x) is x
