"""Ensembles inside generate(): `hf_rnn_attn.ensemble` and `hf-rnn-attn translate --ensemble`."""

import pytest
import torch
from script_helpers import SOURCES, tiny_tokenizer
from scoring_helpers import teacher_forced_scores
from test_beam_penalties import EOS, batch, peaked_model
from test_fast_paths import PassThrough
from tiny_models import tiny_model
from transformers import LogitsProcessorList

from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration, cli
from hf_rnn_attn import lean_decoding
from hf_rnn_attn.ensemble import RNNAttnEnsemble, load_ensemble
from hf_rnn_attn.tokenizer_training import train_translation_tokenizer

SEARCHES = {
    "greedy": dict(num_beams=1),
    "beam": dict(num_beams=3),
    "beam-return-2": dict(num_beams=3, num_return_sequences=2),
}


def different_pair():
    """Two models of one vocabulary that share nothing else: a GRU with additive attention, an LSTM with input
    feeding and the dot score."""
    return peaked_model("bigru-bahdanau"), tiny_model("lstm-input-feeding-bidirectional", seed=1,
                                                      eos_token_id=EOS["bigru-bahdanau"], init_range=1.0)


@pytest.mark.parametrize("search", list(SEARCHES))
@pytest.mark.parametrize("variant", list(EOS))
def test_an_ensemble_of_one_is_the_model(variant, search):
    model = peaked_model(variant)
    ensemble = RNNAttnEnsemble([model])
    kwargs = dict(**batch(), **SEARCHES[search])
    assert torch.equal(ensemble.generate(**kwargs), model.generate(**kwargs))
    ours, theirs = (m.generate(**kwargs, return_dict_in_generate=True, output_scores=True) for m in (ensemble, model))
    assert torch.equal(ours.sequences, theirs.sequences)
    for mine, reference in zip(ours.scores, theirs.scores):  # greedy: the logits, for the model unnormalised
        torch.testing.assert_close(mine.log_softmax(-1), reference.log_softmax(-1), rtol=0, atol=1e-5)
    if kwargs["num_beams"] > 1:
        torch.testing.assert_close(ours.sequences_scores, theirs.sequences_scores, rtol=0, atol=1e-5)


def test_an_ensemble_of_one_samples_what_the_model_samples():
    model = peaked_model("bigru-bahdanau", seed=2)
    samples = []
    for decoder in (model, RNNAttnEnsemble([model])):
        torch.manual_seed(0)
        samples.append(decoder.generate(**batch(), do_sample=True, num_return_sequences=3))
    assert torch.equal(*samples)


@pytest.mark.parametrize("search", list(SEARCHES))
def test_an_ensemble_of_a_model_with_itself_gives_its_tokens(search):
    model = peaked_model("bigru-2layer-decoder-tanh")
    kwargs = dict(**batch(), **SEARCHES[search])
    assert torch.equal(RNNAttnEnsemble([model, model]).generate(**kwargs), model.generate(**kwargs))


def test_two_models_score_by_the_mean_of_their_log_probabilities():
    first, second = different_pair()
    ensemble = RNNAttnEnsemble([first, second])
    inputs = batch()
    sources = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    prompt = torch.ones(inputs["input_ids"].size(0), 1, dtype=torch.long)  # the decoder start
    with torch.no_grad():
        step = ensemble(**sources, decoder_input_ids=prompt, use_cache=True)
        members = [m(**sources, decoder_input_ids=prompt, use_cache=True) for m in (first, second)]
    mean = (members[0].logits.log_softmax(-1) + members[1].logits.log_softmax(-1)) / 2
    torch.testing.assert_close(step.logits, mean)
    # The second step continues each member's own state.
    next_tokens = mean[:, -1].argmax(dim=-1, keepdim=True)
    with torch.no_grad():
        step = ensemble(**sources, decoder_input_ids=next_tokens, past_key_values=step.past_key_values, use_cache=True)
        members = [m(**sources, decoder_input_ids=next_tokens, past_key_values=o.past_key_values, use_cache=True)
                   for m, o in zip((first, second), members)]
    torch.testing.assert_close(step.logits, (members[0].logits.log_softmax(-1) + members[1].logits.log_softmax(-1)) / 2)
    greedy = ensemble.generate(**inputs)
    assert torch.equal(greedy[:, 1], mean[:, -1].argmax(dim=-1))


def test_beam_scores_are_the_normalised_mean_log_probabilities_of_the_returned_sequences():
    """Holds the members' states to their sequences through the reordering of beam search."""
    ensemble = RNNAttnEnsemble(different_pair())
    inputs = batch()
    output = ensemble.generate(**inputs, num_beams=3, num_return_sequences=2, return_dict_in_generate=True,
                               output_scores=True)
    log_prob, length, _, _ = teacher_forced_scores(ensemble, inputs["input_ids"], inputs["attention_mask"],
                                                   output.sequences, EOS["bigru-bahdanau"])
    assert len(set(length.tolist())) > 1
    torch.testing.assert_close(output.sequences_scores, log_prob / length, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("search", [*SEARCHES, "greedy-refilled"])
def test_lean_loops_give_the_tokens_of_transformers_loops(search, monkeypatch):
    calls = []
    for name in ("greedy_search", "beam_search"):
        loop = getattr(lean_decoding, name)
        monkeypatch.setattr(lean_decoding, name,
                            lambda *args, _loop=loop, **kwargs: calls.append(1) or _loop(*args, **kwargs))
    ensemble = RNNAttnEnsemble(different_pair())
    kwargs = dict(**batch(), **SEARCHES.get(search, {"num_beams": 1, "max_active_rows": 2}))
    lean = ensemble.generate(**kwargs)
    assert len(calls) == 1
    reference = ensemble.generate(**{**kwargs, "max_active_rows": None},
                                  logits_processor=LogitsProcessorList([PassThrough()]))
    assert torch.equal(lean, reference)


def test_a_local_m_member_is_never_refilled():
    """local-m attends around p_t = t: a row joining a running batch would take the other rows' t."""
    flat = tiny_model("bigru-bahdanau", eos_token_id=EOS["bigru-bahdanau"], init_range=0.01)  # global, no say
    ensemble = RNNAttnEnsemble([flat, tiny_model("bigru-bahdanau", seed=1, eos_token_id=EOS["bigru-bahdanau"],
                                                 attention_type="local-m", local_window=2, init_range=1.0)])
    kwargs = dict(**batch(), num_beams=1)
    assert torch.equal(ensemble.generate(**kwargs, max_active_rows=2), ensemble.generate(**kwargs))


def test_members_must_share_the_vocabulary(tmp_path):
    model = tiny_model("bigru-bahdanau")
    with pytest.raises(ValueError, match="Member 2 does not share member 1's vocabulary \\(vocab_size 24 vs 20\\)"):
        RNNAttnEnsemble([model, tiny_model("bigru-bahdanau", vocab_size=24)])
    with pytest.raises(ValueError, match="eos_token_id 3 vs 2"):
        RNNAttnEnsemble([model, tiny_model("bigru-bahdanau", eos_token_id=3)])
    tokenizers = [tiny_tokenizer(), train_translation_tokenizer(["otra cosa", "nada"], ["something else", "nothing"],
                                                                vocab_size=60)]
    for name, tokenizer in zip("ab", tokenizers):
        config = RNNAttnConfig.from_preset("bigru-bahdanau", vocab_size=60, embedding_size=8, hidden_size=8)
        RNNAttnForConditionalGeneration(config).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    with pytest.raises(ValueError, match="has another vocabulary"):
        load_ensemble([tmp_path / "a", tmp_path / "b"])


def test_command_translates_with_an_ensemble(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = RNNAttnConfig.from_preset("bigru-bahdanau", vocab_size=len(tokenizer), embedding_size=8,
                                           hidden_size=8, init_range=1.0)
        RNNAttnForConditionalGeneration(config).save_pretrained(tmp_path / f"m{seed}")
        tokenizer.save_pretrained(tmp_path / f"m{seed}")
    (tmp_path / "in.txt").write_text("\n".join(SOURCES[:4]) + "\n")
    common = ["translate", "--input", str(tmp_path / "in.txt"), "--num_beams", "2", "--max_new_tokens", "6"]

    def translate(*args):
        assert cli.main([*common, *args]) == 0
        return capsys.readouterr().out.splitlines()

    alone = translate("--model", str(tmp_path / "m0"))
    assert translate("--model", str(tmp_path / "m0"), "--ensemble", str(tmp_path / "m0")) == alone
    ensemble, ensemble_tokenizer = load_ensemble([tmp_path / "m0", tmp_path / "m1"])
    batch = ensemble_tokenizer(SOURCES[:4], return_tensors="pt", padding=True)
    expected = ensemble_tokenizer.batch_decode(ensemble.generate(**batch, num_beams=2, max_new_tokens=6),
                                               skip_special_tokens=True)
    assert translate("--model", str(tmp_path / "m0"), "--ensemble", str(tmp_path / "m1")) == expected
    assert cli.main([*common, "--model", str(tmp_path / "m0"), "--ensemble", str(tmp_path / "none")]) == 2
    assert "none does not exist" in capsys.readouterr().err
