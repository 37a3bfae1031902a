"""Loads a translation corpus: a local folder of train/validation/test .jsonl files or a Hub dataset.

Rows use the Hugging Face translation format, `{"translation": {"es": ..., "en": ...}}`. Local files are
checked line by line first, because `datasets` reports a bad line as an Arrow error that names neither
the file nor the line.
"""

import json
import os
from pathlib import Path

import datasets

SPLITS = ("train", "validation", "test")


def load_translation_dataset(
    data: str | os.PathLike, source_lang: str, target_lang: str, config_name: str | None = None
) -> datasets.DatasetDict:
    """The dataset at `data` (a local folder, else a Hub name such as "wmt16" with `config_name` "ro-en")."""
    if Path(data).is_dir():
        files = {split: str(_checked_file(Path(data) / f"{split}.jsonl", source_lang, target_lang)) for split in SPLITS}
        return datasets.load_dataset("json", data_files=files)
    # "org/name" is a Hub name unless "org" is a local folder: then a local folder was meant.
    if str(data).startswith((".", "/", "~")) or Path(data).parent.name and Path(data).parent.is_dir():
        raise FileNotFoundError(f"no such data folder: {data}")
    dataset = datasets.load_dataset(str(data), config_name)
    for split, rows in dataset.items():
        _check_row(rows[0], source_lang, target_lang, where=f"{data} [{split}] row 0")
    return dataset


def _checked_file(path: Path, source_lang: str, target_lang: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {path} (a data folder needs {', '.join(SPLITS)} .jsonl files)")
    lines = 0
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: malformed JSON line ({error.msg})") from error
            _check_row(row, source_lang, target_lang, where=f"{path}:{number}")
            lines += 1
    if lines == 0:
        raise ValueError(f"data file {path} is empty")
    return path


def _check_row(row: object, source_lang: str, target_lang: str, where: str) -> None:
    translation = row.get("translation") if isinstance(row, dict) else None
    if not isinstance(translation, dict):
        raise ValueError(f'{where}: expected a row {{"translation": {{"{source_lang}": ..., "{target_lang}": ...}}}}')
    missing = [lang for lang in (source_lang, target_lang) if lang not in translation]
    if missing:
        raise ValueError(f"{where}: no {' or '.join(missing)} text; languages present: {sorted(translation)}")
