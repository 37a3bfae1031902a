"""Exports the Reina-Valera 1909 / World English Bible parallel corpus as Hugging Face translation jsonl.

Usage:
    .venv/bin/python scripts/export_corpus.py
    .venv/bin/python scripts/export_corpus.py --output_dir data/bible-en-es --source_lang en --target_lang es
    .venv/bin/python scripts/export_corpus.py --output_dir data/bible-ci --books Ruth Jonah

Needs the SWORD texts: apt-get install diatheke sword-text-sparv sword-text-web (or bash scripts/setup.sh).
"""

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_rnn_attn.bible_corpus import export_translation_corpus


@dataclass
class ExportArguments:
    output_dir: str = field(default="data/bible-es-en", metadata={"help": "Folder for the .jsonl files."})
    source_lang: str = field(default="es", metadata={"help": "es or en."})
    target_lang: str = field(default="en", metadata={"help": "en or es."})
    validation_size: int = field(default=1000, metadata={"help": "Validation pairs on the whole Bible."})
    test_size: int = field(default=1000, metadata={"help": "Test pairs on the whole Bible."})
    books: list[str] | None = field(default=None, metadata={"help": "OSIS book ids, e.g. Ruth Jonah."})
    max_pairs: int | None = field(default=None, metadata={"help": "Keep only the first N pairs."})


def main(argv=None) -> None:
    (args,) = HfArgumentParser(ExportArguments).parse_args_into_dataclasses(args=argv)
    stats = export_translation_corpus(**vars(args))
    print(json.dumps(stats, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
