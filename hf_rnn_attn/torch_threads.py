"""torch's intra-op thread count for a block: searches side by side each run on one thread."""

from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count):
    """torch's intra-op threads set to `count` for the block (for the whole process), then put back."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
