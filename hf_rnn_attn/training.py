"""What a translation training run needs around `Seq2SeqTrainer` or a plain Accelerate loop: arguments, data,
tokenizer and model set up identically in every process, metrics, a trainer that scores each example once,
a time budget."""

import time
from dataclasses import dataclass, field

import numpy as np
from accelerate import PartialState
from transformers import AutoTokenizer, Seq2SeqTrainer, TrainerCallback, set_seed

from .configuration_rnn_attn import RNNAttnConfig
from .distributed import build_on_main_process
from .metrics import load_translation_metric
from .modeling_rnn_attn import RNNAttnForConditionalGeneration
from .tokenizer_training import train_translation_tokenizer
from .translation_data import load_translation_dataset


@dataclass
class ModelArguments:
    preset: str = field(default="bigru-bahdanau", metadata={"help": "bigru-bahdanau or lstm-luong"})
    embedding_size: int = 256
    hidden_size: int = 256
    encoder_hidden_size: int | None = None
    attention_score: str | None = field(default=None, metadata={"help": "additive, dot, general or location"})
    max_source_positions: int | None = field(default=None, metadata={"help": "for the location score"})
    dropout: float = 0.2
    tie_word_embeddings: bool = False
    tokenizer: str | None = field(default=None, metadata={"help": "existing tokenizer folder; else train one"})
    vocab_size: int = field(default=8000, metadata={"help": "size of a newly trained tokenizer"})


@dataclass
class DataArguments:
    dataset: str = field(default="data/bible-es-en", metadata={"help": "jsonl folder or Hub dataset name"})
    dataset_config: str | None = None
    source_lang: str = "es"
    target_lang: str = "en"
    max_source_length: int = 128
    max_target_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = field(default=500, metadata={"help": "validation pairs scored during training"})
    max_train_minutes: float | None = field(default=None, metadata={"help": "stop training after this many minutes"})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "evaluations without BLEU gain"})


def prepare_translation_run(model_args, data_args, seed):
    """Tokenizer, a freshly initialised model and the tokenised train/validation splits.

    The same in every process of a distributed run: the tokenizer is trained on the main process and sent to
    the others, and the model is built right after `set_seed(seed)` (Trainer seeds only once the model exists,
    which would leave the initial weights, and so the whole run, to chance).

    Returns:
        (tokenizer, model, {"train": Dataset, "validation": Dataset})
    """
    raw = load_translation_dataset(data_args.dataset, data_args.source_lang, data_args.target_lang,
                                   config_name=data_args.dataset_config)
    splits = {"train": raw["train"], "validation": raw["validation"]}
    for name, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None:
            splits[name] = splits[name].select(range(min(limit, len(splits[name]))))

    if model_args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer)
    else:
        pairs = splits["train"]["translation"]
        tokenizer = build_on_main_process(lambda: train_translation_tokenizer(
            [p[data_args.source_lang] for p in pairs], [p[data_args.target_lang] for p in pairs],
            model_args.vocab_size))

    overrides = {name: getattr(model_args, name) for name in
                 ("embedding_size", "hidden_size", "encoder_hidden_size", "attention_score",
                  "max_source_positions", "dropout", "tie_word_embeddings") if getattr(model_args, name) is not None}
    config = RNNAttnConfig.from_preset(
        model_args.preset, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id, src_lang=data_args.source_lang,
        tgt_lang=data_args.target_lang, **overrides)
    set_seed(seed)
    model = RNNAttnForConditionalGeneration(config)

    with PartialState().main_process_first():  # the others then read the main process's `datasets` cache
        tokenized = {name: tokenize_translation_dataset(split, tokenizer, data_args.source_lang,
                                                        data_args.target_lang, data_args.max_source_length,
                                                        data_args.max_target_length)
                     for name, split in splits.items()}
    return tokenizer, model, tokenized


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
        # num_sentences shows that each example was scored once, also under several processes.
        return {"bleu": scores["bleu"], "chrf": scores["chrf"], "num_sentences": len(references)}

    return compute_metrics


class TranslationTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose evaluation scores every example exactly once under several processes.

    Under DDP, Accelerate completes the last evaluation batch of each process with repeated examples.
    `Seq2SeqTrainer.evaluate`/`predict` gather with `accelerator.gather`, which keeps those repeats (it does so
    for `num_return_sequences > 1`, which `gather_for_metrics` truncates wrongly: transformers PR 27025), so
    BLEU and chrF would score some sentences twice. With one sequence per example, `gather_for_metrics` drops
    exactly the repeats. (`eval_loss` stays Trainer's mean of per-batch mean losses, in which a repeat still
    shares the last batch of its process: it differs from the one-process value in the third decimal.)
    """

    def evaluation_loop(self, *args, **kwargs):
        num_return_sequences = (getattr(self, "_gen_kwargs", None) or {}).get(
            "num_return_sequences", self.model.generation_config.num_return_sequences)
        if (num_return_sequences or 1) == 1:
            self.gather_function = self.accelerator.gather_for_metrics
        return super().evaluation_loop(*args, **kwargs)


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
