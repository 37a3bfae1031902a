"""What `TranslationTrainer` does with Seq2SeqTrainer's options: a learning-rate schedule over a time budget
(`--lr_schedule_by_time`: the time spent, not the updates made, drives transformers' schedules),
`--label_smoothing_factor` inside the model's fused loss, `--loss_normalization`, and the batches of
`--pad_to_multiple_of`."""

import pytest
import torch
from datasets import Dataset
from transformers import Seq2SeqTrainingArguments, get_scheduler

from hf_rnn_attn import training
from hf_rnn_attn.training import (DataArguments, ModelArguments, TimeBudgetCallback, TranslationTrainer,
                                  schedule_over_time, translation_collator)
from script_helpers import SOURCES, TARGETS, tiny_tokenizer
from tiny_models import source_batch, tiny_model


class FakeClock:
    def __init__(self):
        self.fraction = 0.0

    def fraction_spent(self):
        return self.fraction


def learning_rate_at(scheduler, clock, fraction, updates=3):
    """The learning rate after `updates` scheduler steps with `fraction` of the time spent."""
    clock.fraction = fraction
    for _ in range(updates):
        scheduler.optimizer.step()
        scheduler.step()
    return scheduler.get_last_lr()[0]


def test_a_linear_schedule_over_time_warms_up_and_reaches_zero_when_the_time_is_up():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    clock = FakeClock()
    steps = training.TIME_SCHEDULE_STEPS
    scheduler = schedule_over_time(get_scheduler("linear", optimizer, num_warmup_steps=steps // 10,
                                                 num_training_steps=steps), clock.fraction_spent)
    # However many updates are made, the time spent sets the rate: 10% warm-up, then linear to 0.
    expected = {0.0: 0.0, 0.05: 0.5, 0.1: 1.0, 0.55: 0.5, 0.91: 0.1, 1.0: 0.0}
    for fraction, rate in expected.items():
        assert learning_rate_at(scheduler, clock, fraction) == pytest.approx(rate, abs=1e-3), fraction
        assert optimizer.param_groups[0]["lr"] == pytest.approx(rate, abs=1e-3)


def test_time_budget_callback_reports_the_fraction_spent(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: now[0])
    budget = TimeBudgetCallback(minutes=2)
    assert budget.fraction_spent() == 0.0  # before training begins
    budget.on_train_begin(None, None, None)
    now[0] += 30
    assert budget.fraction_spent() == pytest.approx(0.25)
    now[0] += 600
    assert budget.fraction_spent() == 1.0


def trainer_with_schedule(tmp_path, clock, **arguments):
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], learning_rate=1.0,
                                    **arguments)
    trainer = TranslationTrainer(model=tiny_model("bigru-bahdanau"), args=args)
    trainer.schedule_clock = clock
    return trainer


def test_trainer_runs_its_scheduler_over_the_time_budget(tmp_path):
    clock = FakeClock()
    trainer = trainer_with_schedule(tmp_path, clock, lr_scheduler_type="cosine", warmup_steps=0.2)
    trainer.create_optimizer_and_scheduler(num_training_steps=5)  # the step count does not matter
    assert learning_rate_at(trainer.lr_scheduler, clock, 0.1, updates=50) == pytest.approx(0.5, abs=1e-3)
    assert learning_rate_at(trainer.lr_scheduler, clock, 0.6) == pytest.approx(0.5, abs=1e-3)  # cosine's middle
    assert learning_rate_at(trainer.lr_scheduler, clock, 1.0) == pytest.approx(0.0, abs=1e-6)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-6)


def test_a_schedule_over_time_refuses_what_it_cannot_run_over_time(tmp_path):
    trainer = trainer_with_schedule(tmp_path, FakeClock(), lr_scheduler_type="linear", warmup_steps=100)
    with pytest.raises(ValueError, match="warm-up as a fraction of the time"):
        trainer.create_optimizer_and_scheduler(num_training_steps=5)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    on_plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)  # driven by a metric, not by steps
    with pytest.raises(ValueError, match="step-based --lr_scheduler_type"):
        schedule_over_time(on_plateau, FakeClock().fraction_spent)


def test_a_schedule_over_time_needs_a_time_budget():
    with pytest.raises(ValueError, match="--lr_schedule_by_time needs --max_train_minutes"):
        DataArguments(lr_schedule_by_time=True)
    assert DataArguments(lr_schedule_by_time=True, max_train_minutes=30).lr_schedule_by_time


def test_a_default_length_penalty_needs_beam_search_and_a_number():
    # Refused before training: transformers would refuse to save the generation config at the first checkpoint.
    with pytest.raises(ValueError, match="--default_length_penalty applies to beam search: it needs --default_num"):
        ModelArguments(default_length_penalty=0.6)
    with pytest.raises(ValueError, match="--default_length_penalty must be a finite number, got nan"):
        ModelArguments(default_num_beams=5, default_length_penalty=float("nan"))
    with pytest.raises(ValueError, match="--default_num_beams must be positive, got 0"):
        ModelArguments(default_num_beams=0)


def test_trainer_smooths_labels_inside_the_models_fused_loss(tmp_path):
    """`--label_smoothing_factor` reaches the model's loss (`label_smoothing`), which needs no B x T x V logits;
    Trainer's own LabelSmoother, which does, is not used."""
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], label_smoothing_factor=0.1)
    model = tiny_model("bigru-bahdanau").train()
    trainer = TranslationTrainer(model=model, args=args)
    assert trainer.label_smoother is None and trainer.label_smoothing == 0.1
    input_ids, attention_mask = source_batch()
    labels = torch.tensor([[4, 5, 6, -100]] * 3)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    loss, outputs = trainer.compute_loss(model, dict(inputs), return_outputs=True)
    assert outputs.logits is None  # the fused loss
    smoothed = model(**inputs, label_smoothing=0.1, skip_logits=False)
    torch.testing.assert_close(loss, smoothed.loss)
    assert not torch.allclose(loss, model(**inputs).loss)


def batches_with_labels(target_lengths_per_batch):
    """Collated batches (input ids, mask, -100-padded labels) with the given target lengths."""
    batches = []
    for lengths in target_lengths_per_batch:
        input_ids = torch.randint(3, 20, (len(lengths), 5), generator=torch.Generator().manual_seed(len(batches)))
        attention_mask = torch.ones_like(input_ids)
        labels = torch.full((len(lengths), max(lengths)), -100)
        for row, length in enumerate(lengths):
            labels[row, :length] = torch.arange(4, 4 + length)
        batches.append(dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels))
    return batches


@pytest.mark.parametrize("loss_normalization", ["tokens", "sentences"])
def test_loss_normalization_sets_the_divisor_of_each_update(tmp_path, loss_normalization):
    """tokens: an update's summed token loss / its target tokens (Trainer's); sentences: / its sentences x the
    training set's mean target length, so that a token of a batch of short sentences weighs as much as one of
    a batch of long ones."""
    train_dataset = Dataset.from_dict({"input_ids": [[5, 6]] * 4, "labels": [[4] * 2, [4] * 3, [4] * 5, [4] * 6]})
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                                    gradient_accumulation_steps=2)
    model = tiny_model("bigru-bahdanau").train()
    trainer = TranslationTrainer(model=model, args=args, train_dataset=train_dataset,
                                 loss_normalization=loss_normalization)
    update = batches_with_labels([[2, 3, 2], [6, 5]])  # 5 sentences, 18 target tokens
    batches, divisor = trainer.get_batch_samples(iter(update), num_batches=2, device=torch.device("cpu"))

    assert len(batches) == 2
    expected = {"tokens": 18, "sentences": 5 * (2 + 3 + 5 + 6) / 4}[loss_normalization]
    assert float(divisor) == pytest.approx(expected)
    loss = trainer.compute_loss(model, dict(batches[0]), num_items_in_batch=divisor)
    summed = model(**batches[0], skip_logits=False).logits.log_softmax(-1)
    labels = batches[0]["labels"]
    summed = -summed.gather(2, labels.clamp(min=0)[..., None])[..., 0][labels != -100].sum()
    torch.testing.assert_close(loss, summed / expected)


def test_loss_normalization_refuses_what_it_cannot_do(tmp_path):
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="loss_normalization must be one of .*got 'sents'"):
        TranslationTrainer(model=tiny_model("bigru-bahdanau"), args=args, loss_normalization="sents")
    with pytest.raises(ValueError, match="--loss_normalization sentences needs a training set with a `labels`"):
        TranslationTrainer(model=tiny_model("bigru-bahdanau"), args=args, loss_normalization="sentences")
    with pytest.raises(ValueError, match="--loss_normalization must be one of tokens, sentences, got 'sents'"):
        DataArguments(loss_normalization="sents")


@pytest.mark.parametrize("variant", ["bigru-bahdanau", "lstm-luong-general"])
def test_pad_to_multiple_of_pads_the_batch_and_leaves_the_loss_and_gradients_alone(variant):
    """Sources, labels and decoder inputs padded to a multiple of 8 tokens (fewer sequence lengths for oneDNN's
    kernels to compile); the padding is masked and labelled -100, so the loss and gradients are the batch's."""
    tokenizer = tiny_tokenizer()
    features = [{"input_ids": tokenizer(source)["input_ids"], "labels": tokenizer(text_target=target)["input_ids"]}
                for source, target in zip(SOURCES[:3], TARGETS[:3])]
    results = {}
    for multiple in (None, 8):
        model = tiny_model(variant, vocab_size=len(tokenizer), dropout=0.0).train()
        batch = translation_collator(tokenizer, model, DataArguments(pad_to_multiple_of=multiple))(features)
        loss = model(**batch).loss
        loss.backward()
        results[multiple] = batch, loss, [parameter.grad for parameter in model.parameters()]
    (plain, plain_loss, plain_grads), (padded, padded_loss, padded_grads) = results[None], results[8]
    for name in ("input_ids", "attention_mask", "labels", "decoder_input_ids"):
        assert padded[name].shape[1] % 8 == 0
        assert padded[name].shape[1] > plain[name].shape[1]
    assert (padded["labels"] != -100).sum() == (plain["labels"] != -100).sum()
    torch.testing.assert_close(padded_loss, plain_loss)
    for padded_grad, plain_grad in zip(padded_grads, plain_grads):
        torch.testing.assert_close(padded_grad, plain_grad)
