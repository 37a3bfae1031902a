"""Several training processes (`torchrun`, `accelerate launch`) with the same results as one.

Accelerate picks the distributed mode from the hardware: launched as two processes on a machine with no GPU,
it reports `DistributedType.NO` and each process trains on its own, with all the data, and nothing says so but a
Trainer warning. `use_cpu_processes_without_accelerator` turns that into DDP over CPU processes (gloo).
"""

import os

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list


def use_cpu_processes_without_accelerator():
    """Under a multi-process launch on a machine with no accelerator, make Accelerate (and so Trainer) run
    DDP over CPU processes. Call before creating `TrainingArguments` or an `Accelerator`.

    The same as passing `--use_cpu` / `Accelerator(cpu=True)`, which users forget, and harmless on one process
    or with a GPU.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"


def build_on_main_process(build):
    """`build()` run by the main process only; every process gets the (pickled) result.

    One result by construction, whatever `build` does, and the other processes do not spend the time.
    Works with and without a distributed launch.
    """
    state = PartialState()
    if state.num_processes == 1:
        return build()
    payload = [build() if state.is_main_process else None]
    broadcast_object_list(payload, from_process=0)
    return payload[0]
