import json
import os
import subprocess
import sys

import pytest
from sacrebleu.metrics import BLEU, CHRF

from hf_rnn_attn.metrics import TRANSLATION_METRIC_PATH, load_translation_metric

HYPOTHESES = ["The cat sat on the mat.", "There is a dog in the garden, isn't there?", "He went home early."]
REFERENCES = ["The cat is sitting on the mat.", "A dog is in the garden, isn't it?", "He went home early today."]
SECOND_REFERENCES = ["The cat sat on the rug.", "There's a dog in the garden, right?", "He left for home early."]


@pytest.fixture(scope="module")
def metric():
    return load_translation_metric()


def test_identical_hypotheses_score_100(metric):
    scores = metric.compute(predictions=REFERENCES, references=REFERENCES)
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)


def test_disjoint_hypotheses_score_near_0(metric):
    scores = metric.compute(predictions=["zzz qqq xxx vvv"] * 3, references=REFERENCES)
    assert scores["bleu"] < 1.0
    assert scores["chrf"] < 5.0


def test_scores_match_sacrebleu_directly(metric):
    scores = metric.compute(predictions=HYPOTHESES, references=REFERENCES)
    assert scores["bleu"] == pytest.approx(BLEU().corpus_score(HYPOTHESES, [REFERENCES]).score)
    assert scores["chrf"] == pytest.approx(CHRF().corpus_score(HYPOTHESES, [REFERENCES]).score)
    assert 0.0 < scores["bleu"] < 100.0


def test_string_and_single_item_list_references_agree(metric):
    as_strings = metric.compute(predictions=HYPOTHESES, references=REFERENCES)
    as_lists = metric.compute(predictions=HYPOTHESES, references=[[reference] for reference in REFERENCES])
    assert as_lists == as_strings


def test_multiple_references_match_sacrebleu(metric):
    references = [list(pair) for pair in zip(REFERENCES, SECOND_REFERENCES)]
    scores = metric.compute(predictions=HYPOTHESES, references=references)
    streams = [REFERENCES, SECOND_REFERENCES]
    assert scores["bleu"] == pytest.approx(BLEU().corpus_score(HYPOTHESES, streams).score)
    assert scores["chrf"] == pytest.approx(CHRF().corpus_score(HYPOTHESES, streams).score)


def test_hypotheses_may_have_different_numbers_of_references(metric):
    references = [[REFERENCES[0], SECOND_REFERENCES[0]], [REFERENCES[1]], [REFERENCES[2], SECOND_REFERENCES[2]]]
    scores = metric.compute(predictions=HYPOTHESES, references=references)
    streams = [REFERENCES, [SECOND_REFERENCES[0], None, SECOND_REFERENCES[2]]]
    assert scores["bleu"] == pytest.approx(BLEU().corpus_score(HYPOTHESES, streams).score)
    assert "nrefs:var" in scores["bleu_signature"]


def test_signatures_name_sacrebleu_defaults(metric):
    scores = metric.compute(predictions=HYPOTHESES, references=REFERENCES)
    assert "tok:13a" in scores["bleu_signature"] and "nrefs:1" in scores["bleu_signature"]
    assert "nc:6" in scores["chrf_signature"]


def test_loads_offline_in_a_fresh_process():
    script = (
        "import evaluate, json, sys;"
        f"metric = evaluate.load({TRANSLATION_METRIC_PATH!r});"
        "print(json.dumps(metric.compute(predictions=['a b c d'], references=['a b c d'])))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)
