"""Train an RNN-attention translation model with a plain Accelerate loop, for those who do not use Trainer.

Usage:
    python scripts/train_accelerate.py --dataset data/bible-es-en --preset bigru-bahdanau \
        --output_dir runs/bigru-loop --max_steps 2000 --per_device_train_batch_size 64 --learning_rate 2e-3
    torchrun --nproc_per_node 2 scripts/train_accelerate.py --dataset data/bible-es-en --output_dir runs/loop2 \
        --per_device_train_batch_size 32 --max_steps 2000       # same global batch (64), same results
    accelerate launch --multi_gpu --num_processes 2 scripts/train_accelerate.py ...   # the same, via Accelerate
    python scripts/train_accelerate.py ... --mixed_precision bf16 --gradient_accumulation_steps 4

Model, data, tokenizer and seeding are those of scripts/train.py (`hf_rnn_attn.training.prepare_translation_run`),
as are the optimizer defaults (fused AdamW, linear decay, gradient clipping at 1.0): with the same seed and
arguments, the loop ends with the weights Trainer ends with. One update consumes `gradient_accumulation_steps`
batches per process; the loss is the summed token cross-entropy over all of them, in all processes, divided by
their total target-token count (with --loss_normalization sentences, as in scripts/train.py, by their sentences
times the training set's mean target length), so the process count and accumulation never change it. Writes the
model, tokenizer, `log_history.json` (training loss per logged update) and `eval_results.json` to --output_dir.
"""

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin
from torch.utils.data import DataLoader
from transformers import EvalPrediction, HfArgumentParser, get_scheduler

from hf_rnn_attn.distributed import use_cpu_processes_without_accelerator
from hf_rnn_attn.training import (DataArguments, ModelArguments, build_compute_metrics, check_positive,
                                  mean_target_tokens, prepare_translation_run, translation_collator)


@dataclass
class LoopArguments:
    """The training-loop options; names and defaults as in `Seq2SeqTrainingArguments`."""

    output_dir: str = field(metadata={"help": "where the model, tokenizer and logs go"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer updates"})
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    seed: int = 42
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 (autocast in forward)"})
    logging_steps: int = 50
    eval_steps: int | None = field(default=None, metadata={"help": "evaluate every N updates; always at the end"})
    generation_max_length: int = 128
    generation_num_beams: int = 1

    def __post_init__(self):
        # max_steps 0 would train forever, accumulation 0 hang collecting batches, logging_steps 0 divide by zero.
        check_positive(self, ("max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
                              "gradient_accumulation_steps", "learning_rate", "logging_steps", "eval_steps",
                              "generation_max_length", "generation_num_beams"))


def batch_windows(loader, size):
    """Endless lists of `size` consecutive batches, epoch after epoch (the sampler reshuffles each epoch)."""
    window = []
    while True:
        for batch in loader:
            window.append(batch)
            if len(window) == size:
                yield window
                window = []


def pad_and_concatenate(arrays, pad_value=-100):
    """Batches of ragged width (B_i x T_i) as one (sum B_i) x max T_i array."""
    width = max(array.shape[1] for array in arrays)
    return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=pad_value) for a in arrays])


def evaluate(accelerator, model, loader, tokenizer, compute_metrics, args):
    """BLEU, chrF and the token-level loss over exactly the evaluation set, in every process.

    `gather_for_metrics` drops the examples Accelerate repeats to fill the last batch of each process.
    """
    model.eval()
    generator = accelerator.unwrap_model(model)
    predictions, labels, loss_sums, token_counts = [], [], [], []
    for batch in loader:
        with torch.no_grad(), accelerator.autocast():
            logits = model(**batch).logits  # B x T x V
            generated = generator.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                           max_length=args.generation_max_length,
                                           num_beams=args.generation_num_beams)  # B x T'
        losses = F.cross_entropy(logits.float().transpose(1, 2), batch["labels"], ignore_index=-100,
                                 reduction="none")  # B x T
        generated = accelerator.pad_across_processes(generated, dim=1, pad_index=tokenizer.pad_token_id)
        batch_labels = accelerator.pad_across_processes(batch["labels"], dim=1, pad_index=-100)
        generated, batch_labels, loss_sum, token_count = accelerator.gather_for_metrics(
            (generated, batch_labels, losses.sum(dim=1), batch["labels"].ne(-100).sum(dim=1)))
        predictions.append(generated.cpu().numpy())
        labels.append(batch_labels.cpu().numpy())
        loss_sums.append(loss_sum.cpu())
        token_counts.append(token_count.cpu())
    model.train()
    metrics = compute_metrics(EvalPrediction(predictions=pad_and_concatenate(predictions),
                                             label_ids=pad_and_concatenate(labels)))
    metrics["loss"] = (torch.cat(loss_sums).sum() / torch.cat(token_counts).sum()).item()
    return {f"eval_{name}": value for name, value in metrics.items()}


def main(argv=None):
    use_cpu_processes_without_accelerator()
    parser = HfArgumentParser((ModelArguments, DataArguments, LoopArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        # Updates are windows of exactly `gradient_accumulation_steps` batches, also across epoch ends.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=args.gradient_accumulation_steps,
                                                                sync_with_dataloader=False),
        # Trainer's shuffling: one seeded permutation shared by all processes, then split between them.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    tokenizer, model, tokenized = prepare_translation_run(model_args, data_args, args.seed)

    collator = translation_collator(tokenizer, model, data_args)
    train_loader = DataLoader(tokenized["train"], batch_size=args.per_device_train_batch_size, shuffle=True,
                              collate_fn=collator)
    eval_loader = DataLoader(tokenized["validation"], batch_size=args.per_device_eval_batch_size, collate_fn=collator)
    decay = [p for name, p in model.named_parameters() if "bias" not in name]
    no_decay = [p for name, p in model.named_parameters() if "bias" in name]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  eps=args.adam_epsilon, fused=True)
    # Stepped once per update by hand: a prepared scheduler steps once per process.
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                              num_training_steps=args.max_steps)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    compute_metrics = build_compute_metrics(tokenizer)

    log_history, step = [], 0
    model.train()
    tokens_per_sentence = None  # --loss_normalization sentences: divide by sentences x the mean target length
    if data_args.loss_normalization == "sentences":
        tokens_per_sentence = mean_target_tokens(tokenized["train"])
    for window in batch_windows(train_loader, args.gradient_accumulation_steps):
        if tokens_per_sentence is None:
            local_items = sum(batch["labels"].ne(-100).sum() for batch in window)
        else:
            local_items = torch.tensor(sum(len(batch["labels"]) for batch in window) * tokens_per_sentence,
                                       device=accelerator.device)
        num_items = accelerator.gather(local_items).sum()  # the loss's divisor for this update, all processes
        window_loss = 0.0
        for batch in window:
            with accelerator.accumulate(model):
                loss = model(**batch, num_items_in_batch=num_items).loss  # this batch's share of the mean
                # backward divides by the accumulation steps and DDP averages over processes: undo both,
                # the loss is already normalised by the whole update's token count.
                accelerator.backward(loss * args.gradient_accumulation_steps * accelerator.num_processes)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            window_loss += loss.detach()
        learning_rate = scheduler.get_last_lr()[0]  # the rate of this update
        scheduler.step()
        step += 1
        if step % args.logging_steps == 0 or step == args.max_steps:
            entry = {"step": step, "loss": accelerator.reduce(window_loss, reduction="sum").item(),
                     "learning_rate": learning_rate}
            log_history.append(entry)
            accelerator.print(entry)
        if args.eval_steps and step % args.eval_steps == 0 and step < args.max_steps:
            accelerator.print(evaluate(accelerator, model, eval_loader, tokenizer, compute_metrics, args))
        if step == args.max_steps:
            break

    metrics = evaluate(accelerator, model, eval_loader, tokenizer, compute_metrics, args)
    accelerator.print(metrics)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        accelerator.unwrap_model(model).save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        (output_dir / "log_history.json").write_text(json.dumps(log_history, indent=2))
        (output_dir / "eval_results.json").write_text(json.dumps(metrics, indent=2))
        (output_dir / "loop_args.json").write_text(json.dumps(asdict(args), indent=2))
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
