"""Beam search scoring: GNMT's coverage penalty (`generate(coverage_penalty=beta)`) and generate()'s average-length
normalisation (`length_penalty=1.0`, OpenNMT-py's "avg"), each held to its formula."""

import math

import pytest
import torch
from scoring_helpers import teacher_forced_scores
from test_fast_paths import PassThrough
from tiny_models import source_batch, tiny_model
from transformers import LogitsProcessorList

from hf_rnn_attn.beam_penalties import CoveragePenalty
from hf_rnn_attn.ensemble import RNNAttnEnsemble

# Weights drawn from [-1, 1] make the tiny models' attention peaked and their choices firm; with these EOS ids
# hypotheses end at several lengths (some at max_length) and leave source tokens uncovered by different amounts.
EOS = {"bigru-bahdanau": 7, "bigru-2layer-decoder-tanh": 10, "lstm-input-feeding-bidirectional": 5}


def peaked_model(variant, seed=0):
    return tiny_model(variant, seed=seed, eos_token_id=EOS[variant], init_range=1.0)


def batch():
    input_ids, attention_mask = source_batch(batch_size=3)
    return dict(input_ids=torch.cat([input_ids, input_ids.flip(0)]),
                attention_mask=torch.cat([attention_mask, attention_mask.flip(0)]), max_new_tokens=8)


def test_penalty_is_the_formula_on_a_hand_made_example():
    coverage = torch.tensor([[0.5, 2.0, 0.25, 0.0],    # the last token is padding
                             [1.0, 1.0, 3.0, 0.1]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    expected = torch.tensor([0.2 * (math.log(0.5) + 0.0 + math.log(0.25)), 0.2 * math.log(0.1)])
    torch.testing.assert_close(CoveragePenalty(0.2)(coverage, mask), expected)
    # A finished hypothesis: sum log P = -6 over 3 tokens, length_penalty 1 -> -6 / 3 + cp after generate()'s division.
    penalty = CoveragePenalty(0.2)
    penalty.observe(coverage, mask)
    scores = penalty.add_to_finished(torch.tensor([[-6.0, -6.0]]), torch.tensor([[0, 1]]), 3, 1.0) / 3
    torch.testing.assert_close(scores, -2.0 + expected.unsqueeze(0))


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 0.6])
@pytest.mark.parametrize("beta", [None, 0.5])
@pytest.mark.parametrize("variant", list(EOS))
def test_beam_scores_are_normalised_log_probs_plus_the_coverage_penalty(variant, beta, length_penalty):
    """`sequences_scores` = sum log P / length ** length_penalty + beta * sum_i log(min(sum_t alpha_ti, 1)), both
    recomputed by a teacher-forced pass over each returned sequence. length_penalty=1.0 (the default) is the
    average log-probability per token, OpenNMT-py's `-length_penalty avg`; 0.0 the plain sum."""
    model = peaked_model(variant)
    inputs = batch()
    extra = {} if beta is None else {"coverage_penalty": beta}
    output = model.generate(**inputs, num_beams=3, num_return_sequences=2, length_penalty=length_penalty,
                            return_dict_in_generate=True, output_scores=True, **extra)
    log_prob, length, coverage, mask = teacher_forced_scores(model, inputs["input_ids"], inputs["attention_mask"],
                                                             output.sequences, EOS[variant])
    assert len(set(length.tolist())) > 1  # the test sees the length normalisation at work
    penalty = CoveragePenalty(beta or 0.0)(coverage, mask)
    if beta is not None:
        assert penalty.max() - penalty.min() > 0.1  # ... and the penalty
    torch.testing.assert_close(output.sequences_scores, log_prob / length ** length_penalty + penalty,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", list(EOS))
def test_lean_loop_gives_the_tokens_of_transformers_loop_with_the_penalty(variant):
    model = peaked_model(variant)
    kwargs = dict(**batch(), num_beams=3, num_return_sequences=2, coverage_penalty=0.5)
    lean = model.generate(**kwargs)
    assert torch.equal(lean, model.generate(logits_processor=LogitsProcessorList([PassThrough()]), **kwargs))
    assert not torch.equal(lean, model.generate(**{**kwargs, "coverage_penalty": None}))  # it changes the choice


def test_penalty_off_by_default_and_zero_change_nothing():
    model = peaked_model("bigru-bahdanau")
    kwargs = dict(**batch(), num_beams=3, return_dict_in_generate=True, output_scores=True)
    plain, zero = model.generate(**kwargs), model.generate(**kwargs, coverage_penalty=0.0)
    assert plain.past_key_values.coverage is None  # nothing tracked unless asked
    assert torch.equal(plain.sequences, zero.sequences)
    torch.testing.assert_close(plain.sequences_scores, zero.sequences_scores, rtol=0, atol=1e-6)
    assert torch.equal(model.generate(**batch(), num_beams=3), model.generate(**batch(), num_beams=3,
                                                                              coverage_penalty=0.0))


def test_ensemble_takes_the_members_mean_coverage():
    ensemble = RNNAttnEnsemble([peaked_model("bigru-bahdanau"), peaked_model("bigru-bahdanau", seed=1)])
    inputs = batch()
    kwargs = dict(**inputs, num_beams=3, coverage_penalty=0.5)
    output = ensemble.generate(**kwargs, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(ensemble.generate(**kwargs), output.sequences)  # lean loop = transformers' loop
    log_prob, length, coverage, mask = teacher_forced_scores(ensemble, inputs["input_ids"], inputs["attention_mask"],
                                                             output.sequences, EOS["bigru-bahdanau"])
    torch.testing.assert_close(output.sequences_scores, log_prob / length + CoveragePenalty(0.5)(coverage, mask),
                               rtol=1e-5, atol=1e-5)


def test_bad_penalties_are_refused():
    model = tiny_model("bigru-bahdanau")
    with pytest.raises(ValueError, match="`coverage_penalty` works with beam search only"):
        model.generate(**batch(), coverage_penalty=0.2)
    with pytest.raises(ValueError, match="`coverage_penalty` must be a number >= 0"):
        model.generate(**batch(), num_beams=2, coverage_penalty=-1)
