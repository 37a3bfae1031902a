"""Train an RNN-attention translation model with Seq2SeqTrainer.

Usage:
    python scripts/train.py --dataset data/bible-es-en --source_lang es --target_lang en \
        --preset bigru-bahdanau --output_dir runs/bigru --max_train_minutes 15
    python scripts/train.py --dataset data/bible-es-en --preset lstm-luong --attention_score dot \
        --output_dir runs/lstm --num_train_epochs 5 --per_device_train_batch_size 64
    # any Seq2SeqTrainingArguments option works, e.g. --resume_from_checkpoint runs/bigru/checkpoint-500
    torchrun --nproc_per_node 2 scripts/train.py ...   # several processes (see README)

The dataset is a folder of train/validation/test .jsonl files in the Hugging Face translation format, or a
Hub dataset name. Without --tokenizer, a joint BPE tokenizer is trained on the training split first.
"""

import os
import sys

from transformers import EarlyStoppingCallback, HfArgumentParser, Seq2SeqTrainingArguments

from hf_rnn_attn.distributed import use_cpu_processes_without_accelerator
from hf_rnn_attn.training import (DataArguments, ModelArguments, TimeBudgetCallback, TranslationTrainer,
                                  build_compute_metrics, check_output_dir, check_training_length,
                                  prepare_translation_run, translation_collator)


def main(argv=None):
    use_cpu_processes_without_accelerator()
    parser = HfArgumentParser((ModelArguments, DataArguments, Seq2SeqTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    check_training_length(training_args)
    check_output_dir(training_args.output_dir, data_args.overwrite_output_dir, training_args.resume_from_checkpoint)
    if training_args.hub_token:
        # Trainer pickles its arguments into every checkpoint (training_args.bin): keep the token out of them.
        os.environ["HF_TOKEN"], training_args.hub_token = training_args.hub_token, None
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False  # every parameter gets a gradient at every step

    tokenizer, model, tokenized = prepare_translation_run(model_args, data_args, training_args.seed)
    if model_args.default_num_beams is None:
        model.generation_config.num_beams = training_args.generation_num_beams or 1

    callbacks = []
    time_budget = None
    if data_args.max_train_minutes is not None:
        time_budget = TimeBudgetCallback(data_args.max_train_minutes)
        callbacks.append(time_budget)
    if data_args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(data_args.early_stopping_patience))

    trainer = TranslationTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=translation_collator(tokenizer, model, data_args),
        compute_metrics=build_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
        callbacks=callbacks,
        loss_normalization=data_args.loss_normalization,
    )
    if data_args.lr_schedule_by_time:
        trainer.schedule_clock = time_budget
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # the best checkpoint when --load_best_model_at_end
    metrics = {**result.metrics, "train_target_tokens": trainer.target_tokens_seen}
    metrics["train_target_tokens_per_second"] = round(trainer.target_tokens_seen / metrics["train_runtime"], 1)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if training_args.do_eval or training_args.predict_with_generate:
        trainer.save_metrics("eval", trainer.evaluate())
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
