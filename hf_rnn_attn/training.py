"""What a translation training run needs around `Seq2SeqTrainer`: tokenised data, metrics, a time budget."""

import time

import numpy as np
from transformers import TrainerCallback

from .metrics import load_translation_metric


def tokenize_translation_dataset(dataset, tokenizer, source_lang, target_lang, max_source_length=128,
                                 max_target_length=128, num_proc=None):
    """Maps `{"translation": {src: ..., tgt: ...}}` rows to `input_ids`, `attention_mask` and `labels`."""

    def tokenize(batch):
        sources = [pair[source_lang] for pair in batch["translation"]]
        targets = [pair[target_lang] for pair in batch["translation"]]
        features = tokenizer(sources, max_length=max_source_length, truncation=True)
        features["labels"] = tokenizer(text_target=targets, max_length=max_target_length, truncation=True)["input_ids"]
        return features

    return dataset.map(tokenize, batched=True, num_proc=num_proc, remove_columns=dataset.column_names,
                       desc="Tokenizing")


def build_compute_metrics(tokenizer, metric=None):
    """`compute_metrics` for `Seq2SeqTrainer(predict_with_generate=True)`: BLEU and chrF, offline."""
    metric = metric or load_translation_metric()

    def compute_metrics(eval_prediction):
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        # Trainer pads ragged generations and labels with -100, which is no token.
        predictions = np.where(predictions < 0, tokenizer.pad_token_id, predictions)
        labels = np.where(labels < 0, tokenizer.pad_token_id, labels)
        hypotheses = [text.strip() for text in tokenizer.batch_decode(predictions, skip_special_tokens=True)]
        references = [text.strip() for text in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        scores = metric.compute(predictions=hypotheses, references=references)
        return {"bleu": scores["bleu"], "chrf": scores["chrf"]}

    return compute_metrics


class TimeBudgetCallback(TrainerCallback):
    """Stops training after `minutes` of wall-clock time, evaluating and saving the last state first,
    so that a bounded run still ends with a scored, loadable checkpoint."""

    def __init__(self, minutes):
        self.seconds = minutes * 60
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.start >= self.seconds:
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        return control
