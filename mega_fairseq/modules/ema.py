"""Multi-dimensional damped exponential moving average, the EMA sub-layer of Mega.

Every channel d owns N damped EMAs (n = 1..N) with input weight beta, decay
p = sigmoid(delta), damping factor q = 1 - p * sigmoid(alpha) and output weight gamma:

    h_t[n] = q[n] * h_{t-1}[n] + p[n] * beta[n] * x_t
    y_t    = sum_n gamma[n] / sqrt(N) * h_t[n]

Unrolled, y is the causal convolution of x with the kernel
k[t] = sum_n gamma[n] / sqrt(N) * p[n] * beta[n] * q[n]^t, t = 0, 1, ...
Training and full-sequence evaluation use that convolution (FFT), incremental decoding uses
the recurrence. The layer returns silu(y + omega * x).
"""

import math
from collections import OrderedDict
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor

from mega_fairseq.modules.incremental import IncrementalState
from mega_fairseq.modules.length_options import optional_length
from mega_fairseq.modules.precision import compute_dtype, full_precision

# kernels / kernel spectra kept in eval mode (different sequence lengths need different ones)
_MAX_CACHED_ENTRIES = 8


def _check_positive_int(option: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{option} must be a positive integer, got {value!r}")


def real_part(t: Tensor) -> Tensor:
    """t itself for a real tensor, its real part for a complex one."""
    return t.real if t.is_complex() else t


class EMACoefficients(NamedTuple):
    """Per (channel, EMA dimension) factors of the recurrence, each D' x N:
    h_t = decay * h_{t-1} + input_weight * x_t and y_t = Re(sum_n output_weight * h_t).

    Real for Mega's EMA; complex (log_decay = log|q| + i theta, complex output weights) for
    Megalodon's complex EMA, whose kernel and outputs are the real parts."""

    input_weight: Tensor  # p * beta
    log_decay: Tensor  # log q
    output_weight: Tensor  # gamma / sqrt(N)

    def decay_powers(self, start: int, length: int) -> Tensor:
        """q^t for t = start .. start + length - 1: D' x N x length."""
        steps = torch.arange(start, start + length, dtype=self.log_decay.real.dtype,
                             device=self.log_decay.device)
        # exp(t log q) never overflows and stays accurate for q close to 1
        return torch.exp(self.log_decay.unsqueeze(-1) * steps)

    def kernel(self, start: int, length: int) -> Tensor:
        """k[t] = sum_n output_weight * input_weight * q^t for t = start .. start + length - 1:
        D' x length.

        With lags split as t = start + s * J + j (block size S, J blocks, both ~sqrt(length)),
        q^t = q^(start + s J) * q^j, so the kernel is a batched matrix product of a
        D' x J x N and a D' x N x S factor: D' N (J + S) exponentials instead of D' N L, and
        no D' x N x L tensor is kept for the backward pass.
        """
        weight = self.output_weight * self.input_weight  # D' x N
        block = max(1, math.isqrt(max(length - 1, 0)) + 1)  # S >= sqrt(length)
        num_blocks = -(-length // block)  # J
        block_starts = start + block * torch.arange(num_blocks, dtype=self.log_decay.real.dtype,
                                                    device=self.log_decay.device)
        outer = weight.unsqueeze(-1) * torch.exp(self.log_decay.unsqueeze(-1) * block_starts)  # D' x N x J
        inner = self.decay_powers(0, block)  # D' x N x S
        blocks = torch.bmm(outer.transpose(1, 2), inner)  # D' x J x S
        return real_part(blocks.reshape(weight.size(0), num_blocks * block)[:, :length])

    def kernel_direct(self, start: int, length: int) -> Tensor:
        """:meth:`kernel` computed term by term from q^t (D' x N x length); the reference the
        factorised form is tested against."""
        weight = self.output_weight * self.input_weight  # D' x N
        return real_part(torch.einsum("dn,dnt->dt", weight, self.decay_powers(start, length)))

    @property
    def state_dtype(self) -> torch.dtype:
        """The dtype of the recurrent state h (complex for a complex EMA)."""
        return torch.promote_types(self.log_decay.dtype, self.output_weight.dtype)


def _circular_kernel(forward_kernel: Tensor, backward_kernel: Optional[Tensor], fft_size: int) -> Tensor:
    """Lay out D x L kernels on a circle of ``fft_size`` >= 2 * T points (T >= L: input length).

    The forward kernel (lags 0..L-1) sits at positions 0..L-1. The backward kernel weights
    future inputs (y_t += k2[j] x_{t+j}), i.e. lags -j, which sit at positions fft_size - j
    (lag 0 adds to position 0). With the input zero-padded to ``fft_size`` no term wraps
    around onto a real input. Returns D x fft_size.
    """
    length = forward_kernel.size(-1)
    circle = F.pad(forward_kernel, (0, fft_size - length))
    if backward_kernel is not None:
        lag_zero, future_lags = backward_kernel[:, :1], backward_kernel[:, 1:]
        gap = forward_kernel.new_zeros(forward_kernel.size(0), fft_size - length)
        circle = circle + torch.cat([lag_zero, gap, future_lags.flip(-1)], dim=-1)
    return circle


def _fft_convolve(signal: Tensor, kernel_spectrum: Tensor, fft_size: int) -> Tensor:
    """signal: B x D x T, kernel_spectrum: D x (fft_size // 2 + 1) -> B x D x T."""
    length = signal.size(-1)
    signal_spectrum = torch.fft.rfft(signal, n=fft_size)
    return torch.fft.irfft(signal_spectrum * kernel_spectrum, n=fft_size)[..., :length]


@with_incremental_state
class MultiDimensionalDampedEMA(nn.Module):
    """Mega's multi-dimensional damped EMA over ``T x B x D`` inputs.

    Args:
        embed_dim: channels D.
        ndim: EMA dimensions N per channel.
        bidirectional: add an anti-causal EMA with its own parameters (encoders); parameters
            then have D' = 2D rows, the first D for the causal direction.
        truncation: use only the first ``truncation`` lags of the kernel; ``None``, 0 or -1
            means the full length (see :mod:`mega_fairseq.modules.length_options`).

    Parameters: delta, alpha, beta (D' x N x 1), gamma (D' x N), omega (D).

    Computation happens in float32 (float64 when the input or the parameters are float64),
    also for float16/bfloat16 parameters and inputs and under autocast (see
    :mod:`mega_fairseq.modules.precision`), and the result is cast back to the input dtype.
    Kernels, spectra and coefficients are therefore always built in that compute dtype.

    In eval mode the kernel and its spectrum are cached. The cache is dropped on ``train()``,
    ``load_state_dict``, ``to()``/``half()``-style conversions, and whenever a parameter's
    storage or autograd version counter changes (optimizer steps, in-place updates). Writes
    through ``param.data`` bypass the version counter: call :meth:`clear_kernel_cache`
    after those.
    """

    def __init__(self, embed_dim: int, ndim: int = 16, bidirectional: bool = False,
                 truncation: Optional[int] = None):
        super().__init__()
        _check_positive_int("embed_dim", embed_dim)
        _check_positive_int("ndim", ndim)
        self.embed_dim = embed_dim
        self.ndim = ndim
        self.bidirectional = bool(bidirectional)
        self.truncation = optional_length("truncation", truncation)
        self.scale = math.sqrt(1.0 / ndim)

        self.rows = 2 * embed_dim if self.bidirectional else embed_dim
        self.delta = nn.Parameter(torch.empty(self.rows, ndim, 1))
        self.alpha = nn.Parameter(torch.empty(self.rows, ndim, 1))
        self.beta = nn.Parameter(torch.empty(self.rows, ndim, 1))
        self.gamma = nn.Parameter(torch.empty(self.output_weight_shape()))
        self.omega = nn.Parameter(torch.empty(embed_dim))
        self._kernel_cache: "OrderedDict[tuple, Tensor]" = OrderedDict()
        self._cache_stamp: Optional[tuple] = None
        self.create_extra_parameters()
        self.reset_parameters()

    def output_weight_shape(self) -> Tuple[int, ...]:
        """The shape of ``gamma``: D' x N."""
        return (self.rows, self.ndim)

    def create_extra_parameters(self) -> None:
        """Parameters beyond Mega's (none here)."""

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.delta, mean=0.0, std=0.2)
            nn.init.normal_(self.alpha, mean=0.0, std=0.2)
            # +1 on even EMA dimensions, -1 on odd ones
            signs = torch.ones(self.ndim)
            signs[1::2] = -1.0
            nn.init.normal_(self.beta, mean=0.0, std=0.02)
            self.beta.add_(signs.view(1, -1, 1))
            nn.init.normal_(self.gamma, mean=0.0, std=1.0)
            nn.init.normal_(self.omega, mean=0.0, std=1.0)
        self.clear_kernel_cache()

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, ndim={self.ndim}, bidirectional={self.bidirectional}, "
                f"truncation={self.truncation}")

    # ------------------------------------------------------------- coefficients
    def _compute_dtype(self, input_dtype: Optional[torch.dtype] = None) -> torch.dtype:
        return compute_dtype(self.gamma.dtype, input_dtype or self.gamma.dtype)

    def coefficients(self, dtype: Optional[torch.dtype] = None) -> EMACoefficients:
        """The recurrence factors (D' x N each) in ``dtype`` (default: the compute dtype)."""
        dtype = dtype or self._compute_dtype()
        delta = self.delta.squeeze(-1).to(dtype)
        alpha = self.alpha.squeeze(-1).to(dtype)
        beta = self.beta.squeeze(-1).to(dtype)
        # log q = log(1 - p * sigmoid(alpha)), through log-sigmoids so that it stays finite
        # and accurate when p * sigmoid(alpha) rounds to 1
        log_p_times_sigmoid_alpha = F.logsigmoid(delta) + F.logsigmoid(alpha)
        log_decay = torch.log(-torch.expm1(log_p_times_sigmoid_alpha))
        input_weight = torch.sigmoid(delta) * beta
        output_weight = self.gamma.to(dtype) * self.scale
        return EMACoefficients(input_weight, log_decay, output_weight)

    def _decoding_coefficients(self, dtype: torch.dtype) -> EMACoefficients:
        """:meth:`coefficients` for incremental decoding: memoised in eval mode like the
        kernels, so that a decoding step does not recompute them."""

        def stacked() -> Tensor:
            factors = self.coefficients(dtype)
            common = factors.state_dtype
            return torch.stack([factor.to(common) for factor in factors])

        return EMACoefficients(*self._cached(("coefficients", dtype), stacked).unbind(0))

    def kernel(self, length: int) -> Tensor:
        """The EMA kernel k[d, t] for lags t = 0..length-1 (not truncated): D' x length, in
        float32 (float64 for a float64 module). Bidirectional: rows D..2D-1 are the
        anti-causal kernel."""
        with full_precision(self.gamma.device):
            return self._cached(("kernel", length), lambda: self.coefficients().kernel(0, length))

    def _kernel_length(self, seq_len: int) -> int:
        return seq_len if self.truncation is None else min(seq_len, self.truncation)

    def _kernel_spectrum(self, length: int, fft_size: int, dtype: torch.dtype) -> Tensor:
        """rfft of the circular kernel of ``length`` lags: D x (fft_size // 2 + 1)."""

        def build() -> Tensor:
            kernel = self.coefficients(dtype).kernel(0, length)
            forward, backward = kernel[: self.embed_dim], None
            if self.bidirectional:
                backward = kernel[self.embed_dim:]
            return torch.fft.rfft(_circular_kernel(forward, backward, fft_size), n=fft_size)

        return self._cached(("spectrum", length, fft_size, dtype), build)

    # -------------------------------------------------------------------- cache
    def clear_kernel_cache(self) -> None:
        self._kernel_cache.clear()
        self._cache_stamp = None

    def _parameter_stamp(self) -> tuple:
        # storage, dtype and autograd version of every parameter: changes on any in-place
        # update (optimizer step, copy_ in load_state_dict) and on conversions
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())

    def _cached(self, key: tuple, build: Callable[[], Tensor]) -> Tensor:
        """``build()``, memoised in eval mode. Never cached in training mode nor while
        autograd could need the graph through the parameters."""
        grad_through_parameters = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if self.training or grad_through_parameters:
            return build()
        stamp = self._parameter_stamp()
        if stamp != self._cache_stamp:
            self._kernel_cache.clear()
            self._cache_stamp = stamp
        cached = self._kernel_cache.get(key)
        # a tensor made under inference_mode cannot be saved for backward outside it
        if cached is not None and (torch.is_inference_mode_enabled() or not cached.is_inference()):
            self._kernel_cache.move_to_end(key)
            return cached
        value = build().detach()
        self._kernel_cache[key] = value
        while len(self._kernel_cache) > _MAX_CACHED_ENTRIES:
            self._kernel_cache.popitem(last=False)
        return value

    def train(self, mode: bool = True):
        self.clear_kernel_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.clear_kernel_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_kernel_cache()
        super()._load_from_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
    ) -> Tensor:
        """x: T x B x D; padding_mask: B x T bool (True = pad) -> silu(EMA(x) + omega * x),
        T x B x D in the dtype of x. Padded positions enter the EMA as zeros.

        With ``incremental_state`` (unidirectional only) x holds the T >= 1 tokens that
        follow the ones already consumed and padding_mask covers only them.
        """
        if x.dim() != 3 or x.size(-1) != self.embed_dim:
            raise ValueError(f"expected input of shape T x B x {self.embed_dim}, got {tuple(x.shape)}")
        seq_len, batch_size, _ = x.shape
        if padding_mask is not None:
            if padding_mask.shape != (batch_size, seq_len):
                raise ValueError(
                    f"padding_mask must be B x T = {(batch_size, seq_len)}, got {tuple(padding_mask.shape)}"
                )
            x = x.masked_fill(padding_mask.to(torch.bool).transpose(0, 1).unsqueeze(-1), 0.0)

        if incremental_state is not None and self.bidirectional:
            raise ValueError(
                "incremental_state (incremental decoding) needs bidirectional=False: "
                "a bidirectional EMA reads future tokens"
            )
        dtype = self._compute_dtype(x.dtype)
        with full_precision(x.device):
            signal = x.to(dtype).permute(1, 2, 0)  # B x D x T
            if incremental_state is not None:
                mixed = self._forward_incremental(signal, incremental_state)
            else:
                fft_size = 2 * seq_len
                spectrum = self._kernel_spectrum(self._kernel_length(seq_len), fft_size, dtype)
                mixed = _fft_convolve(signal, spectrum, fft_size)
            # summed in the input's T x B x D layout, so that the output is contiguous there
            out = F.silu((x.to(dtype) * self.omega.to(dtype)).add_(mixed.permute(2, 0, 1)))
        return out.to(x.dtype)

    # ------------------------------------------------------ incremental decoding
    def _forward_incremental(self, signal: Tensor, incremental_state: IncrementalState) -> Tensor:
        """signal: B x D x L new inputs (padding already zeroed) -> EMA output B x D x L.

        State: ``prev_state`` h (B x D x N) and, with truncation W, ``prev_inputs``, the
        last min(W, steps so far) inputs (B x D x <=W). A truncated kernel is still a
        recurrence once the input leaving the window is subtracted:
            h_t = q h_{t-1} + p beta (x_t - q^W x_{t-W}).
        """
        batch_size, channels, length = signal.shape
        saved = self.get_incremental_state(incremental_state, "ema_state") or {}
        state = saved.get("prev_state")
        coefficients = self._decoding_coefficients(signal.dtype)
        if state is None:
            state = signal.new_zeros(batch_size, channels, self.ndim, dtype=coefficients.state_dtype)
        state = state.to(coefficients.state_dtype)

        leaving = None  # B x D x L inputs x_{t-W}, None when none has left the window
        new_state: Dict[str, Optional[Tensor]] = {}
        if self.truncation is not None:
            window = self.truncation
            previous = saved.get("prev_inputs")
            if previous is None:
                previous = signal.new_zeros(batch_size, channels, 0)
            history = torch.cat([previous.to(signal.dtype), signal], dim=-1)
            # x_{t-W} for the new tokens; before the first input they are zeros
            missing = min(length, window - previous.size(-1))
            if missing < length:
                leaving = F.pad(history[..., : length - missing], (missing, 0))
            new_state["prev_inputs"] = history[..., -window:]

        if length == 1:
            output, state = self._step(signal, leaving, state, coefficients)
        else:
            output, state = self._block(signal, leaving, state, coefficients)
        new_state["prev_state"] = state
        self.set_incremental_state(incremental_state, "ema_state", new_state)
        return output

    def _step(self, signal: Tensor, leaving: Optional[Tensor], state: Tensor,
              coefficients: EMACoefficients) -> Tuple[Tensor, Tensor]:
        """One token: signal, leaving B x D x 1; state B x D x N -> (output B x D x 1, state).
        (state complex for a complex EMA, the output real.)"""
        update = signal  # B x D x 1, broadcasts over N
        if leaving is not None:
            decay_window = coefficients.decay_powers(self.truncation, 1).squeeze(-1)  # D x N
            update = signal - decay_window * leaving
        state = coefficients.log_decay.exp() * state + coefficients.input_weight * update
        output = real_part((coefficients.output_weight * state).sum(-1, keepdim=True))
        return output, state

    def _block(self, signal: Tensor, leaving: Optional[Tensor], state: Tensor,
               coefficients: EMACoefficients) -> Tuple[Tensor, Tensor]:
        """L tokens at once, in closed form. signal, leaving: B x D x L; state: B x D x N.

        With t = 1..L inside the block and h_0 the incoming state:
            y_t = sum_n c q^t h_0 + sum_{j<=t} k[t-j] x_j - sum_{j<=t} k[t-j+W] x_{j-W}
            h_L = q^L h_0 + sum_j q^{L-j} p beta (x_j - q^W x_{j-W})
        with k the untruncated kernel and c = gamma / sqrt(N).
        """
        length = signal.size(-1)
        fft_size = 2 * length
        decay = coefficients.decay_powers(1, length)  # D x N x L: q^t, t = 1..L
        # contribution of the incoming state, decayed by q^t
        decayed_output_weight = coefficients.output_weight.unsqueeze(-1) * decay
        output = real_part(torch.einsum("dnt,bdn->bdt", decayed_output_weight, state))
        spectrum = torch.fft.rfft(_circular_kernel(coefficients.kernel(0, length), None, fft_size))
        output = output + _fft_convolve(signal, spectrum, fft_size)

        # q^{L-j}, j = 1..L
        decay_to_end = coefficients.decay_powers(0, length).flip(-1)
        input_to_end = coefficients.input_weight.unsqueeze(-1) * decay_to_end  # D x N x L
        new_state = decay[..., -1] * state + torch.einsum("dnj,bdj->bdn", input_to_end, signal.to(state.dtype))
        if leaving is not None:
            window = self.truncation
            late_kernel = coefficients.kernel(window, length)  # lags W..W+L-1
            late_spectrum = torch.fft.rfft(_circular_kernel(late_kernel, None, fft_size))
            output = output - _fft_convolve(leaving, late_spectrum, fft_size)
            decay_window = coefficients.decay_powers(window, 1)  # D x N x 1
            new_state = new_state - torch.einsum("dnj,bdj->bdn", input_to_end * decay_window,
                                                 leaving.to(state.dtype))
        return output, new_state

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Select batch entries ``new_order`` (LongTensor) of this module's cached state."""
        saved = self.get_incremental_state(incremental_state, "ema_state")
        if saved is None:
            return
        reordered: Dict[str, Optional[Tensor]] = {}
        for key, value in saved.items():
            reordered[key] = None if value is None else value.index_select(0, new_order.to(value.device))
        self.set_incremental_state(incremental_state, "ema_state", reordered)
