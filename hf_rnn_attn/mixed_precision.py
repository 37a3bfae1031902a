"""Which parts of a training step take the package's fast paths under autocast, and in which precision.

Autocast runs each product in bf16 or fp16 and disables the float32 fast paths, which would then fall back to
autograd over many small low-precision operations. On the CPU that is slower than float32: a bigru-bahdanau
training step (batch 64, 30 tokens, 8k vocabulary) under bf16 autocast took 498 ms with the recurrent layers in
bf16 and 402 ms with them in float32 on their fast paths (2-core Xeon with AMX; float32 without autocast: 570 ms).
Their steps are small products of 64 rows, bound by per-operation overhead rather than arithmetic, while the output
layer's products are large and several times faster in bf16. So under CPU autocast the padded GRU encoder and the
fused decoder run in float32, and the fused loss runs its products in bf16 (on every device). On GPUs, where this
was not measured, the recurrent layers keep autocast's path.
"""

from contextlib import nullcontext
from functools import cache

import torch


@cache
def cpu_autocast_supports(rnn_class, dtype):
    """Whether `rnn_class` runs under CPU autocast to `dtype` on this CPU (`run_rnn` runs it in float32 if not).

    oneDNN's bf16 LSTM needs AVX-512 (it fails with "could not create a primitive descriptor" on AVX2-only
    CPUs), so ask the kernel itself once, with a 1-token input, rather than guess from CPU flags.
    """
    try:
        with torch.autocast("cpu", dtype=dtype):
            rnn_class(2, 2)(torch.zeros(1, 1, 2))
        return True
    except RuntimeError:
        return False


def float32_fast_paths_run(tensor):
    """Whether the float32 training fast paths (`run_gru_padded`, `fused_unroll`) may run on `tensor`'s device:
    always without autocast, and under autocast on the CPU, inside `without_autocast`."""
    device = tensor.device.type
    return device == "cpu" or not torch.is_autocast_enabled(device)


def without_autocast(tensor):
    """A context in which `tensor`'s device runs without autocast (nothing to do where autocast is off)."""
    device = tensor.device.type
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else nullcontext()


def fused_loss_matmul_dtype(features):
    """The dtype of the fused loss's products (`linear_cross_entropy`) for `features`, or None for the plain loss.

    Without autocast: float32 for float32 features. Under bf16 autocast: bf16, the dtype of the plain path's logits.
    Under fp16 autocast, none: the fused loss computes its gradients in the forward pass, before GradScaler scales
    them up, so their small entries would underflow in fp16.
    """
    device = features.device.type
    if not torch.is_autocast_enabled(device):
        return torch.float32 if features.dtype == torch.float32 else None
    return torch.bfloat16 if torch.get_autocast_dtype(device) == torch.bfloat16 else None
