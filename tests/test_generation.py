"""generate(): greedy, beam search (with a correct state reorder), sampling, outputs and streamer."""

import pytest
import torch
from transformers import TextStreamer

from scoring_helpers import teacher_forced_scores
from tiny_models import LOCAL_VARIANTS, VARIANTS, source_batch, tiny_model

ALL_VARIANTS = [*VARIANTS, *LOCAL_VARIANTS]


def up_to_eos(model, sequences):
    """B x (T - 1): True for each generated token (after the start token) up to and including the first eos."""
    is_eos = (sequences[:, 1:] == model.config.eos_token_id).long()
    return (is_eos.cumsum(1) - is_eos) == 0


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_beam_search_with_one_beam_equals_greedy(variant):
    model = tiny_model(variant)
    input_ids, attention_mask = source_batch()
    greedy = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=8)
    beam = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=8, num_beams=1)
    assert torch.equal(greedy, beam)
    # Greedy picks the argmax of the teacher-forced logits of its own output.
    logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=greedy[:, :-1]).logits
    live = up_to_eos(model, greedy)
    assert torch.equal(logits.argmax(-1)[live], greedy[:, 1:][live])


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_beam_scores_equal_recomputed_log_probabilities(variant):
    model = tiny_model(variant, seed=3)
    input_ids, attention_mask = source_batch(seed=5)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=7, num_beams=4,
                         num_return_sequences=3, length_penalty=0.0, early_stopping=True,
                         output_scores=True, return_dict_in_generate=True)
    assert out.sequences.shape[0] == 9
    recomputed, *_ = teacher_forced_scores(model, input_ids, attention_mask, out.sequences, model.config.eos_token_id)
    torch.testing.assert_close(out.sequences_scores, recomputed, atol=1e-4, rtol=1e-4)


def test_beam_scores_with_length_penalty_are_normalised_by_length():
    model = tiny_model("bigru-bahdanau", seed=3)
    input_ids, attention_mask = source_batch(seed=5)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=7, num_beams=3,
                         length_penalty=1.0, output_scores=True, return_dict_in_generate=True)
    recomputed, lengths, *_ = teacher_forced_scores(model, input_ids, attention_mask, out.sequences,
                                                    model.config.eos_token_id)
    torch.testing.assert_close(out.sequences_scores, recomputed / lengths, atol=1e-4, rtol=1e-4)


def test_no_repeat_ngram_size_is_respected():
    model = tiny_model("lstm-luong-general")
    input_ids, attention_mask = source_batch()
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12, min_new_tokens=12,
                         num_beams=3, no_repeat_ngram_size=2)
    for row in out.tolist():
        bigrams = list(zip(row, row[1:]))
        assert len(bigrams) == len(set(bigrams))


@pytest.mark.parametrize("variant", ["bigru-bahdanau", "lstm-luong-location", "lstm-luong-local-m-general",
                                     "bigru-local-p-additive"])
def test_sampling_is_seeded_and_respects_top_k(variant):
    model = tiny_model(variant)
    input_ids, attention_mask = source_batch()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=0.7, top_k=1,
                  max_new_tokens=6)
    assert torch.equal(model.generate(**kwargs), model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                                                max_new_tokens=6))
    torch.manual_seed(0)
    first = model.generate(**{**kwargs, "top_k": 0, "top_p": 0.9, "temperature": 1.5})
    torch.manual_seed(0)
    second = model.generate(**{**kwargs, "top_k": 0, "top_p": 0.9, "temperature": 1.5})
    assert torch.equal(first, second)


def test_generate_returns_attentions_scores_and_max_new_tokens():
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=5, min_new_tokens=5,
                         output_attentions=True, output_scores=True, return_dict_in_generate=True)
    assert out.sequences.shape == (3, 6)
    assert len(out.scores) == 5 and out.scores[0].shape == (3, 20)
    assert len(out.cross_attentions) == 5
    step_weights = out.cross_attentions[0][0]  # B x 1 x 1 x S
    assert step_weights.shape == (3, 1, 1, 7)
    assert (step_weights[2, ..., 3:] == 0).all()


def test_streamer_receives_the_tokens(capsys):
    class DigitTokenizer:
        def decode(self, ids, **kwargs):
            return " ".join(str(int(i)) for i in ids)

    model = tiny_model("lstm-luong-general")
    input_ids, attention_mask = source_batch()
    out = model.generate(input_ids=input_ids[:1], attention_mask=attention_mask[:1], max_new_tokens=4,
                         min_new_tokens=4, streamer=TextStreamer(DigitTokenizer(), skip_prompt=True))
    printed = capsys.readouterr().out.split()
    assert printed == [str(t) for t in out[0, 1:].tolist()]
