"""torch's intra-op threads, and work split over them by hand: searches side by side each run on one thread, and
so do blocks of a batch's rows in the hand-written recurrent passes (`in_row_blocks`)."""

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

# Fewer rows per block than this run as one block: the threads would cost more than they save.
MIN_ROWS_PER_BLOCK = 8

_pools = {}  # workers by count; they live with the process, as do their `workspace.py` buffers
os.register_at_fork(after_in_child=_pools.clear)  # a forked child (a DataLoader worker) has none of the threads


@contextmanager
def torch_threads(count):
    """torch's intra-op threads set to `count` for the block (for the whole process), then put back."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def in_row_blocks(function, rows, device):
    """`[function(slice of rows) for each block]`: on the CPU one block of the `rows` per torch thread, side by side,
    each in a thread of its own on one torch thread and in the caller's grad and inference mode; else one block.

    A recurrent step is products of a batch of rows and small elementwise operations that torch does not split well
    over threads (most run on one): blocks side by side keep every core busy. The bigru-bahdanau decoder's
    teacher-forced pass (`fused_unroll.py`) of 64 sentences, forward and backward on the 2-core AMD EPYC,
    interleaved in one process: 93 against 119 ms at 39 source and 32 target tokens, 159 against 206 at 60 and 50
    (the training step 7% faster). The encoder's GRU (`fused_gru.py`), whose steps already keep both cores busy
    with its two directions, gained nothing. `function` must write only its own rows and read nothing that
    another block writes.
    """
    blocks = min(torch.get_num_threads(), rows // MIN_ROWS_PER_BLOCK) if device.type == "cpu" else 1
    if blocks <= 1:
        return [function(slice(0, rows))]
    bounds = [rows * block // blocks for block in range(blocks + 1)]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(block):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return function(slice(bounds[block], bounds[block + 1]))

    if blocks not in _pools:
        _pools[blocks] = ThreadPoolExecutor(blocks, "hf_rnn_attn_rows")
    with torch_threads(1):
        return list(_pools[blocks].map(run, range(blocks)))
