"""The `hf-rnn-attn` command: translate text with a saved model, or upload a saved model to the Hub.

Usage:
    hf-rnn-attn translate --model outputs/es-en < source.txt > translations.txt
    hf-rnn-attn translate --model outputs/es-en --input source.txt --output translations.txt \
        --batch_size 64 --num_beams 5 --max_new_tokens 128 --max_source_length 128
    hf-rnn-attn push --folder outputs/es-en --repo_id user/rnn-attn-es-en --dry_run
    hf-rnn-attn push --folder outputs/es-en --repo_id user/rnn-attn-es-en [--private]

`translate` writes exactly one line per input line (an empty line for an empty one); `--output` is replaced
only once every translation is written. Errors print one line to stderr and exit with status 2 (bad model folder,
unreadable input, bad arguments) or 1 (a failed upload).
"""

import argparse
import os
import sys
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from .hub import HubUploadError, check_model_folder, push_to_hub
from .pipeline_translation import translation_pipeline

EXIT_FAILURE = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A problem with the command's inputs, reported as one line with exit status 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """Reports a bad argument as the documented one line, `hf-rnn-attn <command>: error: ...`, with status 2
    (argparse would print the usage text first)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser():
    parser = OneLineErrorParser(prog="hf-rnn-attn", description=__doc__.split("\n\n")[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="{translate,push}")

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
    translate.set_defaults(run=run_translate)

    push = subcommands.add_parser("push", help="Upload a folder written by save_for_hub to the Hugging Face Hub.")
    push.add_argument("--folder", required=True, help="Folder written by hf_rnn_attn.hub.save_for_hub.")
    push.add_argument("--repo_id", required=True, help='Hub model repository, "user/name"; created if missing.')
    push.add_argument("--dry_run", action="store_true", help="List the files that would be uploaded; upload nothing.")
    push.add_argument("--private", action="store_true", help="Create the repository as private.")
    push.set_defaults(run=run_push)
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
    try:
        check_model_folder(args.model)
    except (OSError, ValueError) as error:
        raise CommandError(error) from error
    lines = _read_lines(args.input)
    if args.output is not None and not Path(args.output).resolve().parent.is_dir():
        raise CommandError(f"cannot write --output {args.output}: its folder does not exist.")
    translator = _load_translator(args)
    generate_kwargs = {name: getattr(args, name) for name in ("num_beams", "max_new_tokens", "max_source_length",
                                                              "source_length_cap")
                       if getattr(args, name) is not None}
    if args.max_source_length is not None:
        generate_kwargs["truncation"] = True
    try:
        translations = translate_lines(translator, lines, batch_size=args.batch_size, **generate_kwargs)
    except ValueError as error:  # e.g. a source longer than the location score reads
        limit = translator.model.config.max_source_positions
        hint = f" Pass --max_source_length {limit} to truncate longer sources." if limit else ""
        raise CommandError(f"cannot translate: {error}{hint}") from error
    text = "".join(f"{translation}\n" for translation in translations)
    if args.output is None:
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.flush()
    else:
        try:
            _write_atomically(Path(args.output), text.encode("utf-8"))
        except OSError as error:
            raise CommandError(f"cannot write --output {args.output}: {error.strerror or error}.") from error
    return 0


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
    try:
        return translation_pipeline(args.model, device=args.device)
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"cannot load a model from {args.model}: {error}") from error


def translate_lines(translator, lines, batch_size=32, **generate_kwargs):
    """One translation per line, in order; blank lines stay blank and never reach the model."""
    sources = [(index, line) for index, line in enumerate(lines) if line.strip()]
    outputs = translator([line for _, line in sources], batch_size=batch_size, **generate_kwargs) if sources else []
    translations = [""] * len(lines)
    for (index, _), records in zip(sources, outputs):
        # A translation that contains a line break would shift every later line.
        translations[index] = " ".join(records[0]["translation_text"].splitlines())
    return translations


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


if __name__ == "__main__":
    sys.exit(main())
