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

import sys
from dataclasses import dataclass, field

from transformers import (AutoTokenizer, DataCollatorForSeq2Seq, EarlyStoppingCallback, HfArgumentParser,
                          Seq2SeqTrainer, Seq2SeqTrainingArguments)

from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration
from hf_rnn_attn.tokenizer_training import train_translation_tokenizer
from hf_rnn_attn.training import TimeBudgetCallback, build_compute_metrics, tokenize_translation_dataset
from hf_rnn_attn.translation_data import load_translation_dataset


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


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, Seq2SeqTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)

    raw = load_translation_dataset(data_args.dataset, data_args.source_lang, data_args.target_lang,
                                   config_name=data_args.dataset_config)
    train_split = raw["train"]
    if data_args.max_train_samples is not None:
        train_split = train_split.select(range(min(data_args.max_train_samples, len(train_split))))
    eval_split = raw["validation"]
    if data_args.max_eval_samples is not None:
        eval_split = eval_split.select(range(min(data_args.max_eval_samples, len(eval_split))))

    if model_args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer)
    else:
        pairs = train_split["translation"]
        tokenizer = train_translation_tokenizer([p[data_args.source_lang] for p in pairs],
                                                [p[data_args.target_lang] for p in pairs], model_args.vocab_size)

    overrides = {name: getattr(model_args, name) for name in
                 ("embedding_size", "hidden_size", "encoder_hidden_size", "attention_score",
                  "max_source_positions", "dropout", "tie_word_embeddings") if getattr(model_args, name) is not None}
    config = RNNAttnConfig.from_preset(
        model_args.preset, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id, src_lang=data_args.source_lang,
        tgt_lang=data_args.target_lang, **overrides)
    model = RNNAttnForConditionalGeneration(config)
    model.generation_config.num_beams = training_args.generation_num_beams or 1

    with training_args.main_process_first(desc="tokenizing"):
        tokenized = {name: tokenize_translation_dataset(split, tokenizer, data_args.source_lang,
                                                        data_args.target_lang, data_args.max_source_length,
                                                        data_args.max_target_length)
                     for name, split in (("train", train_split), ("validation", eval_split))}

    callbacks = []
    if data_args.max_train_minutes is not None:
        callbacks.append(TimeBudgetCallback(data_args.max_train_minutes))
    if data_args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(data_args.early_stopping_patience))

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=build_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
        callbacks=callbacks,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # the best checkpoint when --load_best_model_at_end
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if training_args.do_eval or training_args.predict_with_generate:
        trainer.save_metrics("eval", trainer.evaluate())
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
