"""The numpy greedy and beam search of `hf_rnn_attn_runtime.search`, over both of its steps: the exported ONNX graphs
(`ONNXTranslator`) and the PyTorch layers without transformers (`TorchTranslator`). Each gives generate()'s tokens
and scores on every variant it runs, with the search's rules, refilling and searches side by side."""

import numpy as np
import pytest

from hf_rnn_attn.onnx_export import export_onnx
from hf_rnn_attn_runtime.onnx import ONNXTranslator
from hf_rnn_attn_runtime.torch_backend import TorchTranslator
from scoring_helpers import teacher_forced_scores
from tiny_models import SEARCH_BATCH, STEPWISE_VARIANTS, lively_model, source_batch

BACKENDS = ("onnx", "torch")
# Largest difference of scores from generate()'s and the teacher-forced pass's: sums of float32 log-probabilities
# over up to 15 steps, added in another order (and by onnxruntime for the graphs).
SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def translators(tmp_path_factory):
    """(backend, variant, threads) -> (model, its translator); each variant saved, and exported, once."""
    folders, cache = {}, {}

    def get(backend, variant, threads=1):
        if variant not in folders:
            folders[variant] = lively_model(variant), tmp_path_factory.mktemp(variant)
            folders[variant][0].save_pretrained(folders[variant][1] / "model")
        model, folder = folders[variant]
        if backend == "onnx" and not (folder / "onnx").is_dir():
            export_onnx(model, folder / "onnx")
        if (backend, variant, threads) not in cache:
            translator = (ONNXTranslator(folder / "onnx", threads=threads) if backend == "onnx" else
                          TorchTranslator(folder / "model", threads=threads))
            cache[backend, variant, threads] = model, translator
        return cache[backend, variant, threads]
    return get


# With 3 threads the four sentences go to three searches side by side, one sentence at a time each, each taking
# the next from the queue when its sentence ends (to two searches where `max_active_rows` allows two sentences).
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("max_active_rows", [None, 2])
@pytest.mark.parametrize("variant", STEPWISE_VARIANTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_search_equals_generate(backend, variant, max_active_rows, threads, translators):
    """With `max_active_rows=2` the four sentences decode two at a time, each that ends replaced by the next."""
    model, translator = translators(backend, variant, threads)
    input_ids, attention_mask = source_batch(**SEARCH_BATCH)
    expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=15)
    output = translator.generate(input_ids.numpy(), attention_mask.numpy(), max_new_tokens=15,
                                 max_active_rows=max_active_rows)
    np.testing.assert_array_equal(output.sequences, expected.numpy())
    log_probs, *_ = teacher_forced_scores(model, input_ids, attention_mask, expected, model.config.eos_token_id)
    np.testing.assert_allclose(output.scores, log_probs.numpy(), atol=SCORE_TOLERANCE, rtol=0)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("max_active_rows", [None, 10])
@pytest.mark.parametrize("variant", STEPWISE_VARIANTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_beam_search_equals_generate(backend, variant, max_active_rows, threads, translators):
    """With `max_active_rows=10` the four sentences decode two at a time."""
    model, translator = translators(backend, variant, threads)
    check_beam_search(model, translator, {"num_beams": 5, "num_return_sequences": 5, "max_new_tokens": 15},
                      max_active_rows)  # all beams, not only the best


@pytest.mark.parametrize("settings", [
    {"early_stopping": True, "num_return_sequences": 3},
    {"early_stopping": "never", "length_penalty": 0.6},
    {"length_penalty": 2.0, "num_return_sequences": 4},
    {"max_new_tokens": 3},
])
@pytest.mark.parametrize("max_active_rows", [None, 4])
@pytest.mark.parametrize("backend", BACKENDS)
def test_beam_search_rules_equal_generate(backend, settings, max_active_rows, translators):
    """Length penalty, the three early-stopping rules, several returned sequences, and the length limit; all
    sentences at once in two searches side by side, and one at a time (`max_active_rows=4`, the beams of one)."""
    model, translator = translators(backend, "lstm-input-feeding-bidirectional", threads=2)
    check_beam_search(model, translator, {"num_beams": 4, "max_new_tokens": 12, **settings}, max_active_rows)


def check_beam_search(model, translator, settings, max_active_rows):
    input_ids, attention_mask = source_batch(**SEARCH_BATCH)
    expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings, output_scores=True,
                              return_dict_in_generate=True)
    output = translator.generate(input_ids.numpy(), attention_mask.numpy(), **settings,
                                 max_active_rows=max_active_rows)
    np.testing.assert_array_equal(output.sequences, expected.sequences.numpy())
    np.testing.assert_allclose(output.scores, expected.sequences_scores.numpy(), atol=SCORE_TOLERANCE,
                               rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_sources_are_refused(backend, translators):
    _, translator = translators(backend, "lstm-luong-location")
    input_ids, attention_mask = source_batch(length=13)
    with pytest.raises(ValueError, match="Source length 13 exceeds max_source_positions=12"):
        translator.generate(input_ids.numpy(), attention_mask.numpy())
    with pytest.raises(ValueError, match="must be right-padded"):
        translator.generate(np.array([[3, 0, 4]]), np.array([[1, 0, 1]]))
    with pytest.raises(ValueError, match=r"token ids in \[0, 20\)"):
        translator.generate(np.array([[3, 25]]))


@pytest.mark.parametrize("max_active_rows", [0, -1, 2.5])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_max_active_rows_is_refused(backend, max_active_rows, translators):
    _, translator = translators(backend, "bigru-bahdanau")
    input_ids, attention_mask = source_batch(**SEARCH_BATCH)
    with pytest.raises(ValueError, match="`max_active_rows` must be a positive integer or None"):
        translator.generate(input_ids.numpy(), attention_mask.numpy(), max_active_rows=max_active_rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_searches_side_by_side_share_max_active_rows(backend, translators, monkeypatch):
    """`max_active_rows` bounds the rows of all searches together: two searches decode two rows each at most."""
    _, translator = translators(backend, "bigru-bahdanau", threads=2)
    rows_per_step = []
    step = translator._step
    monkeypatch.setattr(translator, "_step", lambda tokens, *args: rows_per_step.append(len(tokens)) or
                        step(tokens, *args))
    input_ids, attention_mask = source_batch(seed=1, batch_size=8, length=9)
    translator.generate(input_ids.numpy(), attention_mask.numpy(), max_new_tokens=15, max_active_rows=4)
    assert max(rows_per_step) == 2
