"""Translate one split with a trained model and score it with BLEU and chrF (sacreBLEU), offline.

Usage:
    python scripts/evaluate_model.py --model runs/bigru --dataset data/bible-es-en --split test --num_beams 5 \
        --output_dir runs/bigru/eval-test-beam5
    python scripts/evaluate_model.py --model runs/bigru --num_beams 1 --max_samples 200 --output_dir /tmp/greedy

Writes hypotheses.txt (one line per source, in order) and metrics.json (BLEU, chrF, signatures, settings).
"""

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, HfArgumentParser

import hf_rnn_attn  # noqa: F401  (registers the model with the Auto classes)
from hf_rnn_attn.metrics import load_translation_metric
from hf_rnn_attn.training import check_positive
from hf_rnn_attn.translate import translate_texts
from hf_rnn_attn.translation_data import load_translation_dataset


@dataclass
class EvaluationArguments:
    model: str = field(metadata={"help": "trained model folder (with its tokenizer)"})
    output_dir: str = field(metadata={"help": "where hypotheses.txt and metrics.json go"})
    dataset: str = "data/bible-es-en"
    dataset_config: str | None = None
    split: str = "test"
    source_lang: str = "es"
    target_lang: str = "en"
    num_beams: int = 5
    max_new_tokens: int = 160
    batch_size: int = 64
    max_source_length: int = 128
    max_samples: int | None = None

    def __post_init__(self):
        check_positive(self, ("num_beams", "max_new_tokens", "batch_size", "max_source_length", "max_samples"))


def check_direction(args):
    """A model translates one way: scoring it on the other direction gives a meaningless BLEU."""
    config = AutoConfig.from_pretrained(args.model)
    recorded = (getattr(config, "src_lang", None), getattr(config, "tgt_lang", None))
    if None not in recorded and recorded != (args.source_lang, args.target_lang):
        raise ValueError(f"{args.model} translates {recorded[0]}->{recorded[1]} (config src_lang/tgt_lang), but "
                         f"--source_lang {args.source_lang} --target_lang {args.target_lang} asks for "
                         f"{args.source_lang}->{args.target_lang}.")


def main(argv=None):
    (args,) = HfArgumentParser(EvaluationArguments).parse_args_into_dataclasses(args=argv)
    check_direction(args)
    dataset = load_translation_dataset(args.dataset, args.source_lang, args.target_lang,
                                       config_name=args.dataset_config)
    if args.split not in dataset:
        raise SystemExit(f"error: split {args.split!r} not in the dataset; available: {list(dataset)}")
    pairs = dataset[args.split]["translation"]
    if args.max_samples is not None:
        pairs = pairs[: args.max_samples]
    sources = [pair[args.source_lang] for pair in pairs]
    references = [pair[args.target_lang] for pair in pairs]

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model)
    start = time.monotonic()
    hypotheses = translate_texts(model, tokenizer, sources, batch_size=args.batch_size,
                                 max_source_length=args.max_source_length, num_beams=args.num_beams,
                                 max_new_tokens=args.max_new_tokens)
    seconds = time.monotonic() - start
    scores = load_translation_metric().compute(predictions=hypotheses, references=references)

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "hypotheses.txt").write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    report = {"bleu": scores["bleu"], "chrf": scores["chrf"], "bleu_signature": scores["bleu_signature"],
              "chrf_signature": scores["chrf_signature"], "num_sentences": len(hypotheses),
              "translation_seconds": round(seconds, 1), "settings": asdict(args)}
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: report[k] for k in ("bleu", "chrf", "bleu_signature", "num_sentences")}, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
