"""Activation functions selected by name."""

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = ("silu", "relu", "linear", "gelu", "gelu_accurate")
ATTENTION_ACTIVATIONS = ("softmax", "laplace", "relu2")


def _identity(x: Tensor) -> Tensor:
    return x


def _gelu_accurate(x: Tensor) -> Tensor:
    """Tanh approximation of gelu."""
    return F.gelu(x, approximate="tanh")


_ACTIVATION_FNS = {
    "silu": F.silu,
    "relu": F.relu,
    "linear": _identity,
    "gelu": F.gelu,
    "gelu_accurate": _gelu_accurate,
}


def check_choice(option: str, value: str, allowed) -> None:
    """Raise ``ValueError`` naming ``option`` and its allowed values unless ``value`` is one."""
    if value not in allowed:
        raise ValueError(f"{option} must be one of {list(allowed)}, got {value!r}")


def get_activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """The elementwise activation called ``name`` (one of :data:`ACTIVATIONS`)."""
    check_choice("activation", name, ACTIVATIONS)
    return _ACTIVATION_FNS[name]


def relu2(x: Tensor) -> Tensor:
    """Squared relu, an attention activation: relu(x)^2."""
    return torch.square(F.relu(x))


# Laplace attention function: the Gaussian CDF with mean sqrt(1/2) and std sqrt(1/(4 pi)),
# chosen so that it approximates relu2 near the origin while staying bounded.
LAPLACE_MU = math.sqrt(0.5)
LAPLACE_SIGMA = math.sqrt(0.25 / math.pi)


def laplace(x: Tensor) -> Tensor:
    """Laplace attention activation: 0.5 * (1 + erf((x - mu) / (sigma * sqrt(2))))."""
    return 0.5 * (1.0 + torch.erf((x - LAPLACE_MU) / (LAPLACE_SIGMA * math.sqrt(2.0))))
