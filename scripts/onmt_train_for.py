"""`onmt_train` (OpenNMT-py 3.0.4) with a wall-clock budget, which it lacks: stop after MINUTES and save.

Usage:
    .venv/bin/python scripts/onmt_train_for.py MINUTES -config train.yaml    # any onmt_train options after MINUTES

The clock starts when its training loop asks for the first batch (filling its bucket of examples counts), as
`--max_train_minutes` of scripts/train.py starts when its training begins; like it, the step during which the time
runs out is the last. The loop then ends as if `train_steps` had been reached, and OpenNMT-py saves
`model_step_N.pt` at the step it got to. On CPU onmt_train trains in this process, so patching its Trainer here is
enough.
"""

import sys
import time


def stop_after(trainer_class, seconds):
    """Wrap `_accum_batches`, the iterator OpenNMT-py's training loop draws every step from, to end at a deadline."""
    accumulate = trainer_class._accum_batches

    def batches_until_deadline(self, iterator):
        deadline = time.monotonic() + seconds
        for batches in accumulate(self, iterator):
            yield batches  # the loop trains on it before asking for the next
            if time.monotonic() >= deadline:
                return

    trainer_class._accum_batches = batches_until_deadline


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    given = sys.argv.pop(1)
    try:
        minutes = float(given)
    except ValueError:
        minutes = None
    if minutes is None or not minutes > 0:
        sys.exit(f"MINUTES (the first argument) must be a positive number, got {given!r}")
    from onmt.bin.train import main
    from onmt.trainer import Trainer

    stop_after(Trainer, minutes * 60)
    main()
