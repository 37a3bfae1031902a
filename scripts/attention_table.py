"""Train and score every attention variant of Bahdanau et al. (2015) and Luong et al. (2015) on one corpus, with one
tokenizer and one time budget per row, and write the results as a markdown table.

Usage:
    python scripts/attention_table.py                                  # 7 rows x 14 minutes: 1 h 45 min
    python scripts/attention_table.py --minutes 5 --rows luong-general luong-local-p-general
    python scripts/attention_table.py --output_dir /tmp/table --max_steps 3 --max_train_samples 200 \
        --max_eval_samples 8 --test_samples 8 --max_new_tokens 10      # a smoke test of the whole pipeline

Rows: bigru-bahdanau as published; the lstm-luong preset with each global score (additive, dot, general,
location), then local-m and local-p attention with the general score (D = 10, as in the paper). The Luong rows
feed `c_{t-1}` into the decoder (`--luong_input_feeding true`, the default), as Luong et al.'s best models do.

Each row runs `scripts/train.py` with the default recipe (`scripts/recipe.py`: batch 64, Adam 2e-3, best checkpoint
by validation BLEU) then `scripts/evaluate_model.py` on the test split, greedy and beam 5, in fresh processes, one
row after the other. A row whose results exist is kept, so an interrupted table continues where it stopped;
`--overwrite true` retrains every row. Writes `<output_dir>/table.md` (the table, the machine and budget, and the
commands of each row) and prints it.
"""

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from recipe import DEFAULT_RECIPE

LUONG = ["--preset", "lstm-luong"]
ROWS = {
    "bigru-bahdanau": ["--preset", "bigru-bahdanau"],
    "luong-additive": [*LUONG, "--attention_score", "additive"],
    "luong-dot": [*LUONG, "--attention_score", "dot"],
    "luong-general": [*LUONG, "--attention_score", "general"],
    "luong-location": [*LUONG, "--attention_score", "location"],
    "luong-local-m-general": [*LUONG, "--attention_score", "general", "--attention_type", "local-m",
                              "--local_window", "10"],
    "luong-local-p-general": [*LUONG, "--attention_score", "general", "--attention_type", "local-p",
                              "--local_window", "10"],
}


@dataclass
class TableArguments:
    output_dir: str = field(default="runs/attention-table", metadata={"help": "one folder per row, and table.md"})
    dataset: str = field(default="data/bible-es-en", metadata={"help": "exported by scripts/export_corpus.py"})
    rows: list[str] = field(default_factory=lambda: list(ROWS), metadata={"help": f"some of {list(ROWS)}"})
    minutes: float = field(default=14.0, metadata={"help": "training time of each row"})
    luong_input_feeding: bool = field(default=True, metadata={"help": "feed c_{t-1} in the lstm-luong rows"})
    vocab_size: int = field(default=8000, metadata={"help": "of the one tokenizer every row uses"})
    max_source_length: int = 128
    max_train_samples: int | None = field(default=None, metadata={"help": "for a smoke test"})
    max_steps: int | None = field(default=None, metadata={"help": "also stop each row after this many updates"})
    max_eval_samples: int | None = field(default=None, metadata={
        "help": "validation pairs scored during training (default: the recipe's 300)"})
    test_samples: int | None = field(default=None, metadata={"help": "test pairs scored (default: all)"})
    max_new_tokens: int = field(default=160, metadata={"help": "longest test translation"})
    overwrite: bool = field(default=False, metadata={"help": "retrain rows whose results exist"})

    def __post_init__(self):
        unknown = [row for row in self.rows if row not in ROWS]
        if unknown:
            raise ValueError(f"Unknown --rows {unknown}; valid rows: {list(ROWS)}.")
        if not self.minutes > 0:
            raise ValueError(f"--minutes must be positive, got {self.minutes}.")


def python_command(script, *arguments):
    """The interpreter running this script, relative to the repository root, so that the commands copy elsewhere."""
    return [os.path.relpath(sys.executable), f"scripts/{script}.py", *map(str, arguments)]


def tokenizer_command(args):
    return python_command("train_tokenizer", "--train_file", f"{args.dataset}/train.jsonl", "--vocab_size",
                          args.vocab_size, "--output_dir", f"{args.output_dir}/tokenizer")


def train_command(args, row):
    model = ROWS[row]
    if row.startswith("luong-"):
        model = [*model, "--input_feeding", str(args.luong_input_feeding).lower()]
    if "location" in row:
        model = [*model, "--max_source_positions", args.max_source_length]
    limits = ["--max_train_samples", args.max_train_samples] if args.max_train_samples else []
    limits += ["--max_steps", args.max_steps] if args.max_steps else []
    limits += ["--max_eval_samples", args.max_eval_samples] if args.max_eval_samples else []
    return python_command(
        "train", *model, "--dataset", args.dataset, "--source_lang", "es", "--target_lang", "en",
        "--tokenizer", f"{args.output_dir}/tokenizer", "--output_dir", f"{args.output_dir}/{row}/trainer",
        "--overwrite_output_dir", "true", "--max_train_minutes", args.minutes, *limits,
        "--max_source_length", args.max_source_length, *DEFAULT_RECIPE,
        "--logging_steps", 25, "--report_to", "tensorboard", "--dataloader_num_workers", 0)


def evaluate_command(args, row, num_beams):
    limits = ["--max_samples", args.test_samples] if args.test_samples else []
    return python_command("evaluate_model", "--model", f"{args.output_dir}/{row}/trainer", "--dataset", args.dataset,
                          "--split", "test", "--num_beams", num_beams, "--max_source_length", args.max_source_length,
                          "--max_new_tokens", args.max_new_tokens, *limits,
                          "--output_dir", f"{args.output_dir}/{row}/test-beam{num_beams}")


def run(command):
    print("+", shlex.join(command), flush=True)
    subprocess.run(command, check=True)


def row_results(args, row):
    """Steps reached, the step of the evaluated (best) checkpoint, and greedy and beam-5 BLEU/chrF of one row."""
    folder = Path(args.output_dir) / row
    state = json.loads((folder / "trainer" / "trainer_state.json").read_text())
    scores = {beams: json.loads((folder / f"test-beam{beams}" / "metrics.json").read_text()) for beams in (1, 5)}
    return {"steps": state["global_step"], "best_step": state.get("best_global_step"),
            **{f"{metric}{beams}": scores[beams][metric] for beams in (1, 5) for metric in ("bleu", "chrf")},
            "sentences": scores[5]["num_sentences"]}


def machine():
    model_names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    cpu = model_names[0] if model_names else platform.processor() or "unknown CPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"{platform.system()} {platform.release()}")


def markdown(args, results, commands):
    budget = f"{args.minutes:g} minutes" + (f" or {args.max_steps} updates" if args.max_steps else "")
    pairs = f"the first {args.max_train_samples} training pairs" if args.max_train_samples else "all training pairs"
    lines = [
        f"Trained {budget} per row ({pairs}) on {machine()}, {time.strftime('%Y-%m-%d')}; data `{args.dataset}`, "
        f"one {args.vocab_size}-type tokenizer, test split ({next(iter(results.values()))['sentences']} sentences); "
        f"BLEU and chrF by sacreBLEU.", "",
        "| row | steps reached | best step | greedy BLEU | greedy chrF | beam-5 BLEU | beam-5 chrF |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {row} | {r['steps']} | {r['best_step']} | {r['bleu1']:.2f} | {r['chrf1']:.2f} | {r['bleu5']:.2f} "
              f"| {r['chrf5']:.2f} |" for row, r in results.items()]
    lines += ["", "Commands (from the repository root):", "", "```bash", shlex.join(tokenizer_command(args))]
    lines += [shlex.join(command) for row in results for command in commands[row]]
    return "\n".join([*lines, "```", ""])


def main(argv=None):
    (args,) = HfArgumentParser(TableArguments).parse_args_into_dataclasses(args=argv)
    os.chdir(Path(__file__).resolve().parent.parent)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)  # everything is local, as in scripts/main.sh
    if not (Path(args.dataset) / "train.jsonl").exists():
        run(python_command("export_corpus", "--output_dir", args.dataset))
    if not (Path(args.output_dir) / "tokenizer" / "tokenizer.json").exists():
        run(tokenizer_command(args))
    commands, results = {}, {}
    for row in args.rows:
        commands[row] = [train_command(args, row), *(evaluate_command(args, row, beams) for beams in (1, 5))]
        if args.overwrite or not (Path(args.output_dir) / row / "test-beam5" / "metrics.json").exists():
            for command in commands[row]:
                run(command)
        results[row] = row_results(args, row)
    table = markdown(args, results, commands)
    (Path(args.output_dir) / "table.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
