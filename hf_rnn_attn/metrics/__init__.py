"""Offline translation metrics, loaded through `evaluate` from a folder shipped inside the package."""

from pathlib import Path

import evaluate

TRANSLATION_METRIC_PATH = str(Path(__file__).parent / "translation_scores")


def load_translation_metric(**kwargs):
    """Load BLEU + chrF by local path, because `evaluate.load("sacrebleu")` needs the Hub."""
    return evaluate.load(TRANSLATION_METRIC_PATH, **kwargs)
