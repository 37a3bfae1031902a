"""Behaviour of the models: the forward contract, decoding equivalences, padding, attention, loss; and the README's
map from equations to code."""

import re
from pathlib import Path

import pytest
import torch

from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration, recurrent_layers
from hf_rnn_attn.architecture import ATTENTION_SCORES, ATTENTION_TYPES, RNN_CELLS
from hf_rnn_attn.modeling_rnn_attn import shift_tokens_right
from tiny_models import LOCAL_VARIANTS, TINY, VARIANTS, source_batch, tiny_model

ALL_VARIANTS = [*VARIANTS, *LOCAL_VARIANTS]
# Every cell, score and input feeding choice, on 2-layer decoders; K = H = 16 so that the dot score fits.
DESIGN_POINTS = [(cell, score, input_feeding) for cell in RNN_CELLS for score in ATTENTION_SCORES
                 for input_feeding in (True, False)]


def target_batch(seed=1, batch_size=3, length=5):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 20, (batch_size, length), generator=generator)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_step_by_step_decoding_equals_teacher_forced_pass(variant):
    model = tiny_model(variant)
    input_ids, attention_mask = source_batch()
    decoder_input_ids = target_batch()
    full = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                 output_attentions=True)
    encoder_outputs = model.get_encoder()(input_ids, attention_mask)
    state, step_logits, step_weights = None, [], []
    for t in range(decoder_input_ids.size(1)):
        step = model(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                     decoder_input_ids=decoder_input_ids[:, t:t + 1], past_key_values=state, output_attentions=True)
        state = step.past_key_values
        step_logits.append(step.logits)
        step_weights.append(step.cross_attentions[0])
    assert state.get_seq_length() == decoder_input_ids.size(1)
    torch.testing.assert_close(torch.cat(step_logits, dim=1), full.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(step_weights, dim=2), full.cross_attentions[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("rnn_cell, attention_score, input_feeding", DESIGN_POINTS)
def test_teacher_forced_pass_equals_the_plain_step(rnn_cell, attention_score, input_feeding, attention_type):
    """The fast teacher-forced pass (the fused unroll with input feeding, one RNN call without) against the plain
    step, token by token, which runs PyTorch's own `nn.GRU`/`nn.LSTM`: outputs, attention, state and gradients
    (local attention's too: local-m's window moves with the step, local-p's with the predicted position)."""
    torch.manual_seed(0)
    preset, encoder_hidden_size = ("bigru-bahdanau", 8) if rnn_cell == "gru" else ("lstm-luong", 16)
    config = RNNAttnConfig.from_preset(preset, **TINY, attention_score=attention_score, input_feeding=input_feeding,
                                       encoder_hidden_size=encoder_hidden_size, encoder_layers=2, decoder_layers=2,
                                       max_source_positions=12, attention_type=attention_type, local_window=1)
    model = RNNAttnForConditionalGeneration(config).eval()
    decoder = model.get_decoder()
    input_ids, attention_mask = source_batch()
    encoder_output = model.get_encoder()(input_ids, attention_mask)
    keys, start = encoder_output.last_hidden_state, decoder.initial_state(encoder_output)
    embedded = decoder.embed_tokens(target_batch(length=6))  # B x T x E
    rnn_calls = []
    decoder.rnn.register_forward_hook(lambda module, args, output: rnn_calls.append(args[0].shape))

    fast, fast_weights, fast_state = decoder(None, start, keys, attention_mask, inputs_embeds=embedded)
    assert len(rnn_calls) == (0 if input_feeding else 1)  # the fused unroll runs its own cells
    state, outputs, weights = start, [], []
    for t in range(embedded.size(1)):
        output, step_weights, state, _ = decoder.step(embedded[:, t:t + 1], state, keys, attention_mask)
        outputs.append(output)
        weights.append(step_weights)
    plain = torch.cat(outputs, dim=1)
    x_size = config.embedding_size + (config.encoder_output_size if input_feeding else 0)  # [emb(y_{t-1}) ; c_{t-1}]
    assert rnn_calls[-6:] == [torch.Size([3, 1, x_size])] * 6  # the module itself, one token at a time

    fast_logits, plain_logits = model.lm_head(fast), model.lm_head(plain)
    torch.testing.assert_close(fast_logits, plain_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_weights, torch.cat(weights, dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_state.tensors(), state.tensors(), atol=1e-5, rtol=1e-5)
    assert fast_state.seen_tokens == state.seen_tokens == 6
    probe = torch.randn(fast_logits.shape, generator=torch.Generator().manual_seed(2))
    fast_grads, plain_grads = (torch.autograd.grad((logits * probe).sum(), list(decoder.parameters()),
                                                   retain_graph=True, allow_unused=True)
                               for logits in (fast_logits, plain_logits))
    torch.testing.assert_close(fast_grads, plain_grads, atol=1e-5, rtol=1e-5)


def test_encoder_outputs_given_as_a_tuple_keep_every_field():
    """`to_tuple()` drops None fields: a GRU encoder's tuple has no cell state, yet its hidden states stay hidden
    states (they used to land in `final_cell_state`)."""
    for variant in ("bigru-bahdanau", "lstm-luong-general"):
        model = tiny_model(variant)
        input_ids, attention_mask = source_batch()
        inputs = dict(attention_mask=attention_mask, decoder_input_ids=target_batch(), output_hidden_states=True)
        reference = model(input_ids=input_ids, **inputs)
        as_tuple = model.get_encoder()(input_ids, attention_mask, output_hidden_states=True, return_dict=False)
        out = model(encoder_outputs=as_tuple, **inputs)
        assert len(out.encoder_hidden_states) == len(reference.encoder_hidden_states) == 1 + model.config.encoder_layers
        for given, expected in zip(out.encoder_hidden_states, reference.encoder_hidden_states):
            torch.testing.assert_close(given, expected)
        torch.testing.assert_close(out.logits, reference.logits)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_padding_never_changes_outputs(variant):
    model = tiny_model(variant)
    input_ids, attention_mask = source_batch()
    decoder_input_ids = target_batch()
    reference = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                      output_attentions=True)
    # Other token ids under the padding, and two more padding columns.
    noisy_ids = torch.where(attention_mask == 1, input_ids, torch.full_like(input_ids, 17))
    wider_ids = torch.cat([noisy_ids, torch.full((3, 2), 5)], dim=1)
    wider_mask = torch.cat([attention_mask, torch.zeros(3, 2, dtype=torch.long)], dim=1)
    padded = model(input_ids=wider_ids, attention_mask=wider_mask, decoder_input_ids=decoder_input_ids,
                   output_attentions=True)
    torch.testing.assert_close(padded.logits, reference.logits, atol=1e-5, rtol=1e-5)
    # Each row alone, without any padding, gives the same logits too.
    for row in range(3):
        length = int(attention_mask[row].sum())
        alone = model(input_ids=input_ids[row:row + 1, :length], decoder_input_ids=decoder_input_ids[row:row + 1])
        torch.testing.assert_close(alone.logits[0], reference.logits[row], atol=1e-5, rtol=1e-5)
    weights = padded.cross_attentions[0]  # B x 1 x T x S
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    assert (weights[..., :7].masked_select(attention_mask[:, None, None, :] == 0) == 0).all()
    assert (weights[..., 7:] == 0).all()


@pytest.mark.parametrize("variant", ["bigru-bahdanau", "lstm-luong-general", "bigru-2layer-decoder-tanh"])
@pytest.mark.parametrize("output_hidden_states", [False, True])
def test_encoder_inference_in_row_blocks_equals_one_block(variant, output_hidden_states, monkeypatch):
    model = tiny_model(variant)
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 10, (150,), generator=generator)
    input_ids = torch.randint(3, 20, (150, 9), generator=generator)
    attention_mask = (torch.arange(9) < lengths[:, None]).long()
    encoder, calls = model.model.encoder, []
    run_packed = encoder._run_packed
    monkeypatch.setattr(encoder, "_run_packed", lambda embedded, *args: calls.append(len(embedded))
                        or run_packed(embedded, *args))
    with torch.no_grad():
        blocks = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        assert calls == [64, 64, 22]
        monkeypatch.setattr(recurrent_layers, "INFERENCE_ROWS_PER_BLOCK", 1000)
        whole = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
    assert calls[3:] == [150]
    for name in ("last_hidden_state", "final_hidden_state", "final_cell_state", "hidden_states"):
        torch.testing.assert_close(getattr(blocks, name), getattr(whole, name), atol=1e-6, rtol=1e-6)
    # With gradients (training), or traced (ONNX export, which would record fixed row ranges), one block.
    encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    monkeypatch.setattr(recurrent_layers, "INFERENCE_ROWS_PER_BLOCK", 64)
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    with torch.no_grad():
        encoder(input_ids=input_ids, attention_mask=attention_mask)
    assert calls[4:] == [150, 150]


def test_bigru_decoder_starts_from_backward_state_at_first_source_position():
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    encoder_output = model.get_encoder()(input_ids, attention_mask)
    half = model.config.encoder_hidden_size
    backward_at_position_1 = encoder_output.last_hidden_state[:, 0, half:]
    state = model.get_decoder().initial_state(encoder_output)
    torch.testing.assert_close(state.hidden[:, 0], backward_at_position_1)
    assert model.get_decoder().bridge is None  # sizes match, so no bridge
    assert (state.context == 0).all()  # c_0 is zeros


def test_lstm_luong_decoder_layers_start_from_encoder_final_states():
    model = tiny_model("lstm-luong-general")
    input_ids, attention_mask = source_batch()
    encoder_output = model.get_encoder()(input_ids, attention_mask)
    state = model.get_decoder().initial_state(encoder_output)
    torch.testing.assert_close(state.hidden, encoder_output.final_hidden_state)
    torch.testing.assert_close(state.cell, encoder_output.final_cell_state)
    lengths = attention_mask.sum(1)
    top_final = encoder_output.last_hidden_state[torch.arange(3), lengths - 1]
    torch.testing.assert_close(state.hidden[:, -1], top_final)


def test_teacher_forcing_without_input_feeding_runs_the_rnn_once():
    model = tiny_model("lstm-luong-general")
    calls = []
    model.get_decoder().rnn.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    input_ids, attention_mask = source_batch()
    model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target_batch(length=6))
    assert calls == [torch.Size([3, 6, 8])]


@pytest.mark.parametrize("variant", ["bigru-bahdanau", "lstm-luong-additive"])
def test_key_projection_is_computed_once_per_source(variant):
    model = tiny_model(variant)
    score = model.get_decoder().score
    calls = []
    original = score.project_keys
    score.project_keys = lambda keys: calls.append(keys.shape) or original(keys)
    input_ids, attention_mask = source_batch()
    model(input_ids=input_ids, attention_mask=attention_mask, labels=target_batch())
    assert len(calls) == 1
    calls.clear()
    model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, min_new_tokens=6, num_beams=2)
    assert len(calls) == 1


def test_labels_are_shifted_right_and_loss_ignores_minus_100():
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    labels = target_batch()
    labels[0, 3:] = -100
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    decoder_input_ids = shift_tokens_right(labels, 0, model.config.decoder_start_token_id)
    assert decoder_input_ids[0, 0] == model.config.decoder_start_token_id
    assert decoder_input_ids[0, 4] == model.config.pad_token_id
    logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_loss_with_num_items_in_batch_sums_correctly_over_accumulation_steps():
    model = tiny_model("lstm-luong-general")
    input_ids, attention_mask = source_batch()
    labels = target_batch()
    labels[1, 2:] = -100
    full = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    total_items = int((labels != -100).sum())
    parts = [model(input_ids=input_ids[rows], attention_mask=attention_mask[rows], labels=labels[rows],
                   num_items_in_batch=torch.tensor(total_items)).loss for rows in (slice(0, 2), slice(2, 3))]
    torch.testing.assert_close(sum(parts), full)
    assert model.accepts_loss_kwargs


@pytest.mark.parametrize("variant", ["bigru-bahdanau", "lstm-luong-general"])
def test_return_dict_false_and_hidden_states(variant):
    model = tiny_model(variant)
    input_ids, attention_mask = source_batch()
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=target_batch(), output_hidden_states=True)
    assert out.encoder_last_hidden_state.shape == (3, 7, model.config.encoder_output_size)
    assert out.decoder_hidden_states[0].shape[:2] == (3, 5)
    as_tuple = model(input_ids=input_ids, attention_mask=attention_mask, labels=target_batch(), return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.loss)


def test_tied_word_embeddings_share_the_decoder_embedding():
    model = tiny_model("lstm-luong-general", embedding_size=16, tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.get_decoder().embed_tokens.weight.data_ptr()


def test_readme_equation_table_points_at_its_code():
    """The README's "Where each equation is" names a line for each equation: it must still hold that code."""
    root = Path(__file__).resolve().parents[1]
    rows = re.findall(r"\| `([^`]+)` \| `(hf_rnn_attn/[\w/]+\.py):(\d+)` \|$", (root / "README.md").read_text(), re.M)
    assert len(rows) > 20
    for code, path, line in rows:
        lines = (root / path).read_text().splitlines()
        now = [number for number, text in enumerate(lines, 1) if code in text]
        assert code in lines[int(line) - 1], f"README.md: `{code}` is no longer at {path}:{line} but at line {now}"
