"""The RV1909 -> WEB corpus: alignment at the places where the two texts number verses differently."""

import json
import re

import datasets
import pytest

from hf_rnn_attn import bible_corpus
from hf_rnn_attn.bible_corpus import (
    CorpusNotInstalledError,
    aligned_verse_pairs,
    export_translation_corpus,
    split_pairs,
)

TRICKY_BOOKS = ["Num", "Ps", "Acts", "Rom", "2Cor", "3John"]


@pytest.fixture(scope="module")
def pairs():
    return aligned_verse_pairs(TRICKY_BOOKS)


@pytest.fixture(scope="module")
def by_spanish_ref(pairs):
    return {ref: pair for pair in pairs for ref in pair.es_refs}


def test_numbers_30_is_shifted_by_one_verse(by_spanish_ref):
    # RV1909 keeps the Hebrew numbering (30:1 = English 29:40) inside KJV verse slots.
    assert by_spanish_ref["Num.30.1"].en_refs == ("Num.29.40",)
    vows = by_spanish_ref["Num.30.2"]
    assert vows.en_refs == ("Num.30.1",)
    assert "príncipes de las tribus" in vows.es and "heads of the tribes" in vows.en
    # Seventeen Hebrew verses in sixteen slots: the last RV1909 verse holds two English ones.
    last = by_spanish_ref["Num.30.16"]
    assert last.en_refs == ("Num.30.15", "Num.30.16")
    assert "anulare" in last.es and "null and void" in last.en and "statutes" in last.en


def test_psalm_title_starts_verse_one_on_both_sides(by_spanish_ref):
    psalm = by_spanish_ref["Ps.3.1"]
    assert psalm.es.startswith("Salmo de David, cuando huía de delante de Absalom")
    assert psalm.en.startswith("A Psalm by David, when he fled from Absalom his son. Yahweh,")
    assert by_spanish_ref["Ps.119.1"].en.startswith("ALEPH Blessed")


def test_romans_doxology_is_dropped_not_paired_with_a_neighbour(pairs, by_spanish_ref):
    # RV1909 has the doxology at 16:25-27, the WEB at the end of 14:23: no verse pair holds it.
    doxology = ("al que puede confirmaros", "to him who is able to establish you")
    assert not any(doxology[0] in pair.es or doxology[1] in pair.en for pair in pairs)
    grace = by_spanish_ref["Rom.16.24"]
    assert grace.en_refs == ("Rom.16.24",) and "grace" in grace.en
    assert "Cencreas" not in grace.es  # the KJV subscription after the last verse is not text


def test_2_corinthians_13_merged_greetings_make_one_pair(by_spanish_ref):
    greetings = by_spanish_ref["2Cor.13.12"]
    assert greetings.en_refs == ("2Cor.13.12", "2Cor.13.13")
    assert greetings.id == "2Cor.13.12-2Cor.13.13"
    assert "santos os saludan" in greetings.es and "saints greet you" in greetings.en
    blessing = by_spanish_ref["2Cor.13.13"]
    assert blessing.en_refs == ("2Cor.13.14",)
    assert blessing.es.endswith("Amén.") and "fellowship of the Holy Spirit" in blessing.en


def test_3_john_ends_with_one_pair(pairs):
    last = [pair for pair in pairs if pair.chapter == "3John.1"][-1]
    assert last.id == "3John.1.14"
    assert "Saluda tú á los amigos por nombre" in last.es and "Greet the friends by name" in last.en


def test_verse_the_web_leaves_out_is_dropped(by_spanish_ref):
    assert "Acts.8.37" not in by_spanish_ref
    assert by_spanish_ref["Acts.8.38"].en_refs == ("Acts.8.38",)


def test_texts_are_plain(pairs):
    for pair in pairs:
        for text in (pair.es, pair.en):
            assert text and text == text.strip() and "  " not in text
            assert not re.search(r"[<>]|strong:|\b[GH]\d{3,5}\b", text), pair.id


def test_split_is_deterministic_by_whole_chapters(pairs):
    splits = split_pairs(pairs, validation_size=200, test_size=200)
    assert splits == split_pairs(pairs, validation_size=200, test_size=200)
    assert sum(len(rows) for rows in splits.values()) == len(pairs)
    chapters = {split: {pair.chapter for pair in rows} for split, rows in splits.items()}
    assert not chapters["train"] & chapters["validation"]
    assert not chapters["train"] & chapters["test"]
    assert not chapters["validation"] & chapters["test"]
    assert all(len(splits[split]) >= 200 for split in ("validation", "test"))


def test_tiny_slice_still_fills_every_split(tmp_path):
    stats = export_translation_corpus(tmp_path, max_pairs=5, books=["Ruth"])
    assert stats["pairs"] == {"train": 3, "validation": 1, "test": 1}


@pytest.mark.parametrize("source_lang, target_lang", [("es", "en"), ("en", "es")])
def test_export_writes_loadable_translation_jsonl(tmp_path, source_lang, target_lang):
    stats = export_translation_corpus(tmp_path, source_lang, target_lang, books=["Ruth", "Jonah"])
    dataset = datasets.load_dataset("json", data_files={s: str(tmp_path / f"{s}.jsonl") for s in stats["pairs"]})
    assert {split: dataset[split].num_rows for split in dataset} == stats["pairs"]
    row = dataset["train"][0]
    assert list(row["translation"]) == [source_lang, target_lang]
    assert row["id"] == "Ruth.1.1"
    ids = [pair_id for split in dataset for pair_id in dataset[split]["id"]]
    assert len(ids) == len(set(ids))
    assert json.loads((tmp_path / "stats.json").read_text()) == stats


def test_unsupported_language_pair_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="supports es->en and en->es"):
        export_translation_corpus(tmp_path, "es", "fr")


def test_unknown_book_is_rejected():
    with pytest.raises(ValueError, match="unknown book"):
        aligned_verse_pairs(["Tobit"])


def test_missing_diatheke_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CorpusNotInstalledError, match="apt-get install diatheke sword-text-sparv sword-text-web"):
        aligned_verse_pairs(["Ruth"])


def test_missing_module_is_named(monkeypatch):
    monkeypatch.setitem(bible_corpus.MODULES, "es", "NoSuchBible")
    with pytest.raises(CorpusNotInstalledError, match="NoSuchBible.*scripts/setup.sh"):
        aligned_verse_pairs(["Ruth"])


@pytest.mark.slow
def test_full_export(tmp_path):
    stats = export_translation_corpus(tmp_path)
    assert 30_000 < sum(stats["pairs"].values()) < 31_102
    assert 900 <= stats["pairs"]["validation"] <= 1100 and 900 <= stats["pairs"]["test"] <= 1100
    ids = [json.loads(line)["id"] for split in stats["pairs"] for line in open(tmp_path / f"{split}.jsonl")]
    assert len(ids) == len(set(ids))
