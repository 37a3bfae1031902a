"""Checkpoint averaging: one model whose weights are the mean of several checkpoints of the same run.

    from hf_rnn_attn.averaging import average_checkpoints, last_checkpoints

    average_checkpoints(last_checkpoints("runs/bigru-bahdanau/trainer", 5), "runs/bigru-bahdanau/averaged")

The mean of the last few checkpoints of a run usually translates a little better than the last one alone
(Junczys-Dowmunt et al. 2016; OpenNMT-py's `average_models.py`, Marian's `--average`): the weights late in
training wander around a minimum, and their mean lies nearer it. Averaging only makes sense for checkpoints of
one run (one config, one initialisation); the configs and weight shapes must match.
"""

import os
import re
import shutil
from pathlib import Path

from transformers import AutoTokenizer

from .modeling_rnn_attn import RNNAttnForConditionalGeneration

# Written by transformers with each save and naming where the files came from: not part of the architecture.
_BOOKKEEPING_CONFIG_KEYS = ("_name_or_path", "transformers_version")
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def last_checkpoints(run_dir, last):
    """The last `last` `checkpoint-<step>` folders of a Trainer run folder, in step order (the newest last)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Run folder {run_dir} does not exist.")
    if last < 1:
        raise ValueError(f"Average at least one checkpoint; got last={last}.")
    steps = sorted((int(match.group(1)), path) for path in run_dir.iterdir()
                   if path.is_dir() and (match := _CHECKPOINT.fullmatch(path.name)))
    if len(steps) < last:
        found = ", ".join(path.name for _, path in steps) or "none"
        raise ValueError(f"{run_dir} holds {len(steps)} checkpoint-* folders ({found}); asked for the last {last}.")
    return [path for _, path in steps[-last:]]


def average_checkpoints(checkpoints, output_dir):
    """Saves the mean of the weights of `checkpoints` (folders of saved models) as a model folder `output_dir`.

    The config, generation config and tokenizer are those of the last checkpoint listed (`last_checkpoints`
    lists the newest last). Means are taken in float64, so N copies of one checkpoint average to it exactly;
    each weight keeps its dtype. The folder is written under a temporary name and renamed when complete.

    Raises:
        ValueError: no checkpoint, configs that differ (hence weight shapes: loading is strict), or an
            `output_dir` that already exists and is not empty (it is never overwritten).
    Returns:
        `Path` of the written folder.
    """
    checkpoints = [Path(path) for path in checkpoints]
    output_dir = Path(output_dir)
    if not checkpoints:
        raise ValueError("Pass at least one checkpoint folder to average.")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"Output folder {output_dir} already exists and is not empty; choose a new folder (an "
                         f"average never overwrites one).")
    if not output_dir.resolve().parent.is_dir():
        raise ValueError(f"Cannot write {output_dir}: its parent folder does not exist.")
    newest = RNNAttnForConditionalGeneration.from_pretrained(checkpoints[-1])
    reference = _architecture(newest.config)
    sums = {name: tensor.double() for name, tensor in newest.state_dict().items()}
    for checkpoint in checkpoints[:-1]:
        model = RNNAttnForConditionalGeneration.from_pretrained(checkpoint)  # strict: its weights fit its config
        other = _architecture(model.config)
        differences = sorted(key for key in reference.keys() | other.keys() if reference.get(key) != other.get(key))
        if differences:
            listed = ", ".join(f"{key} {other.get(key)!r} vs {reference.get(key)!r}" for key in differences)
            raise ValueError(f"{checkpoint} and {checkpoints[-1]} have different configs ({listed}), so different "
                             f"weights: only checkpoints of one model can be averaged.")
        for name, tensor in model.state_dict().items():
            sums[name] += tensor.double()
    dtypes = {name: tensor.dtype for name, tensor in newest.state_dict().items()}
    newest.load_state_dict({name: (total / len(checkpoints)).to(dtypes[name]) for name, total in sums.items()})
    temporary = output_dir.with_name(f".{output_dir.name}.{os.getpid()}.tmp")
    try:
        newest.save_pretrained(temporary)
        AutoTokenizer.from_pretrained(checkpoints[-1]).save_pretrained(temporary)
        if output_dir.exists():
            output_dir.rmdir()  # empty, checked above
        os.replace(temporary, output_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return output_dir


def _architecture(config):
    return {key: value for key, value in config.to_dict().items() if key not in _BOOKKEEPING_CONFIG_KEYS}
