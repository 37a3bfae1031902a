"""Work is never lost and nothing hangs: a training run's folder is not overwritten by accident (by train.py or
make_hub_folder.py), a full disk leaves no partial checkpoint, a resumed run reports the loss of the whole run, the
Hub token is never written to disk, and loop arguments that would hang or divide by zero are refused."""

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments

from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration
from hf_rnn_attn.hub import save_for_hub
from hf_rnn_attn.training import LOSS_SUM_FILE, TranslationTrainer, check_output_dir
from script_helpers import SOURCES, TARGETS, load_script, save_tiny_run, tiny_tokenizer, write_corpus


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


# ---------------------------------------------------------------------------------- train.py's output folder

@pytest.mark.parametrize("leftover", ["model.safetensors", "checkpoint-500/trainer_state.json"])
def test_train_refuses_a_folder_holding_a_run(tmp_path, leftover):
    (tmp_path / "run" / leftover).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / leftover).write_text("old")
    with pytest.raises(ValueError, match=r"--output_dir .*run already holds a training run .*--overwrite_output_dir"):
        load_script("train").main(["--dataset", str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "run")])
    assert (tmp_path / "run" / leftover).read_text() == "old"


def test_resuming_or_overwriting_a_run_folder_is_allowed(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-7").mkdir(parents=True)
    (run / "model.safetensors").write_text("old")
    check_output_dir(run, resume_from_checkpoint=str(run / "checkpoint-7"))
    assert (run / "checkpoint-7").is_dir()
    check_output_dir(run, overwrite_output_dir=True)
    assert not (run / "checkpoint-7").exists(), "old checkpoints would mix with the new run's"
    check_output_dir(tmp_path / "new")


# ------------------------------------------------------------------------------- make_hub_folder.py's output

def test_hub_folder_is_never_written_over_a_run(tmp_path, tokenizer):
    run = save_tiny_run(tmp_path / "run", tokenizer)
    weights = (run / "trainer" / "model.safetensors").read_bytes()
    for output_dir in (run, run / "trainer"):
        with pytest.raises(ValueError, match=r"--output_dir .* is the run folder or its trainer folder"):
            load_script("make_hub_folder").main(["--run_dir", str(run), "--output_dir", str(output_dir)])
    model = RNNAttnForConditionalGeneration.from_pretrained(run / "trainer")
    with pytest.raises(FileExistsError, match=r"holds a training run \(trainer_state.json\)"):
        save_for_hub(model, tokenizer, run / "trainer")
    assert (run / "trainer" / "model.safetensors").read_bytes() == weights


# -------------------------------------------------------------------------------------- checkpoints (Trainer)

def tiny_trainer(tokenizer, output_dir, **arguments):
    torch.manual_seed(0)
    config = RNNAttnConfig.from_preset("bigru-bahdanau", vocab_size=len(tokenizer), embedding_size=8, hidden_size=8,
                                       dropout=0.0)
    model = RNNAttnForConditionalGeneration(config)
    features = tokenizer(SOURCES, text_target=TARGETS)
    dataset = Dataset.from_dict({"input_ids": features["input_ids"], "attention_mask": features["attention_mask"],
                                 "labels": features["labels"]})
    args = Seq2SeqTrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=4, learning_rate=0.01,
                                    report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0,
                                    **arguments)
    return TranslationTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100))


def test_resumed_run_reports_the_train_loss_of_the_whole_run(tokenizer, tmp_path):
    # Checkpoint 3 falls between two logging steps: part of its loss is not logged yet when it is saved.
    settings = dict(max_steps=8, save_steps=3, logging_steps=2)
    uninterrupted = tiny_trainer(tokenizer, tmp_path / "uninterrupted", **settings).train()
    shutil.copytree(tmp_path / "uninterrupted" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = tiny_trainer(tokenizer, tmp_path / "resumed", **settings).train(
        resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))

    print(f"train_loss uninterrupted {uninterrupted.training_loss}, resumed {resumed.training_loss}")
    assert resumed.metrics["train_loss"] == pytest.approx(uninterrupted.metrics["train_loss"], rel=1e-5)
    assert resumed.training_loss == pytest.approx(uninterrupted.training_loss, rel=1e-5)
    sums = [json.loads((tmp_path / run / "checkpoint-6" / LOSS_SUM_FILE).read_text())["loss_sum"]
            for run in ("uninterrupted", "resumed")]
    assert sums[1] == pytest.approx(sums[0], rel=1e-5)  # a second resumption would report right too


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 168960 vs 168848"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_full_disk_leaves_no_partial_checkpoint(tokenizer, tmp_path, monkeypatch, failure):
    real_save = torch.save

    def disk_fills_at_step_4(obj, path, *args, **kwargs):
        if "checkpoint-4" in str(path):
            Path(path).write_bytes(b"PK\x03\x04 partial")
            raise failure
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_at_step_4)
    trainer = tiny_trainer(tokenizer, tmp_path, max_steps=6, save_steps=2, logging_steps=1)
    with pytest.raises(OSError, match=r"No space left on device: saving checkpoint .*checkpoint-4 failed .*"
                                      r"partial checkpoint was removed") as raised:
        trainer.train()
    assert raised.value.errno == errno.ENOSPC
    assert not (tmp_path / "checkpoint-4").exists()
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").is_file()  # the last complete one stays


# ------------------------------------------------------------------------------------- the Hub token (train.py)

def test_train_never_writes_the_hub_token(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    corpus = write_corpus(tmp_path / "data")
    load_script("train").main([
        "--dataset", str(corpus), "--output_dir", str(tmp_path / "run"), "--vocab_size", "60", "--embedding_size",
        "8", "--hidden_size", "8", "--max_steps", "2", "--save_steps", "1", "--per_device_train_batch_size", "4",
        "--max_eval_samples", "2", "--report_to", "none", "--use_cpu", "true", "--hub_token", "hf_NotARealSecret42"])
    files = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in files)
    assert not [path for path in files if b"hf_NotARealSecret42" in path.read_bytes()]


# ------------------------------------------------------------------------------------ train_accelerate.py loop

@pytest.mark.parametrize("argument, value", [("max_steps", "0"), ("gradient_accumulation_steps", "0"),
                                             ("logging_steps", "0"), ("max_steps", "-3")])
def test_accelerate_loop_refuses_arguments_that_hang_or_divide_by_zero(tmp_path, argument, value):
    with pytest.raises(ValueError, match=rf"--{argument} must be positive, got {value}"):
        load_script("train_accelerate").main(["--dataset", str(tmp_path / "nothing"), "--output_dir",
                                              str(tmp_path / "run"), f"--{argument}", value])
