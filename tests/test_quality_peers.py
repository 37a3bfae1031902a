"""scripts/quality_peers.py and scripts/onmt_train_for.py: both toolkits get the same wall-clock budget, ours trains
with the default recipe at the reference shape (the 30-minute comparison itself runs outside the tests)."""

import subprocess
import sys
from itertools import islice

import pytest
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from hf_rnn_attn.training import DataArguments, ModelArguments
from script_helpers import ROOT, load_script

QUALITY = load_script("quality_peers")
ONMT_TRAIN_FOR = load_script("onmt_train_for")


def quality_arguments(*argv):
    return HfArgumentParser(QUALITY.QualityArguments).parse_args_into_dataclasses(args=list(argv))[0]


@pytest.mark.parametrize("preset, encoder_hidden_size", [("bigru-bahdanau", 128), ("lstm-luong", 256)])
def test_ours_trains_the_reference_shape_with_the_default_recipe_for_the_budget(preset, encoder_hidden_size, tmp_path):
    args = quality_arguments("--preset", preset, "--minutes", "7.5")
    command = QUALITY.ours_train_command(args, "tok", tmp_path / "model")
    parser = HfArgumentParser((ModelArguments, DataArguments, Seq2SeqTrainingArguments))
    model, data, training = parser.parse_args_into_dataclasses(args=[str(part) for part in command[2:]])
    assert (model.preset, model.embedding_size, model.hidden_size, model.encoder_hidden_size) == (
        preset, 256, 256, encoder_hidden_size)
    assert data.max_train_minutes == 7.5 and model.tokenizer == "tok"
    assert training.train_sampling_strategy == "group_by_length" and data.loss_normalization == "sentences"
    assert (training.learning_rate, training.max_grad_norm, training.per_device_train_batch_size) == (2e-3, 1.0, 64)
    assert training.load_best_model_at_end and training.metric_for_best_model == "bleu"
    assert (model.default_num_beams, model.default_length_penalty) == (5, 0.6)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match=r"--preset must be one of \['bigru-bahdanau', 'lstm-luong'\], got 'gru'"):
        quality_arguments("--preset", "gru")
    with pytest.raises(ValueError, match=r"--minutes must be positive, got 0.0"):
        quality_arguments("--minutes", "0")


def test_the_table_shows_steps_scores_length_ratios_and_differences():
    def result(steps, bleu):
        return {"train": {"steps": steps, "model_step": steps - 100},
                "scores": {str(beams): {"bleu": bleu + beams, "chrf": 50.0, "length_ratio": 1.02} for beams in (1, 5)}}

    table = QUALITY.markdown_table(quality_arguments(), {"onmt": result(2600, 30.0), "ours": result(3100, 31.5)})
    assert "| training steps reached | 2,600 | 3,100 | |" in table
    assert "| step of the model scored | 2,500 | 3,000 | |" in table
    assert "| beam 5: BLEU | 35.00 | 36.50 | +1.50 |" in table
    assert "| greedy: output/reference length | 1.020 | 1.020 | |" in table


class FakeTrainer:
    def _accum_batches(self, iterator):
        yield from iterator


def test_onmt_training_loop_ends_with_the_step_that_reaches_the_deadline():
    ONMT_TRAIN_FOR.stop_after(FakeTrainer, seconds=3600)
    assert list(islice(FakeTrainer()._accum_batches(iter(range(100))), 5)) == [0, 1, 2, 3, 4]
    ONMT_TRAIN_FOR.stop_after(FakeTrainer, seconds=0)
    assert list(FakeTrainer()._accum_batches(iter(range(100)))) == [0]  # one step, so that there is a model


@pytest.mark.parametrize("minutes", ["0", "half", "-3"])
def test_onmt_budget_must_be_a_positive_number(minutes):
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "onmt_train_for.py"), minutes, "-config", "x.yaml"],
                         capture_output=True, text=True)
    assert run.returncode == 1 and f"MINUTES (the first argument) must be a positive number, got '{minutes}'" in run.stderr
