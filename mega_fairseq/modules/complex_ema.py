"""Megalodon's complex exponential moving average (CEMA; Ma et al. 2024, "Megalodon:
Efficient LLM Pretraining and Inference with Unlimited Context Length", arXiv 2404.08801,
Eqs. 2-3).

Mega's multi-dimensional damped EMA with a complex decay: per channel c and EMA dimension
n = 1..N, with p = sigmoid(delta), |q| = 1 - p * sigmoid(alpha) as in Mega and the phase
theta[c, n] = 2 pi n / N * omega_c spread uniformly over the N dimensions (omega_c =
sigmoid(theta_c) in (0, 1), one learned base angle per channel):

    h_t[n] = |q[n]| e^{i theta[n]} h_{t-1}[n] + p[n] beta[n] x_t          (complex state)
    y_t    = Re(sum_n eta[n] / sqrt(N) * h_t[n])                          (real output)

eta is complex (stored as ``gamma``, D' x N x 2: real and imaginary parts). Unrolled, y is
the causal convolution of x with the real kernel k[t] = Re(sum_n eta[n] / sqrt(N) p[n]
beta[n] q[n]^t), so everything of :class:`MultiDimensionalDampedEMA` applies unchanged:
the FFT path (kernel in complex64, or complex128 for float64 modules), truncation, the
bidirectional variant, and exact incremental decoding, one step or a block at a time, with
a complex state. The layer returns silu(y + omega * x) like Mega's EMA.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mega_fairseq.modules.ema import EMACoefficients, MultiDimensionalDampedEMA


class ComplexMultiDimensionalDampedEMA(MultiDimensionalDampedEMA):
    """CEMA over ``T x B x D`` inputs; arguments and behaviour as
    :class:`MultiDimensionalDampedEMA`.

    Parameters: delta, alpha, beta (D' x N x 1), gamma (D' x N x 2: the complex output weight
    eta), theta (D' x 1 x 1: the base angle's logit), omega (D).
    """

    def output_weight_shape(self) -> Tuple[int, ...]:
        return (self.rows, self.ndim, 2)

    def create_extra_parameters(self) -> None:
        self.theta = nn.Parameter(torch.empty(self.rows, 1, 1))

    def reset_parameters(self) -> None:
        super().reset_parameters()  # delta, alpha, beta, omega; gamma ~ N(0, 1)
        with torch.no_grad():
            self.gamma[..., 1].zero_()  # eta starts real
            # base angles log-spaced in (1/D', 1], in random channel order, stored as logits
            # (clamped below 1 so that the logit is finite)
            exponents = torch.arange(1, self.rows + 1, dtype=torch.float64) / self.rows
            angles = torch.exp(-exponents * math.log(self.rows)).clamp(max=1.0 - 1e-4)
            angles = angles[torch.randperm(self.rows)]
            self.theta.copy_(torch.logit(angles).view(self.rows, 1, 1).to(self.theta.dtype))
        self.clear_kernel_cache()

    def phases(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """theta[c, n] = 2 pi n / N * sigmoid(theta_c), n = 1..N: D' x N, in ``dtype`` (real)."""
        dtype = dtype or self._compute_dtype()
        steps = torch.arange(1, self.ndim + 1, dtype=dtype, device=self.theta.device)
        return torch.sigmoid(self.theta.squeeze(-1).to(dtype)) * (2 * math.pi / self.ndim) * steps

    def coefficients(self, dtype: Optional[torch.dtype] = None) -> EMACoefficients:
        """Complex recurrence factors (D' x N each; ``dtype`` is the real compute dtype):
        input weight p * beta, log q = log|q| + i theta, output weight eta / sqrt(N)."""
        dtype = dtype or self._compute_dtype()
        delta = self.delta.squeeze(-1).to(dtype)
        alpha = self.alpha.squeeze(-1).to(dtype)
        beta = self.beta.squeeze(-1).to(dtype)
        log_magnitude = torch.log(-torch.expm1(F.logsigmoid(delta) + F.logsigmoid(alpha)))
        log_decay = torch.complex(log_magnitude, self.phases(dtype))
        input_weight = torch.sigmoid(delta) * beta
        gamma = self.gamma.to(dtype)
        output_weight = torch.complex(gamma[..., 0], gamma[..., 1]) * self.scale
        return EMACoefficients(input_weight, log_decay, output_weight)
