"""Turn a finished training run into a Hub-ready model folder with a model card carrying its scores.

Usage:
    python scripts/make_hub_folder.py --run_dir runs/bigru-bahdanau --dataset data/bible-es-en \
        --output_dir runs/bigru-bahdanau/model
    hf-rnn-attn push --folder runs/bigru-bahdanau/model --repo_id you/rnn-attn-es-en --dry_run

Reads the model from RUN_DIR/trainer, test scores from RUN_DIR/test-beam5 and RUN_DIR/test-beam1 (written by
scripts/evaluate_model.py) and the training budget from the trainer state.
"""

import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, HfArgumentParser

import hf_rnn_attn  # noqa: F401  (registers the model with the Auto classes)
from hf_rnn_attn.hub import save_for_hub


@dataclass
class HubFolderArguments:
    run_dir: str
    output_dir: str
    dataset: str = "data/bible-es-en"
    repo_id: str | None = field(default=None, metadata={"help": "Hub id the card's examples load from; "
                                                                "default rnn-attn-<preset>-<src>-<tgt>"})
    source_lang: str = "es"
    target_lang: str = "en"


def read_json(path):
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def main(argv=None):
    (args,) = HfArgumentParser(HubFolderArguments).parse_args_into_dataclasses(args=argv)
    run = Path(args.run_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(run / "trainer")
    tokenizer = AutoTokenizer.from_pretrained(run / "trainer")
    beam, greedy = read_json(run / "test-beam5" / "metrics.json"), read_json(run / "test-beam1" / "metrics.json")
    metrics = {key: beam[key] for key in ("bleu", "chrf", "bleu_signature", "chrf_signature") if key in beam}
    metrics.update({f"greedy_{key}": greedy[key] for key in ("bleu", "chrf") if key in greedy})
    state = read_json(run / "trainer" / "trainer_state.json")
    train_metrics = read_json(run / "trainer" / "train_results.json")
    stats = read_json(Path(args.dataset) / "stats.json")
    training_info = {
        "steps": state.get("global_step"),
        "epochs": round(state["epoch"], 2) if "epoch" in state else None,
        "train_time": f"{train_metrics['train_runtime'] / 60:.1f} minutes" if "train_runtime" in train_metrics else None,
        "best_validation_bleu": state.get("best_metric"),
        "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
    }
    dataset_info = {
        "name": "Reina-Valera 1909 (es) / World English Bible (en), verse-aligned, from Debian's SWORD packages",
        "split": "test",
        "description": "Public-domain texts; the split keeps whole chapters in one split.",
        "decoding": "BLEU and chrF with beam search (5 beams); greedy_bleu and greedy_chrf with greedy decoding",
        **{f"{split}_pairs": count for split, count in stats.get("pairs", {}).items()},
    }
    repo_id = args.repo_id or f"rnn-attn-{run.name}-{args.source_lang}-{args.target_lang}"
    files = save_for_hub(model, tokenizer, args.output_dir, metrics=metrics, dataset_info=dataset_info,
                         src_lang=args.source_lang, tgt_lang=args.target_lang, training_info=training_info,
                         repo_id=repo_id)
    print(f"wrote {len(files)} files to {args.output_dir}: {', '.join(files)}")


if __name__ == "__main__":
    main(sys.argv[1:])
