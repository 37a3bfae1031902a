"""Loading a translation corpus folder, and the errors a broken folder gives."""

import json

import pytest

from hf_rnn_attn.translation_data import load_translation_dataset

ROW = {"translation": {"es": "En el principio", "en": "In the beginning"}, "id": "Gen.1.1"}


def write_corpus(folder, rows_by_split=None):
    folder.mkdir(exist_ok=True)
    for split in ("train", "validation", "test"):
        rows = (rows_by_split or {}).get(split, [ROW, ROW])
        (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in rows_as_lines(rows)))
    return folder


def rows_as_lines(rows):
    return [row if isinstance(row, str) else json.dumps(row) for row in rows]


def test_loads_all_splits(tmp_path):
    dataset = load_translation_dataset(write_corpus(tmp_path / "corpus"), "es", "en")
    assert {split: dataset[split].num_rows for split in dataset} == {"train": 2, "validation": 2, "test": 2}
    assert dataset["test"][0]["translation"] == ROW["translation"]


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        load_translation_dataset(str(tmp_path / "nowhere"), "es", "en")


def test_missing_file(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    (folder / "validation.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="validation.jsonl"):
        load_translation_dataset(folder, "es", "en")


def test_empty_file(tmp_path):
    folder = write_corpus(tmp_path / "corpus", {"test": []})
    with pytest.raises(ValueError, match=r"test\.jsonl is empty"):
        load_translation_dataset(folder, "es", "en")


def test_malformed_line_names_file_and_line(tmp_path):
    folder = write_corpus(tmp_path / "corpus", {"train": [ROW, '{"translation": {"es": "a",']})
    with pytest.raises(ValueError, match=r"train\.jsonl:2: malformed JSON"):
        load_translation_dataset(folder, "es", "en")


def test_row_without_translation(tmp_path):
    folder = write_corpus(tmp_path / "corpus", {"train": [{"es": "a", "en": "b"}]})
    with pytest.raises(ValueError, match=r"train\.jsonl:1: expected a row"):
        load_translation_dataset(folder, "es", "en")


def test_missing_language_names_those_present(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    with pytest.raises(ValueError, match=r"no fr text; languages present: \['en', 'es'\]"):
        load_translation_dataset(folder, "fr", "en")
