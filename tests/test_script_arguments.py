"""The scripts refuse arguments that would silently give a wrong answer, naming the argument, and the model card
of make_hub_folder.py names the data and decoding that were measured."""

import json

import pytest

from hf_rnn_attn.tokenizer_training import train_translation_tokenizer
from script_helpers import SOURCES, TARGETS, load_script, save_tiny_run, tiny_tokenizer, write_corpus


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.mark.parametrize("arguments, message", [
    (["--max_steps", "-5", "--num_train_epochs", "0"], r"--max_steps must be a positive number of updates, or -1"),
    (["--max_steps", "0"], r"--max_steps must be a positive number of updates"),
    (["--num_train_epochs", "0"], r"--num_train_epochs must be positive \(or set --max_steps\); got 0"),
    (["--max_source_length", "0"], r"--max_source_length must be positive, got 0"),
    (["--max_train_samples", "-1"], r"--max_train_samples must be positive, got -1"),
    (["--pad_to_multiple_of", "0"], r"--pad_to_multiple_of must be positive, got 0"),
    (["--vocab_size", "0"], r"--vocab_size must be positive, got 0"),
])
def test_train_refuses_a_run_that_cannot_be_right(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        load_script("train").main(["--dataset", str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "run"),
                                   *arguments])


def test_train_refuses_a_vocabulary_smaller_than_the_alphabet(tmp_path):
    with pytest.raises(ValueError, match=r"`vocab_size` 5 is smaller than the special tokens plus the characters of "
                                         r"the training text \(\d+ types\)"):
        load_script("train").main(["--dataset", str(write_corpus(tmp_path / "data")), "--output_dir",
                                   str(tmp_path / "run"), "--vocab_size", "5"])
    with pytest.raises(ValueError, match=r"`vocab_size` must be a positive integer, got -3"):
        train_translation_tokenizer(SOURCES, TARGETS, vocab_size=-3)


@pytest.mark.parametrize("arguments, message", [
    (["--max_samples", "-5"], r"--max_samples must be positive, got -5"),
    (["--max_samples", "0"], r"--max_samples must be positive, got 0"),
    (["--num_beams", "0"], r"--num_beams must be positive, got 0"),
    (["--source_lang", "en", "--target_lang", "es"],
     r"translates es->en \(config src_lang/tgt_lang\), but --source_lang en --target_lang es asks for en->es"),
])
def test_evaluate_refuses_bad_arguments_and_the_reverse_direction(tmp_path, tokenizer, arguments, message):
    run = save_tiny_run(tmp_path / "run", tokenizer)
    with pytest.raises(ValueError, match=message):
        load_script("evaluate_model").main(["--model", str(run / "trainer"), "--dataset",
                                            str(write_corpus(tmp_path / "data")), "--max_new_tokens", "3",
                                            "--output_dir", str(tmp_path / "eval"), *arguments])
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("argument, value", [("max_pairs", "0"), ("max_pairs", "-3"), ("validation_size", "0"),
                                             ("validation_size", "-5"), ("test_size", "0")])
def test_export_refuses_empty_or_negative_sizes(tmp_path, argument, value):
    with pytest.raises(ValueError, match=rf"`{argument}` must be a positive integer, got {value}"):
        load_script("export_corpus").main(["--output_dir", str(tmp_path / "data"), "--books", "Ruth",
                                           f"--{argument}", value])
    assert not (tmp_path / "data").exists()


def test_hub_folder_card_names_the_measured_data_and_decoding(tmp_path, tokenizer):
    run = save_tiny_run(tmp_path / "run", tokenizer)
    settings = {"dataset": "someone/parallel-news", "dataset_config": "es-en", "split": "validation",
                "num_beams": 3, "max_samples": 50}
    (run / "test-beam5").mkdir()
    (run / "test-beam5" / "metrics.json").write_text(json.dumps({"bleu": 12.5, "chrf": 40.0, "settings": settings}))
    load_script("make_hub_folder").main(["--run_dir", str(run), "--output_dir", str(run / "model")])
    card = (run / "model" / "README.md").read_text(encoding="utf-8")
    assert "Bible" not in card and "Reina-Valera" not in card and "5 beams" not in card
    assert "- Decoding: BLEU and chrF with beam search (3 beams), on the first 50 pairs" in card
    assert "greedy" not in card.split("## Evaluation")[1].split("## How to use")[0]  # no greedy run was measured
    assert "someone/parallel-news" in card and "validation split" in card


def test_hub_folder_card_names_the_bible_for_a_bible_export(tmp_path, tokenizer):
    run = save_tiny_run(tmp_path / "run", tokenizer)
    data = write_corpus(tmp_path / "data")
    stats = {"modules": {"es": "spaRV1909eb", "en": "engWEB2015eb"}, "pairs": {"train": 20}}
    (data / "stats.json").write_text(json.dumps(stats))
    for beams in (1, 5):
        (run / f"test-beam{beams}").mkdir()
        settings = {"dataset": str(data), "split": "test", "num_beams": beams}
        (run / f"test-beam{beams}" / "metrics.json").write_text(json.dumps({"bleu": 10.0, "settings": settings}))
    load_script("make_hub_folder").main(["--run_dir", str(run), "--output_dir", str(run / "model")])
    card = (run / "model" / "README.md").read_text(encoding="utf-8")
    assert "Reina-Valera 1909" in card and "- Train pairs: 20" in card
    assert ("- Decoding: BLEU and chrF with beam search (5 beams); greedy_bleu and greedy_chrf with greedy decoding"
            in card)
