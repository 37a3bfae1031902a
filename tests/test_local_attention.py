"""Luong's local attention (`attention_type="local-m"` / `"local-p"`): the window, its Gaussian, the predicted
position's gradient, its config, card and ONNX export. Decoding equivalences (step by step = teacher forcing,
padding, beam scores, lean loops = transformers' loops) run over `LOCAL_VARIANTS` in test_modeling.py,
test_generation.py and test_fast_paths.py."""

import json

import numpy as np
import pytest
import torch

from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration, recurrent_layers
from hf_rnn_attn.alignment import sequence_attentions
from hf_rnn_attn.attention import attend, local_window
from hf_rnn_attn.architecture import ATTENTION_SCORES
from hf_rnn_attn.model_card import render_model_card
from hf_rnn_attn.onnx import ONNXTranslator
from hf_rnn_attn.onnx_export import export_onnx
from tiny_models import LOCAL_VARIANTS, TINY, VARIANTS, source_batch, tiny_model

TARGET_LENGTH = 7  # longer than the shortest source (3 tokens), so that local-m's p_t = t runs past its end


def target_batch(batch_size=3):
    return torch.randint(3, 20, (batch_size, TARGET_LENGTH), generator=torch.Generator().manual_seed(1))


def teacher_forced(model, input_ids, attention_mask):
    """Attention weights (B x T x S) and the top decoder states h_t (B x T x H) of one teacher-forced pass."""
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target_batch(),
                    output_attentions=True, output_hidden_states=True)
    return out.cross_attentions[0][:, 0], out.decoder_hidden_states[-1]


def expected_window(model, top, lengths):
    """B x T x S, True where the paper's window `|s - p_t| <= D` holds a real source position (s and t from 1):
    local-m `p_t = min(t, S_real)`, local-p `p_t = S_real * sigmoid(v_p^T tanh(W_p h_t))`, computed here afresh."""
    config, steps = model.config, torch.arange(1, top.size(1) + 1, dtype=torch.float)
    if config.attention_type == "local-m":
        centres = torch.minimum(steps[None, :], lengths[:, None].float())
    else:
        aligned = model.get_decoder().aligned_position
        with torch.no_grad():
            centres = lengths[:, None] * torch.sigmoid(aligned.v_p(torch.tanh(aligned.W_p(top))))[..., 0]
    source = torch.arange(1, 8, dtype=torch.float)
    return ((source - centres[..., None]).abs() <= config.local_window) & (source <= lengths[:, None, None])


@pytest.mark.parametrize("variant", LOCAL_VARIANTS)
def test_positions_outside_the_window_get_zero_weight_and_rows_sum_to_1(variant):
    model = tiny_model(variant)
    input_ids, attention_mask = source_batch()  # real lengths 7, 5, 3
    weights, top = teacher_forced(model, input_ids, attention_mask)
    window = expected_window(model, top, attention_mask.sum(dim=1))
    assert (weights[~window] == 0).all()
    assert (weights[window] > 0).all()  # the window is cut by the real length only, never emptied
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(3, TARGET_LENGTH))
    assert (~window[0]).any(dim=-1).all(), "a window spans a whole unpadded source: the test checks no cut"


def test_local_m_clips_its_centre_at_the_real_source_length():
    """Row 2 has 3 real tokens of 7: from step 3 on, p_t stays at position 3, whatever the padding."""
    model = tiny_model("lstm-luong-local-m-general")  # D = 1
    input_ids, attention_mask = source_batch()
    weights, _ = teacher_forced(model, input_ids, attention_mask)
    attended = weights[2] > 0  # T x S
    assert attended[0].nonzero().flatten().tolist() == [0, 1]  # t = 1: positions 1 and 2 (from 1)
    for t in range(2, TARGET_LENGTH):
        assert attended[t].nonzero().flatten().tolist() == [1, 2]  # positions 2 and 3, never the padding


@pytest.mark.parametrize("variant", VARIANTS)
def test_local_m_with_a_window_covering_the_source_equals_global_attention(variant, monkeypatch):
    """Every score, with and without input feeding: a window of D >= S - 1 around any p_t holds every position.
    Exactly, on the same unroll: global bigru-bahdanau would take the fused one (`fused_unroll.py`), whose rounding
    differs in the last bits (it has its own test against the plain step)."""
    monkeypatch.setattr(recurrent_layers, "fuses", lambda config: False)
    input_ids, attention_mask = source_batch()
    decoder_input_ids = target_batch()
    models = [tiny_model(variant, attention_type=kind, local_window=6) for kind in ("global", "local-m")]
    outputs = [model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                     output_attentions=True) for model in models]
    torch.testing.assert_close(outputs[1].logits, outputs[0].logits, rtol=0, atol=0)
    torch.testing.assert_close(outputs[1].cross_attentions, outputs[0].cross_attentions, rtol=0, atol=0)
    generated = [model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=3, max_new_tokens=8)
                 for model in models]
    assert torch.equal(generated[1], generated[0])


def test_local_p_weights_are_the_renormalised_gaussian_product():
    """Luong et al.'s eq. 10, `align(h_t, h_s) * exp(-(s - p_t)^2 / (2 sigma^2))` with sigma = D / 2, over the
    window, divided by its sum."""
    scores = torch.randn(2, 3, 9, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([[0.3, 4.5, 9.0], [2.0, 3.7, 4.0]])  # row 1: a source of 4 real tokens
    attention_mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5])
    window_size = 2
    local_scores, window = local_window(scores, positions, window_size, gaussian=True)
    _, weights = attend(local_scores, attention_mask, torch.zeros(2, 9, 1), window)
    s = torch.arange(1, 10, dtype=torch.float)
    inside = ((s - positions[..., None]).abs() <= window_size) & attention_mask[:, None, :].bool()
    gaussian = torch.exp(-(s - positions[..., None]) ** 2 / (2 * (window_size / 2) ** 2))
    product = torch.softmax(scores.masked_fill(~inside, -torch.inf), dim=-1) * gaussian
    torch.testing.assert_close(weights, product / product.sum(dim=-1, keepdim=True))
    assert weights[1, 2].nonzero().flatten().tolist() == [1, 2, 3]  # p_t = 4 in a 4-token source: s = 2, 3, 4


@pytest.mark.parametrize("input_feeding", [False, True])
@pytest.mark.parametrize("attention_score", ATTENTION_SCORES)
def test_local_p_position_receives_gradient(attention_score, input_feeding):
    """p_t moves only through the Gaussian (the window is a step function of it): W_p and v_p must learn."""
    config = RNNAttnConfig.from_preset("lstm-luong", **TINY, attention_score=attention_score, attention_type="local-p",
                                       local_window=2, input_feeding=input_feeding, max_source_positions=12)
    torch.manual_seed(0)
    model = RNNAttnForConditionalGeneration(config).train()
    input_ids, attention_mask = source_batch()
    model(input_ids=input_ids, attention_mask=attention_mask, labels=target_batch()).loss.backward()
    aligned = model.get_decoder().aligned_position
    for parameter in (aligned.W_p.weight, aligned.v_p.weight):
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", LOCAL_VARIANTS)
def test_generated_attention_is_the_teacher_forced_attention(variant):
    """transformers' beam search and sampling, one token per call: `t` comes from the state's token count."""
    model = tiny_model(variant)
    input_ids, attention_mask = source_batch()
    for search in ({"num_beams": 3, "num_return_sequences": 2}, {"do_sample": True}):
        torch.manual_seed(0)
        outputs = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=TARGET_LENGTH,
                                 output_attentions=True, return_dict_in_generate=True, **search)
        weights = sequence_attentions(outputs, model.generation_config.eos_token_id)
        copies = outputs.sequences.size(0) // 3
        with torch.no_grad():
            expected = model(input_ids=input_ids.repeat_interleave(copies, 0),
                             attention_mask=attention_mask.repeat_interleave(copies, 0),
                             decoder_input_ids=outputs.sequences[:, :-1], output_attentions=True).cross_attentions[0]
        real = weights.sum(dim=-1) > 0  # rows up to each sequence's EOS
        # float32's default tolerances: one step at a time and all steps at once round differently on some CPUs
        # (1.04e-6 seen on a Xeon); a wrong t would move local-p's window, far beyond them.
        torch.testing.assert_close(weights[real], expected[:, 0][real])


# ----------------------------------------------------------------------------------- config, card and export

@pytest.mark.parametrize("overrides, message", [
    ({"attention_type": "local"}, r"`attention_type` must be one of \['global', 'local-m', 'local-p'\], got 'local'"),
    ({"attention_type": None}, r"`attention_type` must be one of \['global', 'local-m', 'local-p'\]"),
    ({"attention_type": "local-p", "local_window": 0}, r"`local_window` must be a positive integer, got 0"),
    ({"local_window": 2.5}, r"`local_window` must be a positive integer, got 2.5"),
])
def test_invalid_local_attention_configs_name_the_valid_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        RNNAttnConfig.from_preset("lstm-luong", **overrides)


def test_local_attention_is_saved_and_loaded(tmp_path):
    model = tiny_model("lstm-luong-local-p-general")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["attention_type"], saved["local_window"]) == ("local-p", 2)
    reloaded = RNNAttnForConditionalGeneration.from_pretrained(tmp_path)  # strict: W_p and v_p must be there
    torch.testing.assert_close(reloaded.get_decoder().aligned_position.W_p.weight,
                               model.get_decoder().aligned_position.W_p.weight)
    # A config.json written before local attention existed reads as global attention.
    del saved["attention_type"], saved["local_window"]
    old = RNNAttnConfig.from_dict(saved)
    assert (old.attention_type, old.local_window) == ("global", 10)


@pytest.mark.parametrize("variant, sentences", [
    ("lstm-luong-general", ["Global attention: every step attends to every real source position."]),
    ("lstm-luong-local-m-general", ["(*local-m*, Luong et al. 2015)", r"p_t = \min(t, S_{real})",
                                    "$D = 1$ (`local_window`)", "| `local_window` | `1` |",
                                    "`attention_type='local-m'` (preset: `'global'`)"]),
    ("lstm-luong-local-p-general", ["(*local-p*, Luong et al. 2015)",
                                    r"p_t = S_{real} \cdot \mathrm{sigmoid}(v_p^\top \tanh(W_p h_t))",
                                    r"\sigma = D / 2", "$D = 2$ (`local_window`)", "| `attention_type` | `local-p` |"]),
    ("bigru-local-p-additive", ["(*local-p*, Luong et al. 2015)", "$D = 1$ (`local_window`)"]),
])
def test_model_card_states_the_attention_type_and_window(variant, sentences):
    card = render_model_card(tiny_model(variant))
    for sentence in sentences:
        assert sentence in card
    assert ("local_window" in card) == (variant in LOCAL_VARIANTS)


def test_onnx_export_runs_local_p_and_refuses_local_m(tmp_path):
    model = tiny_model("lstm-luong-local-p-general", seed=2)
    export_onnx(model, tmp_path / "local-p")
    translator = ONNXTranslator(tmp_path / "local-p")
    input_ids, attention_mask = source_batch(seed=1, batch_size=4, length=9)
    for num_beams in (1, 4):
        expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams,
                                  max_new_tokens=10)
        output = translator.generate(input_ids.numpy(), attention_mask.numpy(), num_beams=num_beams, max_new_tokens=10)
        np.testing.assert_array_equal(output.sequences, expected.numpy())
    with pytest.raises(ValueError, match=r"ONNX export does not support attention_type='local-m'"):
        export_onnx(tiny_model("lstm-luong-local-m-general"), tmp_path / "local-m")
    assert not (tmp_path / "local-m").exists()
