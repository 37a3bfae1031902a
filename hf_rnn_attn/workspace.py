"""Large temporary tensors in buffers that every call on a thread reuses, instead of fresh memory each time.

A fresh tensor of megabytes is fresh memory for the process: glibc maps such a block from the kernel and gives it
back when it is freed, and the kernel zeroes every 4 KB page on its first touch. The fused loss's chunk of logits
and its softmax (16 MB each for 512 rows of an 8,000-word vocabulary) cost about 23,000 page faults a training step
that way, 30-40 ms of system time (2-core AMD EPYC), and the additive score's buffer, allocated at every decoder
step, once left the heap full of holes that small tensors had split, so that training peaked at three times its
live memory. A buffer lives as long as its thread and grows to the largest size asked for.
"""

import math
import threading

import torch

_buffers = threading.local()


def workspace(name, shape, like):
    """A tensor of `shape` on `like`'s device and dtype: the thread's buffer `name`, valid until the next call for
    the same name on this thread. Autograd may run a backward pass on another thread, which then uses its own.
    One buffer per inference mode: a tensor made under `torch.inference_mode()` cannot be written outside it."""
    buffers = _buffers.__dict__.setdefault("buffers", {})
    key, size = (name, like.device, like.dtype, torch.is_inference_mode_enabled()), math.prod(shape)
    if key not in buffers or buffers[key].numel() < size:
        buffers[key] = like.new_empty(size)
    return buffers[key][:size].view(shape)
