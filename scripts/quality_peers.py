"""Translation quality for the same training time: OpenNMT-py 3.0.4's RNN recipe against this package's default
recipe, at one model shape, on one split, one subword segmentation and one machine.

Usage:
    .venv/bin/pip install -e ".[bench]"                                           # OpenNMT-py 3.0.4
    .venv/bin/python scripts/quality_peers.py --tokenizer runs/tok8k              # bigru-bahdanau, 2 x 30 minutes
    .venv/bin/python scripts/quality_peers.py --tokenizer runs/tok8k --preset lstm-luong
    .venv/bin/python scripts/quality_peers.py --minutes 1 --decode_sentences 40 --output_dir runs/quality-smoke

The shape is scripts/benchmark_peers.py's (joint 8k subwords, embedding 256, decoder 256; BiGRU 2x128 or a 2-layer
LSTM 256). OpenNMT-py trains with the settings of that benchmark (Adam 1e-3, batch 64 sentences, dropout 0), for
--minutes of wall-clock time (scripts/onmt_train_for.py stops its loop and saves); this package trains with
scripts/recipe.py through scripts/train.py --max_train_minutes, keeping its best checkpoint by validation BLEU. One
after the other, each with --threads threads. Each then translates the test split through its own command line,
greedy and beam 5, and both are scored by the same sacreBLEU BLEU and chrF on detokenized text. Prints one markdown
table; writes it with the raw numbers to OUTPUT_DIR/results.json.
"""

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from transformers import HfArgumentParser

from benchmark_peers import (BIN, PRESETS, REFERENCE_SHAPE, TRAIN_SCRIPT, cpu_line, describe_machine,
                             load_or_train_tokenizer, onmt_settings, prepare_data, run_measured, train_onmt,
                             translate_onmt, translate_ours)
from hf_rnn_attn.metrics import load_translation_metric
from recipe import DEFAULT_RECIPE


@dataclass
class QualityArguments:
    dataset: str = field(default="data/bible-es-en", metadata={"help": "Folder with train/validation/test.jsonl."})
    preset: str = field(default="bigru-bahdanau", metadata={"help": f"Architecture: {' or '.join(PRESETS)}."})
    minutes: float = field(default=30.0, metadata={"help": "Training time of each toolkit, from its first step."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Data, models, logs, results.json (default: runs/quality_peers/PRESET)."})
    source_lang: str = "es"
    target_lang: str = "en"
    tokenizer: str | None = field(default=None, metadata={"help": "Joint tokenizer folder (default: train one)."})
    vocab_size: int = field(default=8000, metadata={"help": "Size of the joint vocabulary when training one."})
    decode_sentences: int | None = field(default=None, metadata={"help": "First test verses scored (default: all)."})
    num_beams: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "Beam sizes scored."})
    max_length: int = field(default=200, metadata={"help": "Longest translation in subword tokens."})
    threads: int = 2
    seed: int = 1
    reuse: bool = field(default=False, metadata={"help": "Keep models already trained in output_dir; decode again."})
    onmt_bucket_size: int | None = field(default=None, metadata={
        "help": "OpenNMT-py's bucket_size (default: its own, 262144 examples, filled within its time budget)."})

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if not self.minutes > 0:
            raise ValueError(f"--minutes must be positive, got {self.minutes}")


def ours_train_command(args, tokenizer_folder, model_dir):
    """scripts/train.py at the reference shape with the package's default recipe and a wall-clock budget."""
    return [sys.executable, TRAIN_SCRIPT, *PRESETS[args.preset]["ours"], *REFERENCE_SHAPE, *DEFAULT_RECIPE,
            "--max_train_minutes", args.minutes, "--seed", args.seed, "--tokenizer", tokenizer_folder,
            "--dataset", args.dataset, "--source_lang", args.source_lang, "--target_lang", args.target_lang,
            "--output_dir", model_dir, "--overwrite_output_dir", "true", "--report_to", "none",
            "--logging_steps", 50, "--dataloader_num_workers", 0, "--use_cpu", "true"]


def train_ours_for(args, tokenizer_folder, folder):
    model_dir = folder / "model"
    run = run_measured(ours_train_command(args, tokenizer_folder, model_dir), folder / "train.log",
                       {"OMP_NUM_THREADS": str(args.threads)})
    state = json.loads((model_dir / "trainer_state.json").read_text())
    return {**run, "steps": state["global_step"], "model_step": state.get("best_global_step") or state["global_step"]}


def newest_onmt_checkpoint(folder):
    checkpoints = sorted(folder.glob("model_step_*.pt"), key=lambda path: int(path.stem.rsplit("_", 1)[1]))
    if not checkpoints:
        sys.exit(f"OpenNMT-py saved no checkpoint in {folder}; see {folder / 'train.log'}")
    return checkpoints[-1]


def train_onmt_for(args, data, folder):
    train = train_onmt(args, data, folder, minutes=args.minutes)
    return {**train, "model_step": train["steps"]}


def run_toolkit(name, args, data, tokenizer, tokenizer_folder, out):
    """Train (or reuse) one toolkit's model, translate the test sources with each beam size; raw results."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / "training.json"
    if args.reuse and saved.is_file():
        train = json.loads(saved.read_text())
    else:
        train = train_onmt_for(args, data, folder) if name == "onmt" else train_ours_for(args, tokenizer_folder, folder)
        saved.write_text(json.dumps(train, indent=2))
    if name == "onmt":
        model_path = newest_onmt_checkpoint(folder)
        decodes = {beams: translate_onmt(args, data, folder, model_path, tokenizer, beams) for beams in args.num_beams}
    else:
        decodes = {beams: translate_ours(args, data, folder, beams) for beams in args.num_beams}
    return train, {beams: hypotheses for beams, (_, hypotheses) in decodes.items()}


def scores(hypotheses, references, metric):
    result = metric.compute(predictions=hypotheses, references=references)
    return {"bleu": result["bleu"], "chrf": result["chrf"], "length_ratio": result["length_ratio"]}


def markdown_table(args, results):
    theirs, ours = results["onmt"], results["ours"]
    lines = ["| | OpenNMT-py 3.0.4 | hf_rnn_attn | difference |", "|---|---:|---:|---:|",
             f"| training steps reached | {theirs['train']['steps']:,} | {ours['train']['steps']:,} | |",
             f"| step of the model scored | {theirs['train']['model_step']:,} | {ours['train']['model_step']:,} | |"]
    for beams in args.num_beams:
        name = "greedy" if beams == 1 else f"beam {beams}"
        a, b = theirs["scores"][str(beams)], ours["scores"][str(beams)]
        lines += [f"| {name}: BLEU | {a['bleu']:.2f} | {b['bleu']:.2f} | {b['bleu'] - a['bleu']:+.2f} |",
                  f"| {name}: chrF | {a['chrf']:.2f} | {b['chrf']:.2f} | {b['chrf'] - a['chrf']:+.2f} |",
                  f"| {name}: output/reference length | {a['length_ratio']:.3f} | {b['length_ratio']:.3f} | |"]
    return "\n".join(lines)


def main(argv=None):
    (args,) = HfArgumentParser(QualityArguments).parse_args_into_dataclasses(args=argv)
    if not (BIN / "onmt_train").is_file():
        sys.exit('OpenNMT-py is not installed next to this Python: pip install -e ".[bench]"')
    out = Path(args.output_dir or f"runs/quality_peers/{args.preset}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine(args.threads)
    print(f"{cpu_line(machine)}; torch {machine['torch']}, {args.threads} threads; {args.minutes:g} minutes of "
          f"training each")

    tokenizer, tokenizer_folder = load_or_train_tokenizer(args, out)
    data, _ = prepare_data(args, tokenizer, out)
    references = (data / "test.ref.txt").read_text(encoding="utf-8").splitlines()
    metric = load_translation_metric()
    results = {}
    for name in ("onmt", "ours"):
        train, hypotheses = run_toolkit(name, args, data, tokenizer, tokenizer_folder, out)
        results[name] = {"train": train, "scores": {str(beams): scores(lines, references, metric)
                                                    for beams, lines in hypotheses.items()}}
    table = markdown_table(args, results)
    print(f"\n{table}\n\n{len(references)} test verses of {args.dataset}; each toolkit trained {args.minutes:g} minutes "
          f"on {machine['cpu']} with {args.threads} threads.")
    (out / "results.json").write_text(json.dumps(
        {"measured_at": datetime.now().isoformat(timespec="seconds"), "machine": machine, "arguments": vars(args),
         "ours_train_command": [str(part) for part in ours_train_command(args, tokenizer_folder, out / "ours" / "model")],
         "onmt_settings": onmt_settings(args.preset), "table": table, **results}, indent=2))
    print(f"Wrote {out / 'results.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
