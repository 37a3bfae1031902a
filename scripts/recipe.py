"""The package's default training recipe, in one place: `scripts/main.sh`, the attention table and the quality
comparison against OpenNMT-py all train with it.

Usage:
    .venv/bin/python scripts/train.py --preset lstm-luong ... $(.venv/bin/python scripts/recipe.py --preset lstm-luong)

Batches of 64 pairs of similar target length in random order, Adam from 2e-3 decaying linearly to 0 over the time
budget (the caller's --max_train_minutes; `--lr_schedule_by_time`) with gradients clipped to norm 1.0 (at 1e-3 the
lstm-luong preset plateaus early), greedy validation BLEU on 300 pairs every 400 updates, and the best of those
checkpoints kept as the model. Its generation config decodes with beam 5 ranking finished translations by
log P / |Y| ** 0.6 (generate()'s default 1.0 made these models' beam output 7-14% longer than the references). The
linear decay was measured against a constant 2e-3 in 30-minute bigru-bahdanau runs, the length penalty on the validation
split.

The loss normalisation is the one part chosen per preset (README, "Quality for the same training time"):
bigru-bahdanau divides each update's loss by its sentences times the mean target length (`--loss_normalization
sentences`: every token weighs the same in every batch; +1.7 beam-5 BLEU over the token mean in 20-minute runs),
lstm-luong by its tokens (the token mean gave it 5.2 more beam-5 BLEU in 30-minute runs).
Printed as one argument per word for a shell; imported as `recipe(preset)`.
"""

import argparse

SHARED_RECIPE = [
    "--num_train_epochs", "100", "--per_device_train_batch_size", "64", "--train_sampling_strategy", "group_by_length",
    "--learning_rate", "2e-3", "--lr_scheduler_type", "linear", "--lr_schedule_by_time", "true",
    "--max_grad_norm", "1.0",
    "--eval_strategy", "steps", "--eval_steps", "400", "--save_steps", "400", "--save_total_limit", "2",
    "--predict_with_generate", "true", "--generation_num_beams", "1", "--generation_max_length", "128",
    "--max_eval_samples", "300", "--per_device_eval_batch_size", "64",
    "--load_best_model_at_end", "true", "--metric_for_best_model", "bleu", "--greater_is_better", "true",
    "--default_num_beams", "5", "--default_length_penalty", "0.6", "--seed", "1",
]
LOSS_NORMALIZATION = {"bigru-bahdanau": "sentences", "lstm-luong": "tokens"}


def recipe(preset):
    """The recipe's `scripts/train.py` arguments for `preset` (one of `LOSS_NORMALIZATION`)."""
    if preset not in LOSS_NORMALIZATION:
        raise ValueError(f"the recipe knows the presets {list(LOSS_NORMALIZATION)}, got {preset!r}")
    return [*SHARED_RECIPE, "--loss_normalization", LOSS_NORMALIZATION[preset]]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the default recipe's scripts/train.py arguments.")
    parser.add_argument("--preset", required=True, choices=list(LOSS_NORMALIZATION), help="the model's preset")
    print(" ".join(recipe(parser.parse_args().preset)))
