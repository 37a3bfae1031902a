"""Corpus BLEU and chrF from sacrebleu as a local `evaluate` metric.

`evaluate.load("sacrebleu")` fetches its script from the Hub and fails offline; this folder loads by path with no
network, and gives both scores with their sacrebleu signatures (which make scores comparable across papers).
"""

import datasets
import evaluate
from sacrebleu.metrics import BLEU, CHRF

_DESCRIPTION = """Corpus-level BLEU (13a tokenisation) and chrF (character 6-grams, beta 2) with sacrebleu's
default settings, both on a 0-100 scale."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one detokenised hypothesis per source sentence.
    references (`list[str]` or `list[list[str]]`): one reference, or a list of references, per hypothesis.
        Hypotheses may have different numbers of references.
Returns:
    bleu (`float`), chrf (`float`): corpus scores, 0-100.
    bleu_signature (`str`), chrf_signature (`str`): sacrebleu signatures of the settings used.
    bleu_precisions (`list[float]`): 1- to 4-gram precisions, 0-100.
    brevity_penalty (`float`), length_ratio (`float`): hypothesis length over reference length drives the penalty.
Examples:
    >>> metric = evaluate.load("hf_rnn_attn/metrics/translation_scores")
    >>> metric.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])["bleu"]
    100.0
"""

_CITATION = """@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TranslationScores(evaluate.Metric):
    """BLEU and chrF of a list of hypotheses against one or more references each."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Two feature sets: evaluate picks the one that matches, so a reference can be a string or a list.
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.List(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/W18-6319", "https://aclanthology.org/W15-3049"],
        )

    def _compute(self, predictions, references):
        reference_streams = _reference_streams(references)
        bleu, chrf = BLEU(), CHRF()
        bleu_score = bleu.corpus_score(predictions, reference_streams)
        chrf_score = chrf.corpus_score(predictions, reference_streams)
        return {
            "bleu": bleu_score.score,
            "chrf": chrf_score.score,
            "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature()),
            "bleu_precisions": bleu_score.precisions,
            "brevity_penalty": bleu_score.bp,
            "length_ratio": bleu_score.ratio,
        }


def _reference_streams(references):
    """Turn one list of references per hypothesis into sacrebleu's one stream per reference position.

    Missing references are `None`, which sacrebleu skips, so hypotheses may have different numbers of them.
    """
    per_hypothesis = [[reference] if isinstance(reference, str) else reference for reference in references]
    most = max(len(candidates) for candidates in per_hypothesis)
    return [
        [candidates[position] if position < len(candidates) else None for candidates in per_hypothesis]
        for position in range(most)
    ]
