"""Turn a finished training run into a Hub-ready model folder with a model card carrying its scores.

Usage:
    python scripts/make_hub_folder.py --run_dir runs/bigru-bahdanau --dataset data/bible-es-en \
        --output_dir runs/bigru-bahdanau/model
    hf-rnn-attn push --folder runs/bigru-bahdanau/model --repo_id you/rnn-attn-es-en --dry_run

Reads the model from RUN_DIR/trainer, test scores from RUN_DIR/test-beam5 and RUN_DIR/test-beam1 (written by
scripts/evaluate_model.py, whose recorded settings say which data and decoding the card names) and the training
budget from the trainer state.
"""

import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, HfArgumentParser

import hf_rnn_attn  # noqa: F401  (registers the model with the Auto classes)
from hf_rnn_attn.bible_corpus import MODULES
from hf_rnn_attn.hub import save_for_hub

BIBLE_CORPUS = {
    "name": "Reina-Valera 1909 (es) / World English Bible (en), verse-aligned, from Debian's SWORD packages",
    "description": "Public-domain texts; the split keeps whole chapters in one split.",
}


@dataclass
class HubFolderArguments:
    run_dir: str
    output_dir: str
    dataset: str = "data/bible-es-en"
    repo_id: str | None = field(default=None, metadata={"help": "Hub id the card's examples load from; "
                                                                "default rnn-attn-<preset>-<src>-<tgt>"})
    source_lang: str = "es"
    target_lang: str = "en"

    def __post_init__(self):
        run = Path(self.run_dir).resolve()
        if Path(self.output_dir).resolve() in (run, run / "trainer"):
            raise ValueError(f"--output_dir {self.output_dir} is the run folder or its trainer folder, whose model it "
                             f"would overwrite; choose a new folder, e.g. {Path(self.run_dir) / 'model'}.")


def read_json(path):
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def dataset_facts(dataset, settings):
    """The card's data set: the Bible corpus only for an export of it (its stats.json says so), else the folder
    or Hub dataset that was evaluated."""
    stats = read_json(Path(dataset) / "stats.json")
    if stats.get("modules") == MODULES:
        facts = dict(BIBLE_CORPUS)
    elif Path(dataset).is_dir():
        facts = {"name": Path(dataset).resolve().name}
    else:
        facts = {"id": dataset, "config": settings.get("dataset_config")}
    facts["split"] = settings.get("split", "test")
    return {**facts, **{f"{split}_pairs": count for split, count in stats.get("pairs", {}).items()}}


def decoding(settings):
    """How scripts/evaluate_model.py decoded, from the settings it records."""
    beams = settings.get("num_beams")
    text = "greedy decoding" if beams == 1 else f"beam search ({beams} beams)" if beams else "unrecorded decoding"
    return text + (f", on the first {settings['max_samples']} pairs" if settings.get("max_samples") else "")


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
    training_info = {
        "steps": state.get("global_step"),
        "epochs": round(state["epoch"], 2) if "epoch" in state else None,
        "train_time": f"{train_metrics['train_runtime'] / 60:.1f} minutes" if "train_runtime" in train_metrics else None,
        "best_validation_bleu": state.get("best_metric"),
        "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
    }
    settings = beam.get("settings") or greedy.get("settings") or {}
    dataset_info = dataset_facts(settings.get("dataset", args.dataset), settings)
    decodings = [f"{scores} with {decoding(evaluation.get('settings', {}))}" for scores, evaluation in
                 (("BLEU and chrF", beam), ("greedy_bleu and greedy_chrf", greedy)) if evaluation]
    if decodings:
        dataset_info["decoding"] = "; ".join(decodings)
    repo_id = args.repo_id or f"rnn-attn-{run.name}-{args.source_lang}-{args.target_lang}"
    files = save_for_hub(model, tokenizer, args.output_dir, metrics=metrics, dataset_info=dataset_info,
                         src_lang=args.source_lang, tgt_lang=args.target_lang, training_info=training_info,
                         repo_id=repo_id)
    print(f"wrote {len(files)} files to {args.output_dir}: {', '.join(files)}")


if __name__ == "__main__":
    main(sys.argv[1:])
