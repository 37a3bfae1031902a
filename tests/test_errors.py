"""Bad configs and bad inputs get clear errors naming the argument and what was expected."""

import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from hf_rnn_attn import RNNAttnConfig
from tiny_models import source_batch, tiny_model


@pytest.mark.parametrize("overrides, message", [
    ({"rnn_cell": "rnn"}, r"`rnn_cell` must be one of \['gru', 'lstm'\]"),
    ({"attention_score": "cosine"}, r"`attention_score` must be one of \['additive', 'dot', 'general', 'location'\]"),
    ({"decoder_state_init": "mean"}, r"`decoder_state_init` must be one of \['backward', 'final', 'zeros'\]"),
    ({"output_layer": "maxout"}, r"`output_layer` must be one of"),
    ({"encoder_layers": 0}, r"`encoder_layers` must be a positive integer, got 0"),
    ({"dropout": 1.5}, r"`dropout` must be in \[0, 1\)"),
    ({"attention_score": "dot"}, r"attention_score='dot' needs hidden_size == encoder output size"),
    ({"attention_score": "location"}, r"attention_score='location' needs `max_source_positions`"),
    ({"bidirectional_encoder": False}, r"decoder_state_init='backward' needs bidirectional_encoder=True"),
    ({"decoder_state_init": "final", "decoder_layers": 2}, r"needs encoder_layers == decoder_layers"),
    ({"decoder_bridge": "none", "encoder_hidden_size": 8}, r"decoder_bridge='none' needs the encoder state size"),
    ({"tie_word_embeddings": True}, r"tie_word_embeddings=True needs the output layer input size"),
])
def test_invalid_configs_name_the_valid_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        RNNAttnConfig.from_preset("bigru-bahdanau", hidden_size=16, embedding_size=8, **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"Unknown preset 'transformer'; valid presets: \['bigru-bahdanau', 'lstm-luong'\]"):
        RNNAttnConfig.from_preset("transformer")


def test_presets_are_the_seed_architectures():
    bahdanau = RNNAttnConfig.from_preset("bigru-bahdanau")
    assert (bahdanau.rnn_cell, bahdanau.encoder_layers, bahdanau.decoder_layers, bahdanau.bidirectional_encoder,
            bahdanau.attention_score, bahdanau.input_feeding, bahdanau.decoder_state_init, bahdanau.output_layer) == \
        ("gru", 1, 1, True, "additive", True, "backward", "linear")
    luong = RNNAttnConfig.from_preset("lstm-luong", attention_score="dot", encoder_hidden_size=512)
    assert (luong.rnn_cell, luong.encoder_layers, luong.decoder_layers, luong.bidirectional_encoder,
            luong.input_feeding, luong.decoder_state_init, luong.output_layer, luong.num_hidden_layers) == \
        ("lstm", 2, 2, False, False, "final", "tanh", 2)


def forward(model, input_ids, attention_mask=None, labels=None):
    labels = torch.full((input_ids.size(0), 3), 4) if labels is None else labels
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def test_token_ids_outside_the_vocabulary():
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    input_ids[0, 0] = 20
    with pytest.raises(ValueError, match=r"`input_ids` holds token id 20, outside the vocabulary \[0, 20\)"):
        forward(model, input_ids, attention_mask)
    input_ids[0, 0] = -1
    with pytest.raises(ValueError, match=r"`input_ids` holds token id -1"):
        forward(model, input_ids, attention_mask)


def test_labels_and_decoder_ids_outside_the_vocabulary():
    model = tiny_model("lstm-luong-general")
    input_ids, attention_mask = source_batch()
    with pytest.raises(ValueError, match=r"`labels` holds token id 99, outside the vocabulary \[0, 20\) or -100"):
        forward(model, input_ids, attention_mask, labels=torch.tensor([[4, 99, -100]] * 3))
    with pytest.raises(ValueError, match=r"`decoder_input_ids` holds token id 30"):
        model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=torch.full((3, 2), 30))


@pytest.mark.parametrize("label_smoothing, with_labels, problem", [(1.0, True, "1.0"), (-0.1, True, "-0.1"),
                                                                     (0.1, False, "0.1 without labels")])
def test_label_smoothing_outside_0_to_1_or_without_labels(label_smoothing, with_labels, problem):
    model = tiny_model("bigru-bahdanau").train()
    input_ids, attention_mask = source_batch()
    labels = torch.tensor([[4, 5, -100]] * 3)
    inputs = dict(labels=labels) if with_labels else dict(decoder_input_ids=labels.clamp(min=0))
    with pytest.raises(ValueError, match=rf"`label_smoothing` must be in \[0, 1\) and come with `labels`; got "
                                         rf"{problem}\."):
        model(input_ids=input_ids, attention_mask=attention_mask, label_smoothing=label_smoothing, **inputs)


def test_mask_shape_must_match_ids():
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    with pytest.raises(ValueError, match=r"`attention_mask` shape \(3, 6\) does not match `input_ids` shape \(3, 7\)"):
        forward(model, input_ids, attention_mask[:, :6])


def test_empty_batch_and_empty_source():
    model = tiny_model("bigru-bahdanau")
    with pytest.raises(ValueError, match=r"`input_ids` is empty \(shape \(0, 5\)\)"):
        model.generate(input_ids=torch.zeros(0, 5, dtype=torch.long), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"`input_ids` is empty \(shape \(2, 0\)\)"):
        forward(model, torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`input_ids` must have shape \(batch, length\), got shape \(7,\)"):
        forward(model, torch.ones(7, dtype=torch.long))


def test_all_padding_row():
    model = tiny_model("lstm-luong-general")
    input_ids, attention_mask = source_batch()
    attention_mask[2] = 0
    with pytest.raises(ValueError, match=r"Row 2 of `attention_mask` is all padding"):
        forward(model, input_ids, attention_mask)


def test_left_padding_is_refused():
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    with pytest.raises(ValueError, match=r"must be right-padded.*padding_side='right'"):
        forward(model, input_ids, attention_mask.flip(1))


def test_location_score_refuses_sources_longer_than_max_source_positions():
    model = tiny_model("lstm-luong-location")
    with pytest.raises(ValueError, match=r"Source length 13 exceeds max_source_positions=12"):
        forward(model, torch.full((2, 13), 5))
    with pytest.raises(ValueError, match=r"Source length 13 exceeds max_source_positions=12"):
        model.generate(input_ids=torch.full((2, 13), 5), max_new_tokens=3)


def test_checkpoint_with_other_attention_weights_is_refused(tmp_path):
    tiny_model("lstm-luong-additive").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["attention_score"] = "general"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"do not match its config .*missing_keys: \['model.decoder.score.W.weight'\]"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("overrides, message", [
    ({"attention_scroe": "dot"},
     r"Unknown RNNAttnConfig argument\(s\): 'attention_scroe' \(did you mean 'attention_score'\?\)"),
    ({"hiden_size": 8, "colour": "red"}, r"Unknown RNNAttnConfig argument\(s\): 'colour', 'hiden_size' \(did you mean"),
    ({"input_feeding": "false"}, r"`input_feeding` must be True or False, got 'false'"),
    ({"bidirectional_encoder": 1}, r"`bidirectional_encoder` must be True or False, got 1"),
    ({"tie_word_embeddings": "no"}, r"`tie_word_embeddings` must be True or False"),
    ({"init_range": -1}, r"`init_range` must be a number above 0, got -1"),
    ({"init_range": 0}, r"`init_range` must be a number above 0, got 0"),
    ({"dropout": "x"}, r"`dropout` must be in \[0, 1\), got 'x'"),
    ({"dropout": None}, r"`dropout` must be in \[0, 1\), got None"),
    ({"max_source_positions": -3}, r"`max_source_positions` must be a positive integer, got -3"),
])
def test_config_typos_and_wrong_types_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        RNNAttnConfig.from_preset("bigru-bahdanau", hidden_size=16, embedding_size=8, **overrides)


def test_config_accepts_what_transformers_and_save_for_hub_store(tmp_path):
    config = RNNAttnConfig.from_preset("bigru-bahdanau", vocab_size=20, hidden_size=16, embedding_size=8,
                                       src_lang="es", tgt_lang="en", torch_dtype="float32", num_beams=4,
                                       output_attentions=True, architectures=["RNNAttnForConditionalGeneration"],
                                       custom_pipelines={"translation": {"impl": "pipeline_translation.X"}})
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {"model_type", "transformers_version", "auto_map", "custom_pipelines", "src_lang"} <= set(saved)
    reloaded = RNNAttnConfig.from_pretrained(tmp_path, dropout=0.3)
    assert (reloaded.src_lang, reloaded.dropout, reloaded.num_hidden_layers) == ("es", 0.3, 1)


def test_float_ids_and_non_tensors():
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    with pytest.raises(TypeError, match=r"`input_ids` must hold integer token ids \(torch.long\), got dtype "
                                        r"torch.float32"):
        forward(model, input_ids.float(), attention_mask)
    with pytest.raises(TypeError, match=r"`input_ids` must be a torch.Tensor of token ids, got list"):
        model(input_ids=input_ids.tolist(), attention_mask=attention_mask, labels=input_ids)
    with pytest.raises(TypeError, match=r"`labels` must hold integer token ids"):
        forward(model, input_ids, attention_mask, labels=torch.ones(3, 2))


@pytest.mark.parametrize("value", [2, 0.5])
def test_mask_values_other_than_0_and_1(value):
    model = tiny_model("lstm-luong-general")
    input_ids, attention_mask = source_batch()
    attention_mask = attention_mask.float()
    attention_mask[0, 0] = value
    with pytest.raises(ValueError, match=rf"`attention_mask` must hold only 0 \(padding\) and 1 \(token\), "
                                         rf"got {value}"):
        forward(model, input_ids, attention_mask)


def test_labels_of_another_batch_size():
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    with pytest.raises(ValueError, match=r"`labels` has 1 rows but the batch has 3 sources"):
        forward(model, input_ids, attention_mask, labels=torch.full((1, 3), 4))
    with pytest.raises(ValueError, match=r"`labels` has 3 rows but the batch has 1 sources"):
        forward(model, input_ids[:1], attention_mask[:1], labels=torch.full((3, 3), 4))
    with pytest.raises(ValueError, match=r"`decoder_input_ids` has 2 rows but the batch has 3 sources"):
        model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=torch.full((2, 2), 4))


@pytest.mark.parametrize("num_beams", [0, -1])
def test_generate_with_fewer_than_one_beam(num_beams):
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    with pytest.raises(ValueError, match=rf"`num_beams` must be a positive integer .*got {num_beams}"):
        model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3, num_beams=num_beams)
    model.generation_config.num_beams = num_beams
    with pytest.raises(ValueError, match=r"`num_beams` must be a positive integer"):
        model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3)
