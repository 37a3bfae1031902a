"""Train the joint source/target subword tokenizer and save it for `AutoTokenizer.from_pretrained`.

Usage:
    python scripts/train_tokenizer.py --train_file data/train.jsonl --output_dir runs/tokenizer
    python scripts/train_tokenizer.py --train_file data/train.jsonl --source_lang es --target_lang en \
        --vocab_size 8000 --model bpe --output_dir runs/tokenizer
"""

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_rnn_attn.tokenizer_training import SUBWORD_MODELS, train_translation_tokenizer


@dataclass
class TokenizerTrainingArguments:
    train_file: str = field(metadata={"help": 'JSON lines, one {"translation": {"es": ..., "en": ...}} per line.'})
    output_dir: str = field(metadata={"help": "Folder to save the tokenizer into."})
    source_lang: str = field(default="es", metadata={"help": "Key of the source text in each translation."})
    target_lang: str = field(default="en", metadata={"help": "Key of the target text in each translation."})
    vocab_size: int = field(default=8000, metadata={"help": "Size of the one vocabulary shared by both languages."})
    model: str = field(default="bpe", metadata={"help": "Subword model.", "choices": SUBWORD_MODELS})


def main():
    (args,) = HfArgumentParser(TokenizerTrainingArguments).parse_args_into_dataclasses()
    with open(args.train_file, encoding="utf-8") as lines:
        translations = [json.loads(line)["translation"] for line in lines if line.strip()]
    tokenizer = train_translation_tokenizer(
        [pair[args.source_lang] for pair in translations],
        [pair[args.target_lang] for pair in translations],
        vocab_size=args.vocab_size,
        model=args.model,
    )
    tokenizer.save_pretrained(args.output_dir)
    print(f"Saved a {len(tokenizer)}-token {args.model} tokenizer from {len(translations)} pairs to {args.output_dir}")


if __name__ == "__main__":
    main()
