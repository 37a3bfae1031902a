"""scripts/recipe.py: the default recipe, the same for every preset but its loss normalisation, printed for a shell."""

import subprocess
import sys

import pytest
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from hf_rnn_attn.training import DataArguments, ModelArguments
from script_helpers import ROOT, load_script

RECIPE = load_script("recipe")


def run_recipe_script(*argv):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "recipe.py"), *argv], capture_output=True, text=True)


@pytest.mark.parametrize("preset, loss_normalization", [("bigru-bahdanau", "sentences"), ("lstm-luong", "tokens")])
def test_the_printed_recipe_is_the_presets_and_train_py_parses_it(preset, loss_normalization):
    printed = run_recipe_script("--preset", preset)
    assert printed.returncode == 0 and printed.stdout.split() == RECIPE.recipe(preset)
    parser = HfArgumentParser((ModelArguments, DataArguments, Seq2SeqTrainingArguments))
    _, data, training = parser.parse_args_into_dataclasses(args=["--output_dir", "out", "--max_train_minutes", "5",
                                                                        *printed.stdout.split()])
    assert data.loss_normalization == loss_normalization
    assert (training.learning_rate, training.max_grad_norm, training.per_device_train_batch_size) == (2e-3, 1.0, 64)
    assert training.load_best_model_at_end and training.metric_for_best_model == "bleu"


def test_the_presets_differ_only_in_their_loss_normalization():
    bigru, lstm = RECIPE.recipe("bigru-bahdanau"), RECIPE.recipe("lstm-luong")
    assert bigru[:-1] == lstm[:-1] and bigru[-2] == "--loss_normalization"


def test_a_preset_is_required_and_checked():
    missing = run_recipe_script()
    assert missing.returncode == 2 and "--preset" in missing.stderr and not missing.stdout
    unknown = run_recipe_script("--preset", "gru")
    assert unknown.returncode == 2 and "invalid choice: 'gru'" in unknown.stderr
    with pytest.raises(ValueError, match=r"the recipe knows the presets \['bigru-bahdanau', 'lstm-luong'\], got 'gru'"):
        RECIPE.recipe("gru")


def test_main_sh_trains_with_the_recipe_of_its_preset():
    assert '$($PY scripts/recipe.py --preset "$PRESET")' in (ROOT / "scripts" / "main.sh").read_text()
