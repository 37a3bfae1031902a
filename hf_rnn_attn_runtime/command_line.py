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

This module imports neither torch nor transformers: `translate --backend onnx` runs here and starts in a fraction
of a second; `translate` of a saved model on the CPU without the options that need the model class runs here on
torch alone (`torch_backend`, about 3 s sooner); every other command runs through `hf_rnn_attn.cli`.
"""

import argparse
import gc
import os
import sys
from contextlib import contextmanager
from pathlib import Path

EXIT_FAILURE = 1
EXIT_USAGE = 2
BACKENDS = ("torch", "onnx")
# The optional dependencies of `export` and `translate --backend onnx` (pyproject.toml's `onnx` extra).
ONNX_EXTRA = ("onnx", "onnxruntime")
# What the onnx backend does not do: it records no attention and runs on onnxruntime's CPU provider.
TORCH_ONLY_OPTIONS = ("device", "attention_dir", "alignments", "source_length_cap", "coverage_penalty", "ensemble")
# What only the transformers model class does (`hf_rnn_attn.cli`); without these, `torch_backend` translates.
MODEL_CLASS_OPTIONS = ("attention_dir", "alignments", "source_length_cap", "coverage_penalty", "ensemble")


class CommandError(Exception):
    """A problem with the command's inputs, reported as one line with exit status 2."""


class CommandFailure(Exception):
    """A command that could not finish (a failed upload), reported as one line with exit status 1."""


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
    translate.add_argument("--batch_size", type=_positive_int, default=32,
                           help="Sentences decoding at a time; greedy and beam search give the places of those that "
                                "end to the next. On PyTorch each search side by side (--threads) decodes this many; "
                                "the onnx backend's searches share them.")
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
                           help="CPU threads: how many searches run side by side, one thread each (fewer when "
                                "there are too few lines for each; default: one per core; on a machine that other "
                                "processes keep busy, 1 can be much faster).")

    export = subcommands.add_parser("export", help="Export a saved model to ONNX graphs for --backend onnx.")
    export.add_argument("--model", required=True, help="Folder of a saved model (config.json, weights, tokenizer).")
    export.add_argument("--output", required=True, help="Folder to write the graphs, config and tokenizer to.")
    export.add_argument("--int8", action="store_true", help="Also write dynamically quantised int8 graphs.")

    push = subcommands.add_parser("push", help="Upload a folder written by save_for_hub to the Hugging Face Hub.")
    push.add_argument("--folder", required=True, help="Folder written by hf_rnn_attn.hub.save_for_hub.")
    push.add_argument("--repo_id", required=True, help='Hub model repository, "user/name"; created if missing.')
    push.add_argument("--dry_run", action="store_true", help="List the files that would be uploaded; upload nothing.")
    push.add_argument("--private", action="store_true", help="Create the repository as private.")

    average = subcommands.add_parser("average", help="Average the weights of checkpoints into a new model folder.")
    sources = average.add_mutually_exclusive_group(required=True)
    sources.add_argument("--checkpoints", nargs="+", help="Saved model folders; the last one listed gives the config, "
                                                          "generation config and tokenizer.")
    sources.add_argument("--run_dir", help="A Trainer run folder: average its last --last checkpoint-* folders.")
    average.add_argument("--last", type=_positive_int, help="With --run_dir: how many checkpoints, the newest ones.")
    average.add_argument("--output", required=True, help="New folder to write (an existing one is never overwritten).")
    return parser


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _device(text):
    """A torch device that exists on this machine, checked before the model loads."""
    import torch

    try:
        torch.empty(0, device=text)
    except Exception as error:  # RuntimeError, AssertionError or NotImplementedError, depending on the backend
        raise argparse.ArgumentTypeError(f"{text!r} is not a device of this machine ({error}); use e.g. cpu") from error
    return text


def console_main():
    """The `hf-rnn-attn` command: `main`, with the imported objects frozen first.

    When a process ends, the interpreter runs full garbage collections over every object still alive, and torch and
    transformers leave some 360,000: 0.7 s of a 7.8-s greedy translation of 1,000 verses (2-core Xeon). `gc.freeze()`
    takes the objects that exist now, those of the imports, out of the collector's sight; files, atexit handlers and
    the exit status are as without it. For a process that ends with the command only: in a longer-lived one,
    garbage that exists now would never be collected.
    """
    args = build_parser().parse_args()
    if _runs_without_transformers(args):
        from . import torch_backend  # noqa: F401  torch and the layers: the imports to freeze
    elif not _runs_without_torch(args):
        import hf_rnn_attn.cli  # noqa: F401  torch, transformers and the model code: the imports to freeze
    gc.freeze()
    sys.exit(run_command(args))


def main(argv=None):
    """Runs the command of `argv` (default: the process's arguments) and returns its exit status."""
    return run_command(build_parser().parse_args(argv))


def run_command(args):
    """`translate --backend onnx` here, without torch or transformers; every other command through
    `hf_rnn_attn.cli`."""
    try:
        if _runs_without_torch(args):
            return run_translate(args, load_onnx_translator)
        if _runs_without_transformers(args):
            translator = load_torch_translator(args)
            if translator is not None:
                return run_translate(args, lambda args: translator)
        from hf_rnn_attn.cli import COMMANDS

        return COMMANDS[args.command](args)
    except CommandError as error:
        return fail(args.command, error, EXIT_USAGE)
    except CommandFailure as error:
        return fail(args.command, error, EXIT_FAILURE)


def _runs_without_torch(args):
    return args.command == "translate" and args.backend == "onnx"


def _runs_without_transformers(args):
    """A PyTorch translation that `torch_backend` can run: on the CPU, in float32, no option of the model class."""
    return (args.command == "translate" and args.backend == "torch" and args.device in (None, "cpu")
            and not args.int8 and all(getattr(args, name) is None for name in MODEL_CLASS_OPTIONS))


def load_torch_translator(args):
    """A `TorchTranslator` of --model, or None where the model class must run it: a folder that it does not run
    (whose errors, if any, the model class reports), one without tokenizer.json, or --device left out on a machine
    with a GPU."""
    import torch

    from .torch_backend import TorchTranslator

    if args.device is None and torch.cuda.is_available():
        return None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        translator = TorchTranslator(args.model, threads=args.threads)
    except Exception:  # a folder it does not run, or a damaged one: the model class loads it or says what is wrong
        return None
    return translator if translator.tokenizer is not None else None


@contextmanager
def onnx_extra_needed():
    """Turns a missing onnx or onnxruntime, the optional `onnx` extra, into the command's one-line error."""
    try:
        yield
    except ModuleNotFoundError as error:
        if error.name not in ONNX_EXTRA:
            raise
        raise CommandError(f'{error.name} is not installed: pip install "hf_rnn_attn[onnx]"') from error


def fail(command, error, status):
    message = " ".join(str(error).split())  # one line, whatever the underlying error printed
    print(f"hf-rnn-attn {command}: error: {message}", file=sys.stderr)
    return status


# -------------------------------------------------------------------------------------------------- translate

def run_translate(args, load_translator):
    """`translate` with the translator that `load_translator(args)` returns (ONNX here, PyTorch in `hf_rnn_attn.cli`);
    attention (`--attention_dir`, `--alignments`) is for the PyTorch one, whose command checks its folders first."""
    unsupported = [f"--{name}" for name in TORCH_ONLY_OPTIONS if getattr(args, name) is not None]
    if args.backend == "onnx" and unsupported:
        raise CommandError(f"{', '.join(unsupported)} work only with --backend torch.")
    lines = _read_lines(args.input)
    for option in ("output", "alignments"):
        path = getattr(args, option)
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise CommandError(f"cannot write --{option} {path}: its folder does not exist.")
    with_attention = args.attention_dir is not None or args.alignments is not None
    if with_attention and args.source_length_cap is not None:
        raise CommandError("--source_length_cap works only without --attention_dir and --alignments.")
    translator = load_translator(args)
    generate_kwargs = {name: getattr(args, name) for name in ("num_beams", "max_new_tokens", "max_source_length",
                                                              "source_length_cap", "length_penalty",
                                                              "coverage_penalty")
                       if getattr(args, name) is not None}
    if args.max_source_length is not None:
        generate_kwargs["truncation"] = True
    problems = []  # reported after the translations are written: one bad line does not cost the others
    sources = _blank_too_long_lines(translator, lines, args.max_source_length, problems)
    try:
        if with_attention:
            from hf_rnn_attn.cli import translate_with_attention

            records, with_attention = translate_with_attention(translator, sources, args.batch_size, problems,
                                                               **generate_kwargs)
        else:
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
            write_atomically(Path(args.output), text.encode("utf-8"))
        except OSError as error:
            raise CommandError(f"cannot write --output {args.output}: {error.strerror or error}.") from error
    if with_attention:
        from hf_rnn_attn.cli import write_attention

        write_attention(args, lines, records, problems)
    for problem in problems:
        fail(args.command, problem, EXIT_USAGE)
    return EXIT_USAGE if problems else 0


def load_onnx_translator(args):
    with onnx_extra_needed():
        from .onnx import ONNXTranslator  # onnxruntime only when asked for
    try:
        return ONNXTranslator(args.model, int8=args.int8, threads=args.threads)
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"cannot load a model from {args.model}: {error}") from error


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


def write_atomically(path, data):
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


def translate_lines(translator, lines, batch_size=32, **call_kwargs):
    """The pipeline's record of each line (its first returned sequence), in order; blank lines get a blank record
    and never reach the model."""
    return [records[0] for records in translator(list(lines), batch_size=batch_size, **call_kwargs)] if lines else []


if __name__ == "__main__":
    console_main()
