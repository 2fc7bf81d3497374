"""The parts of a Mega block that compute in float32 under half precision.

Half precision reaches a layer in two ways: its parameters are float16/bfloat16
(fairseq's ``--fp16``/``--bf16`` call ``model.half()``/``model.bfloat16()``), or autocast is
active (``--amp``, ``torch.autocast``), which runs matrix products such as ``bmm`` and
``einsum`` in half precision whatever their inputs. The EMA (coefficients, kernel, FFT and
recurrences), attention scores with their bias and normalisation, and the sequence norms
compute in float32 either way: inputs are upcast with :func:`upcast` and the computation
runs inside :func:`full_precision`, which switches autocast off for the inputs' device.
float64 stays float64.
"""

import contextlib
from typing import Iterator

import torch
from torch import Tensor

HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 when any of ``dtypes`` is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def upcast(x: Tensor) -> Tensor:
    """x in float32 when it is float16/bfloat16; other tensors unchanged."""
    return x.float() if x.dtype in HALF_DTYPES else x


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Autocast off for ``device``'s type while the block runs (nothing changes where
    autocast is not active or does not exist for that device type, e.g. ``meta``)."""
    device_type = device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield
