"""Attention of the returned sequences (`alignment.sequence_attentions`), word alignments, heatmaps, and the
pipeline's and command line's attention output, bad inputs included."""

import functools
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from matplotlib.figure import Figure

import hf_rnn_attn
from hf_rnn_attn import RNNAttnForConditionalGeneration, cli
from hf_rnn_attn.alignment import (NoAttentionError, hard_alignment, merge_units, sequence_attentions, token_units,
                                   word_attention)
from hf_rnn_attn.hub import save_for_hub
from hf_rnn_attn.pipeline_translation import translation_pipeline
from hf_rnn_attn.tokenizer_training import train_translation_tokenizer
from tiny_models import VARIANTS, copy_task_sentences, source_batch, tiny_model, train_copy_model

EOS = 2
DECODINGS = {
    "greedy": {},
    "sampling": {"do_sample": True, "num_return_sequences": 2},
    "beam": {"num_beams": 4, "num_return_sequences": 3},
    "beam-sampling": {"num_beams": 3, "do_sample": True, "num_return_sequences": 2},
}
PHARAOH = re.compile(r"^(\d+-\d+( \d+-\d+)*)?$")


def generate_with_attentions(model, decoding, max_new_tokens=8):
    input_ids, attention_mask = source_batch()  # padded: rows of 7, 5 and 3 tokens
    torch.manual_seed(1)
    outputs = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             output_attentions=True, return_dict_in_generate=True, **DECODINGS[decoding])
    return input_ids, attention_mask, outputs


def teacher_forced_attentions(model, input_ids, attention_mask, sequences):
    """The attention of one forward pass over the returned sequences (N x T x S, T generated tokens)."""
    copies = sequences.shape[0] // input_ids.shape[0]
    with torch.no_grad():
        out = model(input_ids=input_ids.repeat_interleave(copies, 0),
                    attention_mask=attention_mask.repeat_interleave(copies, 0),
                    decoder_input_ids=sequences[:, :-1], output_attentions=True)
    return out.cross_attentions[-1][:, 0], attention_mask.repeat_interleave(copies, 0)


def generated_rows(sequences, length):
    """Which generated positions are tokens of the sequence (up to its first EOS) rather than padding after it."""
    generated = sequences[:, -length:]
    return (generated == EOS).long().cumsum(dim=1) - (generated == EOS).long() == 0


# ------------------------------------------------------------------------------------- sequence_attentions

@pytest.mark.parametrize("decoding", DECODINGS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_sequence_attentions_equal_the_teacher_forced_pass(variant, decoding):
    """Every score, with and without input feeding, every search, a padded batch: each returned sequence gets the
    attention a teacher-forced pass over that very sequence computes."""
    model = tiny_model(variant)
    input_ids, attention_mask, outputs = generate_with_attentions(model, decoding)
    weights = sequence_attentions(outputs, model.generation_config.eos_token_id)
    expected, source_mask = teacher_forced_attentions(model, input_ids, attention_mask, outputs.sequences)
    assert weights.shape == expected.shape == (outputs.sequences.shape[0], outputs.sequences.shape[1] - 1, 7)
    real = generated_rows(outputs.sequences, weights.shape[1])
    torch.testing.assert_close(weights[real], expected[real], rtol=0, atol=1e-6)
    assert (weights[~real] == 0).all()  # after the sequence's EOS
    assert (weights.masked_select(source_mask[:, None, :] == 0) == 0).all()  # source padding
    torch.testing.assert_close(weights[real].sum(dim=-1), torch.ones(int(real.sum())))


def test_beam_search_attentions_follow_the_beams_back():
    """Reading row n of each step would be wrong after beam search: the beams are reordered between steps."""
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask, outputs = generate_with_attentions(model, "beam")
    weights = sequence_attentions(outputs, EOS)
    per_row = torch.stack([step[-1][:, 0, -1] for step in outputs.cross_attentions], dim=1)[:weights.shape[0]]
    assert not torch.allclose(per_row[:, :weights.shape[1]], weights)
    expected, _ = teacher_forced_attentions(model, input_ids, attention_mask, outputs.sequences)
    real = generated_rows(outputs.sequences, weights.shape[1])
    torch.testing.assert_close(weights[real], expected[real], rtol=0, atol=1e-6)


def test_rows_after_the_end_are_zero():
    model = tiny_model("lstm-luong-general")
    _, _, outputs = generate_with_attentions(model, "sampling")
    weights = sequence_attentions(outputs, EOS)
    real = generated_rows(outputs.sequences, weights.shape[1])
    assert not real.all(), "no sampled sequence ended early: the test would not check the padding rows"
    assert (weights.sum(dim=-1) > 0).eq(real).all()


def test_outputs_without_attention_are_a_clear_error(monkeypatch):
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    message = r"no attention weights: call generate\(\.\.\., output_attentions=True, return_dict_in_generate=True\)"
    with pytest.raises(NoAttentionError, match=message):
        sequence_attentions(model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3), EOS)
    with pytest.raises(NoAttentionError, match=message):
        sequence_attentions(model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3,
                                           return_dict_in_generate=True), EOS)
    drop_attentions(monkeypatch)
    with pytest.raises(NoAttentionError, match=message):
        sequence_attentions(generate_with_attentions(model, "greedy")[2], EOS)


def drop_attentions(monkeypatch):
    """Makes RNNAttn models behave like a model that returns no attention weights."""
    forward = RNNAttnForConditionalGeneration.forward

    @functools.wraps(forward)  # generate() reads the signature to check its arguments
    def forward_without_attentions(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        output.cross_attentions = None
        return output

    monkeypatch.setattr(RNNAttnForConditionalGeneration, "forward", forward_without_attentions)


# --------------------------------------------------------------------------------- words and hard alignments

@pytest.fixture(scope="module")
def corpus():
    return copy_task_sentences()


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_translation_tokenizer(corpus, corpus, vocab_size=60)  # small: most words are several subwords


def test_subwords_are_grouped_into_the_words_typed(tokenizer):
    text = "el perro pequeño quiere fuego"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text.split()) + 5  # the words are split into subwords
    labels, units, is_word = token_units(tokenizer, ids)
    assert labels == [*text.split(), "</s>"] and is_word == [True] * 5 + [False]
    assert units == sorted(units) and units[-1] == 5  # each word's subwords in one run, </s> on its own
    for word, label in enumerate(labels[:-1]):
        pieces = [token for token, unit in zip(ids, units) if unit == word]
        assert tokenizer.decode(pieces).strip() == label


def test_merged_rows_average_and_merged_columns_add_up():
    weights = torch.tensor([[0.5, 0.25, 0.25],
                            [0.0, 1.00, 0.00],
                            [0.2, 0.20, 0.60]])  # target tokens x source tokens
    merged = merge_units(weights, target_units=[0, 0, 1], source_units=[0, 0, 1])
    torch.testing.assert_close(merged, torch.tensor([[0.875, 0.125], [0.4, 0.6]]))


def test_hard_alignment_is_pharaoh_with_reordering_and_without_special_tokens():
    # Source "la casa blanca </s>", target "the white house </s>": the adjective and the noun swap.
    weights = torch.tensor([[0.9, 0.05, 0.05, 0.0],
                            [0.0, 0.2, 0.7, 0.1],
                            [0.1, 0.8, 0.1, 0.0],
                            [0.0, 0.0, 0.1, 0.9]])
    assert hard_alignment(weights, [True, True, True, False], [True, True, True, False]) == "0-0 2-1 1-2"
    assert hard_alignment(weights[:0], [True] * 3 + [False], []) == ""


def test_word_attention_of_one_sentence(tokenizer):
    source_ids = tokenizer("el gato come")["input_ids"]  # el g a t o come </s>
    target_ids = tokenizer("come el gato")["input_ids"]
    weights = torch.zeros(len(target_ids), len(source_ids))
    source_position = {0: 5, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 6}  # each target token looks at one source token
    for target, source in source_position.items():
        weights[target, source] = 1.0
    record = word_attention(tokenizer, source_ids, target_ids, weights)
    assert record["source_tokens"] == ["el", "gato", "come", "</s>"]
    assert record["target_tokens"] == ["come", "el", "gato", "</s>"]
    assert record["alignment"] == "2-0 0-1 1-2"
    torch.testing.assert_close(record["attention"].sum(dim=1), torch.ones(4))


# ----------------------------------------------------------------------------------------------- heatmaps

def test_plot_attention_returns_a_labelled_figure(tmp_path):
    figure = hf_rnn_attn.plot_attention(["la", "casa", "blanca", "</s>"], ["the", "white", "house", "</s>"],
                                        torch.eye(4))
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["la", "casa", "blanca", "</s>"]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["the", "white", "house", "</s>"]
    assert len(figure.axes) == 2  # the heatmap and its colour bar
    figure.savefig(tmp_path / "attention.png")
    assert (tmp_path / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"`weights` has shape \(4, 4\), expected .* = \(3, 4\)"):
        hf_rnn_attn.plot_attention(["la", "casa", "blanca", "</s>"], ["the", "house", "</s>"], torch.eye(4))


# ---------------------------------------------------------------------------------- pipeline and CLI

@pytest.fixture(scope="module")
def saved(tokenizer, corpus, tmp_path_factory):
    model = train_copy_model(tokenizer, corpus)
    folder = tmp_path_factory.mktemp("copy") / "model"
    save_for_hub(model, tokenizer, folder)
    return SimpleNamespace(model=model, tokenizer=tokenizer, folder=folder)


def test_pipeline_returns_the_attention_of_each_translation(saved):
    translator = translation_pipeline(saved.model, saved.tokenizer)
    sources = ["el gato come", "", "la luna azul tiene agua", "el perro pequeño quiere fuego"]
    settings = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 12, "batch_size": 2}
    plain = translator(sources, **settings)
    records = translator(sources, return_attention=True, **settings)
    assert [[r["translation_text"] for r in rs] for rs in records] == [[r["translation_text"] for r in rs]
                                                                      for rs in plain]
    for source, sequences in zip(sources, records):
        for record in sequences:
            assert record["source_tokens"] == ([*source.split(), "</s>"] if source else [])
            assert record["translation_text"].split() == [t for t in record["target_tokens"] if t != "</s>"]
            attention = record["attention"]
            assert attention.shape == (len(record["target_tokens"]), len(record["source_tokens"]))
            torch.testing.assert_close(attention.sum(dim=1), torch.ones(len(attention)))
            assert PHARAOH.match(record["alignment"])
            pairs = [tuple(map(int, pair.split("-"))) for pair in record["alignment"].split()]
            assert [j for _, j in pairs] == list(range(len(record["translation_text"].split())))
            assert all(i < len(source.split()) for i, _ in pairs)
    for record in records[1]:  # the blank source
        assert record.pop("attention").shape == (0, 0)
        assert record == {"translation_text": "", "source_tokens": [], "target_tokens": [], "alignment": ""}


REMOTE_CODE = r"""
import json, sys
sys.modules["hf_rnn_attn"] = None  # the installed package cannot be imported: only the folder's code runs
from transformers import pipeline
translator = pipeline("translation", model=sys.argv[1], trust_remote_code=True, device="cpu")
record = translator(sys.argv[2], return_attention=True, num_beams=3, max_new_tokens=12)[0]
print(json.dumps({"translation_text": record["translation_text"], "alignment": record["alignment"],
                  "pipeline_module": type(translator).__module__}))
"""


def test_the_saved_folder_returns_attention_without_the_package(saved, tmp_path):
    env = {**{key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
           "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run([sys.executable, "-I", "-c", REMOTE_CODE, str(saved.folder), "el gato come"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    remote = json.loads(completed.stdout.splitlines()[-1])
    assert remote.pop("pipeline_module").startswith("transformers_modules.")
    local = translation_pipeline(saved.model, saved.tokenizer)("el gato come", return_attention=True, num_beams=3,
                                                               max_new_tokens=12)[0]
    assert remote == {"translation_text": local["translation_text"], "alignment": local["alignment"]}


def run_cli(arguments, capsys):
    status = cli.main(["translate", *map(str, arguments), "--max_new_tokens", "12", "--device", "cpu"])
    out, err = capsys.readouterr()
    return status, out.split("\n")[:-1], err


def test_cli_writes_a_heatmap_per_line_and_the_alignments(saved, tmp_path, capsys):
    (tmp_path / "source.txt").write_text("el gato come\n\nla luna azul tiene agua\n", encoding="utf-8")
    status, translations, err = run_cli(["--model", saved.folder, "--input", tmp_path / "source.txt",
                                         "--attention_dir", tmp_path / "heatmaps", "--alignments",
                                         tmp_path / "source.align"], capsys)
    assert status == 0, err
    assert err == "hf-rnn-attn translate: line 2 is empty: no heatmap or alignment for it.\n"
    assert len(translations) == 3 and translations[0] and not translations[1] and translations[2]
    assert sorted(path.name for path in (tmp_path / "heatmaps").iterdir()) == ["1.png", "3.png"]
    alignments = (tmp_path / "source.align").read_text(encoding="utf-8").split("\n")
    assert len(alignments) == 4 and alignments[1] == alignments[3] == ""
    assert all(PHARAOH.match(line) and line for line in (alignments[0], alignments[2]))


def test_cli_translates_every_line_when_the_heatmaps_cannot_be_written(saved, tmp_path, capsys):
    (tmp_path / "source.txt").write_text("el gato come\nla luna\n", encoding="utf-8")
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    status, translations, err = run_cli(["--model", saved.folder, "--input", tmp_path / "source.txt",
                                         "--attention_dir", tmp_path / "a-file" / "heatmaps"], capsys)
    assert status == 2
    assert len(translations) == 2 and all(translations)
    assert re.fullmatch(r"hf-rnn-attn translate: error: cannot write heatmaps to --attention_dir \S+/a-file/heatmaps: "
                        r"Not a directory\.\n", err), err


def test_cli_translates_the_other_lines_of_a_model_without_attention(saved, tmp_path, capsys, monkeypatch):
    drop_attentions(monkeypatch)
    (tmp_path / "source.txt").write_text("el gato come\nla luna\n", encoding="utf-8")
    status, translations, err = run_cli(["--model", saved.folder, "--input", tmp_path / "source.txt",
                                         "--alignments", tmp_path / "source.align"], capsys)
    assert status == 2
    assert len(translations) == 2 and all(translations)
    assert re.fullmatch(r"hf-rnn-attn translate: error: This generate\(\) output has no attention weights: .* "
                        r"No heatmaps or alignments are written\.\n", err), err
    assert not (tmp_path / "source.align").exists()


def test_cli_translates_the_lines_that_fit_a_location_model(tokenizer, corpus, tmp_path, capsys):
    model = train_copy_model(tokenizer, corpus, preset="lstm-luong", steps=0, attention_score="location",
                             max_source_positions=8)
    save_for_hub(model, tokenizer, tmp_path / "model")
    long_line = "el perro pequeño quiere fuego"
    assert len(tokenizer(long_line)["input_ids"]) > 8 >= len(tokenizer("el gato")["input_ids"])
    (tmp_path / "source.txt").write_text(f"el gato\n{long_line}\nla luna\n", encoding="utf-8")
    status, translations, err = run_cli(["--model", tmp_path / "model", "--input", tmp_path / "source.txt",
                                         "--attention_dir", tmp_path / "heatmaps"], capsys)
    assert status == 2
    assert len(translations) == 3 and translations[1] == ""
    assert sorted(path.name for path in (tmp_path / "heatmaps").iterdir()) == ["1.png", "3.png"]
    assert re.fullmatch(r"hf-rnn-attn translate: error: line 2 exceeds max_source_positions=8 tokens of the location "
                        r"score and is left untranslated\. Pass --max_source_length 8 to truncate longer sources\.\n",
                        err), err
