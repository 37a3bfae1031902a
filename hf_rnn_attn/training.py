"""What a translation training run needs around `Seq2SeqTrainer` or a plain Accelerate loop: arguments, data,
tokenizer and model set up identically in every process, metrics, a trainer that scores each example once,
a time budget."""

import copy
import errno
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from accelerate import PartialState
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer, TrainerCallback, set_seed
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .configuration_rnn_attn import RNNAttnConfig
from .distributed import build_on_main_process
from .length_grouping import ShuffledLengthGroupedSampler
from .metrics import load_translation_metric
from .modeling_rnn_attn import RNNAttnForConditionalGeneration
from .tokenizer_training import train_translation_tokenizer
from .translation_data import load_translation_dataset

logger = logging.get_logger(__name__)
# Written into every checkpoint by TranslationTrainer: the summed training loss up to that step.
LOSS_SUM_FILE = "train_loss_sum.json"
LOSS_NORMALIZATIONS = ("tokens", "sentences")
# What a finished or interrupted training run leaves in its output folder.
TRAINING_RUN_FILES = ("model.safetensors", "config.json", "trainer_state.json", "training_args.bin")


def check_positive(arguments, names):
    """Raises `ValueError` naming the first of the `names` arguments that is set but not above zero."""
    for name in names:
        value = getattr(arguments, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name} must be positive, got {value}.")


@dataclass
class ModelArguments:
    preset: str = field(default="bigru-bahdanau", metadata={"help": "bigru-bahdanau or lstm-luong"})
    embedding_size: int = 256
    hidden_size: int = 256
    encoder_hidden_size: int | None = None
    attention_score: str | None = field(default=None, metadata={"help": "additive, dot, general or location"})
    attention_type: str | None = field(default=None, metadata={"help": "global, local-m or local-p"})
    local_window: int | None = field(default=None, metadata={"help": "D, the half-width of local attention's window"})
    input_feeding: bool | None = field(default=None, metadata={"help": "feed c_{t-1} into the decoder input"})
    max_source_positions: int | None = field(default=None, metadata={"help": "for the location score"})
    dropout: float = 0.2
    tie_word_embeddings: bool = False
    tokenizer: str | None = field(default=None, metadata={"help": "existing tokenizer folder; else train one"})
    vocab_size: int = field(default=8000, metadata={"help": "size of a newly trained tokenizer"})
    default_num_beams: int | None = field(default=None, metadata={
        "help": "num_beams saved in the model's generation config, what generate(), the pipeline and `hf-rnn-attn "
                "translate` use when not told (default: --generation_num_beams, else 1)"})
    default_length_penalty: float | None = field(default=None, metadata={
        "help": "length_penalty saved there, with --default_num_beams > 1: beam search ranks finished translations "
                "by log P(Y|X) / |Y| ** length_penalty (default: generate()'s 1.0)"})

    def __post_init__(self):
        check_positive(self, ("embedding_size", "hidden_size", "encoder_hidden_size", "max_source_positions",
                              "local_window", "vocab_size", "default_num_beams"))
        penalty = self.default_length_penalty
        if penalty is not None and not math.isfinite(penalty):
            raise ValueError(f"--default_length_penalty must be a finite number, got {penalty}")
        if penalty is not None and (self.default_num_beams or 1) == 1:
            # transformers refuses to save a generation config whose length_penalty greedy search would ignore
            raise ValueError("--default_length_penalty applies to beam search: it needs --default_num_beams > 1")


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
    lr_schedule_by_time: bool = field(default=False, metadata={
        "help": "with --max_train_minutes: run --lr_scheduler_type (and a --warmup_steps ratio) over the minutes "
                "instead of the steps, so that a linear schedule reaches 0 when the time is up"})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "evaluations without BLEU gain"})
    loss_normalization: Literal["tokens", "sentences"] = field(default="tokens", metadata={
        "help": "tokens: an update's loss is the mean over its target tokens (transformers'); sentences: the sum "
                "over them / (its sentences x the training set's mean target tokens), so that every target token "
                "weighs the same in every update (OpenNMT-py's `normalization: sents`, rescaled). Use sentences "
                "with --train_sampling_strategy group_by_length, whose batches of short sentences would otherwise "
                "weigh each of their tokens several times more than batches of long ones"})
    pad_to_multiple_of: int | None = field(default=None, metadata={
        "help": "pad each batch's sources and targets to a multiple of this many tokens. oneDNN, which runs the "
                "CPU's LSTMs and bf16 products, compiles and keeps a kernel for each shape it meets: with 8, "
                "lstm-luong trained under bf16 1,000 steps 8% faster, peak memory 2.3 GB instead of 2.6 GB "
                "(2-core Xeon with AMX); bigru-bahdanau's fp32 recurrent layers only run the extra steps"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "train into an --output_dir that holds a run, deleting its checkpoints (else refused)"})

    def __post_init__(self):
        check_positive(self, ("max_source_length", "max_target_length", "max_train_samples", "max_eval_samples",
                              "max_train_minutes", "early_stopping_patience", "pad_to_multiple_of"))
        if self.lr_schedule_by_time and self.max_train_minutes is None:
            raise ValueError("--lr_schedule_by_time needs --max_train_minutes: the schedule runs over that time.")
        check_loss_normalization(self.loss_normalization, "--loss_normalization")


def check_loss_normalization(value, name):
    if value not in LOSS_NORMALIZATIONS:
        raise ValueError(f"{name} must be one of {', '.join(LOSS_NORMALIZATIONS)}, got {value!r}.")


def mean_target_tokens(dataset):
    """The mean number of target tokens (`labels`, unpadded) per example of a tokenized dataset."""
    if dataset is None or "labels" not in dataset.column_names or len(dataset) == 0:
        raise ValueError("--loss_normalization sentences needs a training set with a `labels` column: its mean "
                         "target length scales the loss.")
    return float(np.mean([len(labels) for labels in dataset["labels"]]))


def check_output_dir(output_dir, overwrite_output_dir=False, resume_from_checkpoint=None):
    """Refuses to train into a folder that holds a run, whose model would be overwritten and whose checkpoints
    would mix with the new ones, unless resuming it or `overwrite_output_dir` (then its checkpoints are deleted).
    """
    folder = Path(output_dir)
    if resume_from_checkpoint or not folder.is_dir():
        return
    checkpoints = sorted(folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"))
    found = [path.name for path in checkpoints] + [name for name in TRAINING_RUN_FILES if (folder / name).exists()]
    if found and not overwrite_output_dir:
        raise ValueError(
            f"--output_dir {folder} already holds a training run ({', '.join(found[:4])}); pass "
            f"--resume_from_checkpoint to continue it, --overwrite_output_dir true to replace it, or choose another "
            f"folder."
        )
    if checkpoints and PartialState().is_main_process:
        for checkpoint in checkpoints:
            shutil.rmtree(checkpoint)


def check_training_length(training_args):
    """`Seq2SeqTrainingArguments` accept a run of no update at all, which would save the untrained model."""
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise ValueError(f"--max_steps must be a positive number of updates, or -1 to train for "
                         f"--num_train_epochs; got {training_args.max_steps}.")
    if training_args.max_steps == -1 and not training_args.num_train_epochs > 0:
        raise ValueError(f"--num_train_epochs must be positive (or set --max_steps); got "
                         f"{training_args.num_train_epochs}.")


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
                 ("embedding_size", "hidden_size", "encoder_hidden_size", "attention_score", "attention_type",
                  "local_window", "input_feeding", "max_source_positions", "dropout", "tie_word_embeddings")
                 if getattr(model_args, name) is not None}
    config = RNNAttnConfig.from_preset(
        model_args.preset, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id, src_lang=data_args.source_lang,
        tgt_lang=data_args.target_lang, **overrides)
    set_seed(seed)
    model = RNNAttnForConditionalGeneration(config)
    if model_args.default_num_beams is not None:
        model.generation_config.num_beams = model_args.default_num_beams
    if model_args.default_length_penalty is not None:
        model.generation_config.length_penalty = model_args.default_length_penalty

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


def translation_collator(tokenizer, model, data_args):
    """Batches of tokenized pairs: padded sources, labels padded with -100 and the decoder inputs made from them,
    each padded to a multiple of `--pad_to_multiple_of` tokens when it is set."""
    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100,
                                  pad_to_multiple_of=data_args.pad_to_multiple_of)


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

    `--label_smoothing_factor` is applied inside the model's fused loss (`label_smoothing`), which needs no
    B x T x V logits, and with `schedule_clock` (a `TimeBudgetCallback`) the learning-rate schedule runs over the
    time budget (`schedule_over_time`).

    With `loss_normalization="sentences"` an update's loss is its summed token loss divided by its sentences times
    the training set's mean target length (`mean_target_tokens`) instead of by its target tokens: with batches
    grouped by length, the token mean would weigh each token of a batch of short sentences several times more
    than one of a batch of long sentences. Evaluation keeps the token mean.

    A checkpoint save that fails (a full disk) removes its partial folder, so that the newest checkpoint is
    always a complete one, and says why. Each checkpoint records the summed training loss so far
    (`LOSS_SUM_FILE`), so that a resumed run reports `train_loss` over the whole run, as an uninterrupted one.
    """

    _loss_before_resume = 0.0  # summed loss of the steps before the checkpoint resumed from; None if unknown
    # A `TimeBudgetCallback` whose time the learning-rate schedule runs over (`schedule_over_time`); None: steps.
    schedule_clock = None

    target_tokens_seen = 0  # real (non -100) target tokens trained on by this process

    def __init__(self, *args, loss_normalization="tokens", **kwargs):
        super().__init__(*args, **kwargs)
        # Trainer's LabelSmoother needs the B x T x V logits; the model smooths inside its fused loss instead.
        self.label_smoothing = self.label_smoother.epsilon if self.label_smoother is not None else None
        self.label_smoother = None
        check_loss_normalization(loss_normalization, "loss_normalization")
        self.target_tokens_per_sentence = None  # set: the loss divides by sentences x this
        if loss_normalization == "sentences":
            if self.args.n_gpu > 1:
                raise ValueError("--loss_normalization sentences does not support torch.nn.DataParallel (several "
                                 "GPUs in one process): launch one process per GPU with torchrun or accelerate.")
            self.target_tokens_per_sentence = mean_target_tokens(self.train_dataset)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The update's batches and its loss's divisor: Trainer's target-token count, or with
        `loss_normalization="sentences"` its sentences (in all processes, where Trainer counts tokens in all
        processes) times the mean target length."""
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.target_tokens_per_sentence is None or num_items_in_batch is None:
            return batches, num_items_in_batch
        sentences = torch.tensor(sum(len(batch["labels"]) for batch in batches), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            sentences = self.accelerator.gather(sentences).sum()
        return batches, sentences * self.target_tokens_per_sentence

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.target_tokens_seen += int((inputs["labels"] != -100).sum())
        return super().training_step(model, inputs, num_items_in_batch)

    def _get_train_sampler(self, train_dataset=None):
        """`group_by_length` groups by target length, then source length, and shuffles the batches.

        Trainer's default key is the source length, but the decoder loop, most of a step after the output layer
        (which computes real target tokens only), scales with the padded target length; the encoder, which scales
        with the padded source length, is under a tenth of a step.
        transformers' sampler sorts groups of 50 batches and hands each out longest first;
        `ShuffledLengthGroupedSampler` sorts the whole set and shuffles the batches (its module says why).
        """
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "labels" not in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        lengths = [len(labels) * 100_000 + len(ids) for labels, ids in zip(dataset["labels"], dataset["input_ids"])]
        return ShuffledLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                            lengths=lengths)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.label_smoothing is not None and "labels" in inputs:
            inputs = {**inputs, "label_smoothing": self.label_smoothing}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def create_scheduler(self, num_training_steps, optimizer=None):
        if self.schedule_clock is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.args.warmup_steps >= 1:
            raise ValueError(f"--lr_schedule_by_time takes the warm-up as a fraction of the time (--warmup_steps "
                             f"below 1), got --warmup_steps {self.args.warmup_steps}.")
        scheduler = super().create_scheduler(TIME_SCHEDULE_STEPS, optimizer)
        self.lr_scheduler = schedule_over_time(scheduler, self.schedule_clock.fraction_spent)
        return self.lr_scheduler

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        return output._replace(training_loss=output.metrics["train_loss"])  # as corrected in `log`

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial):
        self._loss_before_resume = 0.0
        if resume_from_checkpoint is not None:
            record = Path(resume_from_checkpoint, LOSS_SUM_FILE)
            self._loss_before_resume = json.loads(record.read_text())["loss_sum"] if record.is_file() else None
            if self._loss_before_resume is None:
                logger.warning(f"{resume_from_checkpoint} has no {LOSS_SUM_FILE}: train_loss will average only the "
                               f"resumed steps.")
        return super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs,
                                            resume_from_checkpoint, trial)

    def log(self, logs, start_time=None):
        # Trainer's train_loss averages the steps of this train() call only; add those before the resumption.
        if "train_loss" in logs and self._loss_before_resume is not None:
            steps_now = self.state.global_step - self._initial_global_step
            logs["train_loss"] = ((self._loss_before_resume + logs["train_loss"] * steps_now)
                                  / max(self.state.global_step, 1))
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        folder = Path(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        existed = folder.exists()
        # The loss not yet logged, averaged over processes as Trainer logs it (a collective: every process is here).
        unlogged = nested_gather(self._tr_loss, self.args.parallel_mode).mean().item()
        try:
            if self.args.should_save and self._loss_before_resume is not None:
                folder.mkdir(parents=True, exist_ok=True)
                loss_sum = self._loss_before_resume + self._total_loss_scalar + unlogged
                (folder / LOSS_SUM_FILE).write_text(json.dumps({"loss_sum": loss_sum}) + "\n")
            super()._save_checkpoint(model, trial)
        except Exception as error:
            if self.args.should_save and not existed:
                shutil.rmtree(folder, ignore_errors=True)  # a partial checkpoint would look like the newest one
            if _is_disk_full(error):
                raise OSError(errno.ENOSPC, f"No space left on device: saving checkpoint {folder} failed ({error}). "
                                            f"The partial checkpoint was removed; free some space, then resume from "
                                            f"the previous checkpoint.") from error
            raise

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """`Seq2SeqTrainer.prediction_step`, leaving the model's generation config as it was.

        Seq2SeqTrainer writes generate()'s global defaults (`max_length=20`, ...) into it, and every checkpoint
        then saves them: `generate(max_new_tokens=...)` on a trained model warned that both lengths were set, and
        the translation pipeline's own default length no longer applied.
        """
        generation_config = copy.deepcopy(self.model.generation_config)
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        finally:
            self.model.generation_config = generation_config

    def evaluation_loop(self, *args, **kwargs):
        num_return_sequences = (getattr(self, "_gen_kwargs", None) or {}).get(
            "num_return_sequences", self.model.generation_config.num_return_sequences)
        if (num_return_sequences or 1) == 1:
            self.gather_function = self.accelerator.gather_for_metrics
        return super().evaluation_loop(*args, **kwargs)


def _is_disk_full(error):
    """A full disk surfaces as ENOSPC, as safetensors' "No space left", or as torch's zip writer
    "unexpected pos ..." (the file is shorter than what it wrote)."""
    return getattr(error, "errno", None) == errno.ENOSPC or any(
        sign in str(error) for sign in ("No space left", "unexpected pos"))


# The resolution of a schedule over time: it is built for this many steps, and the time spent picks the step.
TIME_SCHEDULE_STEPS = 10_000


def schedule_over_time(scheduler, fraction_spent, steps=TIME_SCHEDULE_STEPS):
    """`scheduler`, a `LambdaLR` built for `steps` steps (transformers' `get_scheduler`), driven by the fraction of
    a time budget spent (`fraction_spent()`, 0 to 1) instead of by the updates done.

    A run with a time budget does not know how many updates it will make: a schedule over steps would end early
    or never. Budgeted training (Li et al. 2020, "Budgeted Training: Rethinking Deep Neural Network Training
    Under Resource Constraints") finds a linear decay to 0 at the end of the budget the best of the common schedules.
    """
    if not isinstance(scheduler, LambdaLR):
        raise ValueError(f"--lr_schedule_by_time needs a step-based --lr_scheduler_type (linear, cosine, constant, "
                         f"...), got {type(scheduler).__name__}.")

    def by_time(by_step):
        return lambda _: by_step(min(steps, round(fraction_spent() * steps)))

    scheduler.lr_lambdas = [by_time(by_step) for by_step in scheduler.lr_lambdas]
    return scheduler


class TimeBudgetCallback(TrainerCallback):
    """Stops training after `minutes` of wall-clock time, evaluating and saving the last state first,
    so that a bounded run still ends with a scored, loadable checkpoint."""

    def __init__(self, minutes):
        self.seconds = minutes * 60
        self.start = None

    def fraction_spent(self):
        """The share of the budget spent since training began (0 before, at most 1)."""
        return 0.0 if self.start is None else min(1.0, (time.monotonic() - self.start) / self.seconds)

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.start >= self.seconds:
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        return control
