"""The commands of `hf-rnn-attn` that need PyTorch: translate with a saved model, export, push and average.

The command line itself (arguments, errors, the translate flow) is `hf_rnn_attn_runtime.command_line`, which runs
`translate --backend onnx` without importing torch or transformers and every other command through `COMMANDS` here.
"""

import sys
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from hf_rnn_attn_runtime.command_line import (CommandError, CommandFailure, console_main, main, onnx_extra_needed,
                                              run_translate, translate_lines, write_atomically)

from .alignment import NoAttentionError
from .hub import HubUploadError, check_model_folder, push_to_hub
from .pipeline_translation import translation_pipeline

__all__ = ["COMMANDS", "console_main", "main"]


# -------------------------------------------------------------------------------------------------- translate

def run_torch_translate(args):
    try:
        for folder in [args.model, *(args.ensemble or [])]:
            check_model_folder(folder)
    except (OSError, ValueError) as error:
        raise CommandError(error) from error
    return run_translate(args, load_translator)


def load_translator(args):
    transformers_logging.disable_progress_bar()
    if args.int8 and args.device not in (None, "cpu"):
        raise CommandError("--int8 runs on the CPU; leave out --device or pass --device cpu.")
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        device = "cpu" if args.int8 else args.device
        if args.ensemble:
            from .ensemble import load_ensemble

            translator = translation_pipeline(*load_ensemble([args.model, *args.ensemble]), device=device)
        else:
            translator = translation_pipeline(args.model, device=device)
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"cannot load a model from {args.model}: {error}") from error
    if args.int8:
        from .quantization import quantize_int8

        translator.model = quantize_int8(translator.model)
    return translator


def translate_with_attention(translator, lines, batch_size, problems, **generate_kwargs):
    """The records of `lines` with their attention, and True; without it (a translator that records none) the
    records, False, and the reason in `problems`."""
    try:
        return translate_lines(translator, lines, batch_size=batch_size, return_attention=True,
                               **generate_kwargs), True
    except NoAttentionError as error:
        problems.append(f"{error} No heatmaps or alignments are written.")
        return translate_lines(translator, lines, batch_size=batch_size, **generate_kwargs), False


def write_attention(args, lines, records, problems):
    """The --alignments file (one line per input line) and a heatmap per translated line in --attention_dir."""
    for number, (line, record) in enumerate(zip(lines, records), 1):
        if not line.strip():
            print(f"hf-rnn-attn translate: line {number} is empty: no heatmap or alignment for it.", file=sys.stderr)
    if args.alignments is not None:
        try:
            write_atomically(Path(args.alignments), "".join(f"{r['alignment']}\n" for r in records).encode("utf-8"))
        except OSError as error:
            problems.append(f"cannot write --alignments {args.alignments}: {error.strerror or error}.")
    if args.attention_dir is None:
        return
    from .plotting import plot_attention  # matplotlib only when heatmaps are asked for

    folder, digits = Path(args.attention_dir), len(str(len(lines)))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for number, record in enumerate(records, 1):
            if record["target_tokens"]:
                figure = plot_attention(record["source_tokens"], record["target_tokens"], record["attention"])
                figure.savefig(folder / f"{number:0{digits}d}.png")
    except OSError as error:
        problems.append(f"cannot write heatmaps to --attention_dir {folder}: {error.strerror or error}.")


# ----------------------------------------------------------------------------------------------------- export

def run_export(args):
    with onnx_extra_needed():
        from .onnx_export import export_onnx  # torch.onnx, onnx and onnxruntime only when asked for

    transformers_logging.disable_progress_bar()
    try:
        written = export_onnx(args.model, args.output, int8=args.int8)
    except (OSError, ValueError) as error:
        raise CommandError(error) from error
    print(f"Wrote {', '.join(path.name for path in written)} and the config and tokenizer to {args.output}.",
          file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------------- push

def run_push(args):
    try:
        files = push_to_hub(args.folder, args.repo_id, dry_run=args.dry_run, private=args.private)
    except HubUploadError as error:
        raise CommandFailure(error) from error
    except (OSError, ValueError) as error:
        raise CommandError(error) from error
    if args.dry_run:
        print(f"Dry run: would upload {len(files)} files from {args.folder} to {args.repo_id}:", file=sys.stderr)
        print("\n".join(files))
    else:
        print(f"Uploaded {len(files)} files to https://huggingface.co/{args.repo_id}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------- average

def run_average(args):
    from .averaging import average_checkpoints, last_checkpoints

    if (args.run_dir is None) != (args.last is None):
        raise CommandError("--last goes with --run_dir (and --run_dir needs --last).")
    transformers_logging.disable_progress_bar()
    try:
        checkpoints = args.checkpoints or last_checkpoints(args.run_dir, args.last)
        average_checkpoints(checkpoints, args.output)
    except (OSError, ValueError) as error:
        raise CommandError(error) from error
    print(f"Wrote the average of {', '.join(Path(path).name for path in checkpoints)} to {args.output}.",
          file=sys.stderr)
    return 0


COMMANDS = {"translate": run_torch_translate, "export": run_export, "push": run_push, "average": run_average}


if __name__ == "__main__":
    console_main()
