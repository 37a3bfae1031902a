"""The `hf-rnn-attn` command: translate text with a saved model, export it to ONNX, or upload it to the Hub.

Usage:
    hf-rnn-attn translate --model outputs/es-en < source.txt > translations.txt
    hf-rnn-attn translate --model outputs/es-en --input source.txt --output translations.txt \
        --batch_size 64 --num_beams 5 --max_new_tokens 128 --max_source_length 128
    hf-rnn-attn translate --model outputs/es-en --input source.txt --attention_dir heatmaps --alignments source.align
    hf-rnn-attn translate --model outputs/es-en --ensemble outputs/es-en-seed2 --num_beams 5 --coverage_penalty 0.2
    hf-rnn-attn export --model outputs/es-en --output outputs/es-en-onnx [--int8]
    hf-rnn-attn translate --backend onnx [--int8] --model outputs/es-en-onnx < source.txt > translations.txt
    hf-rnn-attn push --folder outputs/es-en --repo_id user/rnn-attn-es-en --dry_run
    hf-rnn-attn push --folder outputs/es-en --repo_id user/rnn-attn-es-en [--private]
    hf-rnn-attn average --run_dir outputs/es-en-run --last 5 --output outputs/es-en-averaged
    hf-rnn-attn average --checkpoints RUN/checkpoint-9000 RUN/checkpoint-10000 --output outputs/es-en-averaged

`translate` writes exactly one line per input line (an empty line for an empty one); `--output` is replaced
only once every translation is written. Errors print one line to stderr and exit with status 2 (bad model folder,
unreadable input, bad arguments) or 1 (a failed upload). A line longer than the model reads, or heatmaps that
cannot be written, are reported the same way after the other lines are translated and written.
"""

import argparse
import gc
import os
import sys
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from .alignment import NoAttentionError
from .hub import HubUploadError, check_model_folder, push_to_hub
from .pipeline_translation import translation_pipeline

EXIT_FAILURE = 1
EXIT_USAGE = 2
BACKENDS = ("torch", "onnx")
# What the onnx backend does not do: it records no attention and runs on onnxruntime's CPU provider.
TORCH_ONLY_OPTIONS = ("device", "attention_dir", "alignments", "source_length_cap", "coverage_penalty", "ensemble")


class CommandError(Exception):
    """A problem with the command's inputs, reported as one line with exit status 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """Reports a bad argument as the documented one line, `hf-rnn-attn <command>: error: ...`, with status 2
    (argparse would print the usage text first)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser():
    parser = OneLineErrorParser(prog="hf-rnn-attn", description=__doc__.split("\n\n")[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="{translate,export,push,average}")

    translate = subcommands.add_parser("translate", help="Translate lines of text with a saved model.")
    translate.add_argument("--model", required=True, help="Folder of a saved model (config.json, weights, tokenizer).")
    translate.add_argument("--input", help="UTF-8 text file, one source sentence per line (default: stdin).")
    translate.add_argument("--output", help="File to write, one translation per line (default: stdout).")
    translate.add_argument("--batch_size", type=_positive_int, default=32, help="Sentences per generate() call.")
    translate.add_argument("--num_beams", type=_positive_int, default=None,
                           help="Beam size (default: the model's generation_config).")
    translate.add_argument("--max_new_tokens", type=_positive_int, default=None,
                           help="Longest translation in tokens (default: the model's generation_config).")
    translate.add_argument("--source_length_cap", type=float, nargs=2, metavar=("RATIO", "OFFSET"), default=None,
                           help="Stop each translation after RATIO x its source tokens + OFFSET tokens, e.g. 1.5 10 "
                                "(faster when a model fails to end; can cut a long translation short). Greedy and "
                                "beam search only.")
    translate.add_argument("--max_source_length", type=_positive_int, default=None,
                           help="Truncate sources to this many tokens (default: no truncation).")
    translate.add_argument("--device", type=_device, default=None,
                           help='Torch device, e.g. "cpu" or "cuda:0" (default: GPU if any).')
    translate.add_argument("--attention_dir", help="Folder (created if missing) for an attention heatmap of each line, "
                                                   "N.png for line N. Decoding records attention: slower.")
    translate.add_argument("--alignments", help="File to write one Pharaoh word alignment per line: `i-j` pairs, source "
                                                "word i to translation word j, counted from 0.")
    translate.add_argument("--backend", choices=BACKENDS, default="torch",
                           help="torch: the PyTorch model (default); onnx: the graphs of `hf-rnn-attn export` in "
                                "--model, on onnxruntime.")
    translate.add_argument("--ensemble", nargs="+", metavar="FOLDER", default=None,
                           help="More saved models, trained with the same tokenizer, to decode with --model as one "
                                "ensemble (the mean of their log-probabilities at each step).")
    translate.add_argument("--length_penalty", type=float, default=None,
                           help="Beam search ranks finished translations by log-probability / length ** this "
                                "(default: the model's generation_config, 1.0: the mean per token; 0: the sum).")
    translate.add_argument("--coverage_penalty", type=float, default=None, metavar="BETA",
                           help="Beam search adds GNMT's coverage penalty, BETA x sum over source tokens of "
                                "log(min(attention received, 1)), to finished translations (e.g. 0.2; default: none).")
    translate.add_argument("--int8", action="store_true",
                           help="Run in int8: torch.ao dynamic quantisation of the PyTorch model, or the int8 graphs "
                                "of `hf-rnn-attn export --int8`.")
    translate.add_argument("--threads", type=_positive_int, default=None,
                           help="CPU threads for PyTorch or onnxruntime (default: theirs, one per core). On a machine "
                                "that other processes keep busy, 1 can be much faster.")
    translate.set_defaults(run=run_translate)

    export = subcommands.add_parser("export", help="Export a saved model to ONNX graphs for --backend onnx.")
    export.add_argument("--model", required=True, help="Folder of a saved model (config.json, weights, tokenizer).")
    export.add_argument("--output", required=True, help="Folder to write the graphs, config and tokenizer to.")
    export.add_argument("--int8", action="store_true", help="Also write dynamically quantised int8 graphs.")
    export.set_defaults(run=run_export)

    push = subcommands.add_parser("push", help="Upload a folder written by save_for_hub to the Hugging Face Hub.")
    push.add_argument("--folder", required=True, help="Folder written by hf_rnn_attn.hub.save_for_hub.")
    push.add_argument("--repo_id", required=True, help='Hub model repository, "user/name"; created if missing.')
    push.add_argument("--dry_run", action="store_true", help="List the files that would be uploaded; upload nothing.")
    push.add_argument("--private", action="store_true", help="Create the repository as private.")
    push.set_defaults(run=run_push)

    average = subcommands.add_parser("average", help="Average the weights of checkpoints into a new model folder.")
    sources = average.add_mutually_exclusive_group(required=True)
    sources.add_argument("--checkpoints", nargs="+", help="Saved model folders; the last one listed gives the config, "
                                                          "generation config and tokenizer.")
    sources.add_argument("--run_dir", help="A Trainer run folder: average its last --last checkpoint-* folders.")
    average.add_argument("--last", type=_positive_int, help="With --run_dir: how many checkpoints, the newest ones.")
    average.add_argument("--output", required=True, help="New folder to write (an existing one is never overwritten).")
    average.set_defaults(run=run_average)
    return parser


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _device(text):
    """A torch device that exists on this machine, checked before the model loads."""
    try:
        torch.empty(0, device=text)
    except Exception as error:  # RuntimeError, AssertionError or NotImplementedError, depending on the backend
        raise argparse.ArgumentTypeError(f"{text!r} is not a device of this machine ({error}); use e.g. cpu") from error
    return text


def console_main():
    """The `hf-rnn-attn` command (and `python -m hf_rnn_attn.cli`): `main`, with the imported objects frozen first.

    When a process ends, the interpreter runs full garbage collections over every object still alive, and torch and
    transformers leave some 360,000: 0.7 s of a 7.8-s greedy translation of 1,000 verses (2-core Xeon). `gc.freeze()`
    takes the objects that exist now, those of the imports, out of the collector's sight; files, atexit handlers and
    the exit status are as without it. For a process that ends with the command only: in a longer-lived one,
    garbage that exists now would never be collected.
    """
    gc.freeze()
    sys.exit(main())


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CommandError as error:
        return _fail(args.command, error, EXIT_USAGE)
    except HubUploadError as error:
        return _fail(args.command, error, EXIT_FAILURE)


def _fail(command, error, status):
    message = " ".join(str(error).split())  # one line, whatever the underlying error printed
    print(f"hf-rnn-attn {command}: error: {message}", file=sys.stderr)
    return status


# -------------------------------------------------------------------------------------------------- translate

def run_translate(args):
    unsupported = [f"--{name}" for name in TORCH_ONLY_OPTIONS if getattr(args, name) is not None]
    if args.backend == "onnx" and unsupported:
        raise CommandError(f"{', '.join(unsupported)} work only with --backend torch.")
    try:
        if args.backend == "torch":
            for folder in [args.model, *(args.ensemble or [])]:
                check_model_folder(folder)
    except (OSError, ValueError) as error:
        raise CommandError(error) from error
    lines = _read_lines(args.input)
    for option in ("output", "alignments"):
        path = getattr(args, option)
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise CommandError(f"cannot write --{option} {path}: its folder does not exist.")
    with_attention = args.attention_dir is not None or args.alignments is not None
    if with_attention and args.source_length_cap is not None:
        raise CommandError("--source_length_cap works only without --attention_dir and --alignments.")
    translator = _load_translator(args)
    generate_kwargs = {name: getattr(args, name) for name in ("num_beams", "max_new_tokens", "max_source_length",
                                                              "source_length_cap", "length_penalty",
                                                              "coverage_penalty")
                       if getattr(args, name) is not None}
    if args.max_source_length is not None:
        generate_kwargs["truncation"] = True
    problems = []  # reported after the translations are written: one bad line does not cost the others
    sources = _blank_too_long_lines(translator, lines, args.max_source_length, problems)
    try:
        try:
            records = translate_lines(translator, sources, batch_size=args.batch_size, return_attention=with_attention,
                                      **generate_kwargs)
        except NoAttentionError as error:
            problems.append(f"{error} No heatmaps or alignments are written.")
            with_attention = False
            records = translate_lines(translator, sources, batch_size=args.batch_size, **generate_kwargs)
    except ValueError as error:
        raise CommandError(f"cannot translate: {error}") from error
    # A translation that contains a line break would shift every later line.
    text = "".join(f"{' '.join(record['translation_text'].splitlines())}\n" for record in records)
    if args.output is None:
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.flush()
    else:
        try:
            _write_atomically(Path(args.output), text.encode("utf-8"))
        except OSError as error:
            raise CommandError(f"cannot write --output {args.output}: {error.strerror or error}.") from error
    if with_attention:
        _write_attention(args, lines, records, problems)
    for problem in problems:
        _fail(args.command, problem, EXIT_USAGE)
    return EXIT_USAGE if problems else 0


def _blank_too_long_lines(translator, lines, max_source_length, problems):
    """`lines` with those longer than the location score reads made blank (so left untranslated), unless
    --max_source_length truncates them."""
    config = translator.model.config if hasattr(translator, "model") else translator.config  # ONNXTranslator
    if config.attention_score != "location" or max_source_length is not None:
        return lines
    limit = config.max_source_positions
    lengths = [len(ids) for ids in translator.tokenizer(lines)["input_ids"]] if lines else []
    too_long = [number for number, length in enumerate(lengths, 1) if length > limit]
    if too_long:
        problems.append(f"line {', '.join(map(str, too_long))} exceeds max_source_positions={limit} tokens of the "
                        f"location score and is left untranslated. Pass --max_source_length {limit} to truncate "
                        f"longer sources.")
    return ["" if length > limit else line for line, length in zip(lines, lengths)]


def _write_attention(args, lines, records, problems):
    """The --alignments file (one line per input line) and a heatmap per translated line in --attention_dir."""
    for number, (line, record) in enumerate(zip(lines, records), 1):
        if not line.strip():
            print(f"hf-rnn-attn translate: line {number} is empty: no heatmap or alignment for it.", file=sys.stderr)
    if args.alignments is not None:
        try:
            _write_atomically(Path(args.alignments), "".join(f"{r['alignment']}\n" for r in records).encode("utf-8"))
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


def _write_atomically(path, data):
    """Writes through a temporary file in the same folder, then renames it: a failed write (a full disk) leaves
    the previous file as it was."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _read_lines(path):
    """Source lines without their line ends, from a UTF-8 file or stdin."""
    name = "stdin" if path is None else path
    try:
        data = sys.stdin.buffer.read() if path is None else Path(path).read_bytes()
        text = data.decode("utf-8")
    except OSError as error:
        raise CommandError(f"cannot read input {name}: {error.strerror or error}.") from error
    except UnicodeDecodeError as error:
        raise CommandError(f"cannot read input {name}: not UTF-8 text (byte {error.start}).") from error
    # Only "\n" ends a line, as for `wc -l`; str.splitlines would also split at form feeds and the like.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _load_translator(args):
    transformers_logging.disable_progress_bar()
    if args.int8 and args.device not in (None, "cpu"):
        raise CommandError("--int8 runs on the CPU; leave out --device or pass --device cpu.")
    try:
        if args.backend == "onnx":
            from .onnx import ONNXTranslator  # onnxruntime only when asked for

            return ONNXTranslator(args.model, int8=args.int8, threads=args.threads)
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


def translate_lines(translator, lines, batch_size=32, **call_kwargs):
    """The pipeline's record of each line (its first returned sequence), in order; blank lines get a blank record
    and never reach the model."""
    return [records[0] for records in translator(list(lines), batch_size=batch_size, **call_kwargs)] if lines else []


# ----------------------------------------------------------------------------------------------------- export

def run_export(args):
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


if __name__ == "__main__":
    console_main()
