"""transformers' conventions: output options default to the config, hidden states hold the embeddings and one entry
per layer, resizing the vocabulary resizes every table of it, embeddings may replace ids, `use_cache` is a config
field, standard `from_pretrained` flows load, and the scripts' generation lengths do not conflict."""

import json
import logging

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.utils import logging as transformers_logging

from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration
from script_helpers import load_script, write_corpus
from tiny_models import source_batch, tiny_config, tiny_model


def target_batch(seed=1, batch_size=3, length=5):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 20, (batch_size, length), generator=generator)


@pytest.fixture
def transformers_warnings():
    """The messages transformers logs at WARNING and above (its loggers do not propagate to pytest's caplog)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_warning()
    logging.getLogger("transformers").addHandler(handler)
    yield records
    logging.getLogger("transformers").removeHandler(handler)
    transformers_logging.set_verbosity(verbosity)


# ------------------------------------------------------------------------------------ output options and cache

def test_output_options_fall_back_to_the_config():
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target_batch())
    model.config.output_hidden_states = True
    model.config.output_attentions = True
    for out in (model(**inputs), model.model(**inputs)):
        assert out.encoder_hidden_states is not None and out.decoder_hidden_states is not None
        assert out.cross_attentions is not None
    assert model.get_encoder()(input_ids, attention_mask).hidden_states is not None
    out = model(**inputs, output_hidden_states=False, output_attentions=False)  # the call wins
    assert out.encoder_hidden_states is None and out.decoder_hidden_states is None and out.cross_attentions is None

    model.config.return_dict = False
    for output in (model(**inputs), model.model(**inputs), model.get_encoder()(input_ids, attention_mask)):
        assert isinstance(output, tuple)
    assert isinstance(model(**inputs, return_dict=True), Seq2SeqLMOutput)


def test_use_cache_is_a_config_field_defaulting_to_true(tmp_path):
    assert RNNAttnConfig().use_cache is True
    model = tiny_model("lstm-luong-general", use_cache=False)
    model.config.save_pretrained(tmp_path)
    assert RNNAttnConfig.from_pretrained(tmp_path).use_cache is False
    input_ids, attention_mask = source_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target_batch())
    assert model(**inputs).past_key_values is None
    assert model(**inputs, use_cache=True).past_key_values.get_seq_length() == 5
    with pytest.raises(ValueError, match=r"`use_cache` must be True or False, got 'no'"):
        RNNAttnConfig(use_cache="no")


# --------------------------------------------------------------------------------------------- hidden states

@pytest.mark.parametrize("variant", ["bigru-bahdanau", "bigru-2layer-decoder-tanh", "lstm-luong-general"])
def test_hidden_states_are_the_embeddings_then_each_layer(variant):
    model = tiny_model(variant)
    config = model.config
    input_ids, attention_mask = source_batch()
    decoder_input_ids = target_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    fast, out = model(**inputs), model(**inputs, output_hidden_states=True)

    assert [h.shape for h in out.encoder_hidden_states] == (
        [(3, 7, config.embedding_size)] + [(3, 7, config.encoder_output_size)] * config.encoder_layers)
    torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
    torch.testing.assert_close(out.encoder_last_hidden_state, fast.encoder_last_hidden_state)
    one_call = model.get_encoder()(input_ids, attention_mask)
    layer_by_layer = model.get_encoder()(input_ids, attention_mask, output_hidden_states=True)
    torch.testing.assert_close(layer_by_layer.final_hidden_state, one_call.final_hidden_state)
    torch.testing.assert_close(layer_by_layer.final_cell_state, one_call.final_cell_state)

    assert [h.shape for h in out.decoder_hidden_states] == (
        [(3, 5, config.embedding_size)] + [(3, 5, config.hidden_size)] * config.decoder_layers)
    torch.testing.assert_close(out.logits, fast.logits)
    for layer, states in enumerate(out.decoder_hidden_states[1:]):  # each layer's last state is the one carried on
        torch.testing.assert_close(states[:, -1], fast.past_key_values.hidden[:, layer])

    state, steps = None, []
    for t in range(decoder_input_ids.size(1)):
        step = model(input_ids=input_ids, attention_mask=attention_mask,
                     decoder_input_ids=decoder_input_ids[:, t:t + 1], past_key_values=state, output_hidden_states=True)
        state = step.past_key_values
        steps.append(step.decoder_hidden_states)
    for entry, full in enumerate(out.decoder_hidden_states):
        torch.testing.assert_close(torch.cat([step[entry] for step in steps], dim=1), full)


# ----------------------------------------------------------------------------------------- vocabulary resizing

@pytest.mark.parametrize("variant, overrides", [("bigru-bahdanau", {}),
                                                ("lstm-luong-general", {"embedding_size": 16,
                                                                        "tie_word_embeddings": True})])
def test_resized_vocabulary_takes_new_ids_on_both_sides(variant, overrides):
    model = tiny_model(variant, **overrides)
    input_ids, attention_mask = source_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target_batch())
    before = model(**inputs).logits
    model.resize_token_embeddings(23)
    encoder, decoder = model.get_encoder(), model.get_decoder()
    assert model.config.vocab_size == 23
    assert encoder.embed_tokens.num_embeddings == decoder.embed_tokens.num_embeddings == 23
    assert model.lm_head.out_features == 23
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is decoder.embed_tokens.weight
    torch.testing.assert_close(model(**inputs).logits[..., :20], before)  # the old ids keep their weights

    new_id = 22
    input_ids[0, 0] = new_id
    decoder_input_ids = target_batch()
    decoder_input_ids[:, 2] = new_id
    logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    assert logits.shape == (3, 5, 23)
    with torch.no_grad():
        model.lm_head.bias[new_id] = 100.0  # generate the new id, so the decoder reads it at the next step
    generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3)
    assert (generated[:, 1:] == new_id).all()


# ---------------------------------------------------------------------------------- embeddings instead of ids

@pytest.mark.parametrize("variant", ["bigru-bahdanau", "lstm-luong-general"])
def test_inputs_embeds_give_what_the_ids_give(variant):
    model = tiny_model(variant)
    input_ids, attention_mask = source_batch()
    labels = target_batch()
    source_embeds = model.get_encoder().embed_tokens(input_ids)
    target_embeds = model.get_decoder().embed_tokens(model.prepare_decoder_input_ids_from_labels(labels))
    by_ids = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    by_embeds = model(inputs_embeds=source_embeds, attention_mask=attention_mask, decoder_inputs_embeds=target_embeds,
                      labels=labels)
    torch.testing.assert_close(by_embeds.logits, by_ids.logits)
    torch.testing.assert_close(by_embeds.loss, by_ids.loss)
    torch.testing.assert_close(model.generate(inputs_embeds=source_embeds, attention_mask=attention_mask,
                                              max_new_tokens=4, num_beams=2),
                               model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=4,
                                              num_beams=2))


def test_inputs_embeds_errors_name_the_argument():
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    source_embeds = model.get_encoder().embed_tokens(input_ids)
    with pytest.raises(ValueError, match=r"Pass `input_ids` or `inputs_embeds` \(exactly one of them\)"):
        model(input_ids=input_ids, inputs_embeds=source_embeds, labels=target_batch())
    with pytest.raises(ValueError, match=r"Pass `decoder_input_ids` or `decoder_inputs_embeds`, not both"):
        model(input_ids=input_ids, decoder_input_ids=target_batch(), decoder_inputs_embeds=source_embeds[:, :5])
    with pytest.raises(ValueError, match=r"`inputs_embeds` must be a float tensor of shape \(batch, length, 8\), "
                                         r"got torch.float32 tensor of shape \(3, 7, 4\)"):
        model(inputs_embeds=source_embeds[..., :4], labels=target_batch())
    with pytest.raises(ValueError, match=r"`attention_mask` shape \(3, 6\) does not match `inputs_embeds` shape "
                                         r"\(3, 7\)"):
        model(inputs_embeds=source_embeds, attention_mask=attention_mask[:, :6], labels=target_batch())


# ------------------------------------------------------------------------------------------- from_pretrained

@pytest.mark.parametrize("overrides, fresh", [({}, {"lm_head.weight", "lm_head.bias"}),
                                              ({"embedding_size": 16, "tie_word_embeddings": True}, {"lm_head.bias"})])
def test_base_model_checkpoint_loads_under_a_fresh_reported_head(tmp_path, transformers_warnings, overrides, fresh):
    base = tiny_model("lstm-luong-general", **overrides).model
    base.save_pretrained(tmp_path)
    model, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == fresh
    assert any("lm_head.bias" in record.getMessage() for record in transformers_warnings)
    loaded = model.model.state_dict()
    assert all(torch.equal(tensor, loaded[name]) for name, tensor in base.state_dict().items())
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.get_decoder().embed_tokens.weight


def test_state_dict_loads_and_what_it_lacks_starts_fresh():
    donor = tiny_model("bigru-bahdanau")
    encoder_only = {name: tensor for name, tensor in donor.state_dict().items() if name.startswith("model.encoder.")}
    model, info = RNNAttnForConditionalGeneration.from_pretrained(None, config=donor.config, state_dict=encoder_only,
                                                                  output_loading_info=True)
    assert set(info["missing_keys"]) == set(donor.state_dict()) - set(encoder_only)
    assert all(torch.equal(tensor, model.state_dict()[name]) for name, tensor in encoder_only.items())
    with pytest.raises(ValueError, match=r"do not match its config .*unexpected_keys: \['model.decoder.extra'\]"):
        RNNAttnForConditionalGeneration.from_pretrained(
            None, config=donor.config, state_dict={**donor.state_dict(), "model.decoder.extra": torch.zeros(2)})


def test_checkpoint_lacking_more_than_the_head_is_still_refused(tmp_path):
    tiny_model("bigru-bahdanau").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["decoder_bridge"] = "linear"  # weights the checkpoint never had: its config is not the trained model's
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"do not match its config .*missing_keys: \['model.decoder.bridge.bias'"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------ the scripts' generation

def test_scripts_set_one_generation_length(tmp_path, transformers_warnings):
    data = write_corpus(tmp_path / "data")
    run = tmp_path / "run" / "trainer"
    load_script("train").main([
        "--dataset", str(data), "--output_dir", str(run), "--vocab_size", "60", "--embedding_size", "8",
        "--hidden_size", "8", "--max_steps", "2", "--per_device_train_batch_size", "8", "--eval_strategy", "steps",
        "--eval_steps", "1", "--save_steps", "1", "--per_device_eval_batch_size", "1", "--predict_with_generate",
        "true", "--generation_max_length", "128", "--report_to", "none", "--use_cpu", "true"])
    assert "max_length" not in json.loads((run / "generation_config.json").read_text())
    load_script("evaluate_model").main(["--model", str(run), "--dataset", str(data), "--num_beams", "1", "--batch_size",
                                        "1", "--max_samples", "2", "--output_dir", str(tmp_path / "eval")])
    messages = [record.getMessage() for record in transformers_warnings]
    assert not [message for message in messages if "seem to have been set" in message], messages


def test_config_round_trips_through_its_dict():
    config = tiny_config("bigru-bahdanau")
    config._name_or_path = "some/folder"
    assert RNNAttnConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
