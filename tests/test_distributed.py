"""Several processes give the results of one: scripts/train.py under torchrun, the Accelerate loop under
`accelerate launch`, gradient accumulation, `--loss_normalization sentences`, evaluation over exactly the
evaluation set, bf16, kill and resume.

Runs the scripts as a user would, in subprocesses (two CPU processes, gloo), on a small slice of the real corpus.
The global batch (8) is kept fixed: 1 process x 8, 1 process x 4 x 2 accumulation steps, 2 processes x 4.
Dropout is 0 so that processes cannot differ by their dropout masks.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration
from hf_rnn_attn.bible_corpus import export_translation_corpus

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}
EVAL_SAMPLES = 7  # not a multiple of 2 processes x eval batch 2: the last batch of process 1 is padded
TINY = ["--vocab_size", "300", "--embedding_size", "16", "--hidden_size", "16", "--dropout", "0",
        "--max_train_samples", "40", "--max_eval_samples", str(EVAL_SAMPLES), "--per_device_eval_batch_size", "2",
        "--generation_max_length", "12", "--learning_rate", "0.01", "--max_steps", "5", "--logging_steps", "1"]
TRAINER = ["--save_strategy", "no", "--report_to", "none", "--predict_with_generate", "true"]
LOSS_TOLERANCE = dict(rel=1e-5, abs=1e-5)
WEIGHT_TOLERANCE = 1e-5


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def torchrun():
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]


def accelerate_launch():
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", free_port()]


def run(command, cwd):
    result = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def train(work, name, *args, launcher=(sys.executable,)):
    """scripts/train.py into work/name; returns (logged losses, eval metrics, weights, stderr)."""
    output_dir = work / name
    result = run([*launcher, str(ROOT / "scripts/train.py"), "--dataset", str(work / "data"), *TINY, *TRAINER,
                  "--output_dir", str(output_dir), *args], cwd=work)
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    return losses, metrics, load_file(output_dir / "model.safetensors"), result.stderr


def train_loop(work, name, *args, launcher=(sys.executable,)):
    """scripts/train_accelerate.py into work/name; returns (logged losses, eval metrics, weights)."""
    output_dir = work / name
    run([*launcher, str(ROOT / "scripts/train_accelerate.py"), "--dataset", str(work / "data"), *TINY,
         "--output_dir", str(output_dir), *args], cwd=work)
    losses = [entry["loss"] for entry in json.loads((output_dir / "log_history.json").read_text())]
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    return losses, metrics, load_file(output_dir / "model.safetensors")


def max_weight_difference(first, second):
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("distributed")
    export_translation_corpus(work / "data", books=["Ruth"])
    return work


@pytest.fixture(scope="module")
def one_process(work):
    return train(work, "trainer-1x8", "--per_device_train_batch_size", "8")


@pytest.fixture(scope="module")
def two_processes(work):
    return train(work, "trainer-2x4", "--per_device_train_batch_size", "4", launcher=torchrun())


def test_trainer_on_two_processes_matches_one_process_and_accumulation(work, one_process, two_processes):
    losses, metrics, weights, _ = one_process
    accumulated = train(work, "trainer-1x4x2", "--per_device_train_batch_size", "4",
                        "--gradient_accumulation_steps", "2")
    two = two_processes

    assert len(losses) == 5
    for other_losses, other_metrics, other_weights, _ in (accumulated, two):
        # Not scaled by the process count nor by the accumulation steps.
        assert other_losses == pytest.approx(losses, **LOSS_TOLERANCE)
        assert max_weight_difference(weights, other_weights) < WEIGHT_TOLERANCE
        assert other_metrics["eval_bleu"] == pytest.approx(metrics["eval_bleu"])
    stderr = two[3]
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in stderr  # really DDP, not two separate runs
    assert "find_unused_parameters" not in stderr and "unused parameters" not in stderr
    tokenizers = [json.loads((work / name / "tokenizer.json").read_text()) for name in ("trainer-1x8", "trainer-2x4")]
    for tokenizer in tokenizers:
        tokenizer.pop("truncation")  # the settings of the last call, not part of the vocabulary
    assert tokenizers[0] == tokenizers[1]


def test_evaluation_scores_each_example_once(one_process, two_processes):
    assert one_process[1]["eval_num_sentences"] == two_processes[1]["eval_num_sentences"] == EVAL_SAMPLES
    assert two_processes[1]["eval_chrf"] == pytest.approx(one_process[1]["eval_chrf"])


def test_sentence_normalization_is_the_same_on_two_processes_and_in_the_loop(work, one_process):
    """--loss_normalization sentences divides each update by its sentences in all processes times the mean
    target length: two processes and the Accelerate loop end with the one-process Trainer's weights."""
    sentences = ["--loss_normalization", "sentences"]
    _, _, weights, _ = train(work, "trainer-1x8-sentences", "--per_device_train_batch_size", "8", *sentences)
    _, _, two_weights, _ = train(work, "trainer-2x4-sentences", "--per_device_train_batch_size", "4", *sentences,
                                 launcher=torchrun())
    _, _, loop_weights = train_loop(work, "loop-1x8-sentences", "--per_device_train_batch_size", "8", *sentences)

    assert max_weight_difference(weights, two_weights) < WEIGHT_TOLERANCE
    assert max_weight_difference(weights, loop_weights) < WEIGHT_TOLERANCE
    assert max_weight_difference(weights, one_process[2]) > 100 * WEIGHT_TOLERANCE  # not the token mean's run


def test_accelerate_loop_on_two_processes_matches_one_process_and_trainer(work, one_process):
    losses, metrics, weights = train_loop(work, "loop-1x8", "--per_device_train_batch_size", "8")
    two_losses, two_metrics, two_weights = train_loop(work, "loop-2x4", "--per_device_train_batch_size", "4",
                                                      launcher=accelerate_launch())

    assert two_losses == pytest.approx(losses, **LOSS_TOLERANCE)
    assert max_weight_difference(weights, two_weights) < WEIGHT_TOLERANCE
    assert metrics["eval_num_sentences"] == two_metrics["eval_num_sentences"] == EVAL_SAMPLES
    assert two_metrics["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    # Same seed, data order and optimizer as Trainer: the same run.
    trainer_losses, _, trainer_weights, _ = one_process
    assert losses == pytest.approx(trainer_losses, **LOSS_TOLERANCE)
    assert max_weight_difference(weights, trainer_weights) < WEIGHT_TOLERANCE


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(work):
    # Dropout on: resuming must also restore the random state. Checkpoint 7 is mid-epoch (5 batches per epoch).
    args = [sys.executable, str(ROOT / "scripts/train.py"), "--dataset", str(work / "data"), *TINY,
            "--max_steps", "30", "--save_steps", "7", "--dropout", "0.1", "--per_device_train_batch_size", "8",
            "--report_to", "none"]
    run([*args, "--output_dir", str(work / "uninterrupted")], cwd=work)

    killed = work / "killed"
    process = subprocess.Popen([*args, "--output_dir", str(killed)], cwd=work, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "checkpoint-7" / "trainer_state.json"  # written last, once the checkpoint is complete
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        try:
            json.loads(state.read_text())
            break
        except (OSError, ValueError):
            time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.safetensors").exists(), "the run finished before it could be killed"
    assert not (killed / "checkpoint-14").exists()

    run([*args, "--output_dir", str(killed), "--resume_from_checkpoint", str(killed / "checkpoint-7")], cwd=work)
    resumed = load_file(killed / "model.safetensors")
    uninterrupted = load_file(work / "uninterrupted/model.safetensors")
    assert max_weight_difference(resumed, uninterrupted) < WEIGHT_TOLERANCE


@pytest.fixture
def one_thread():
    # Tiny tensors: a second thread only adds synchronisation, which a busy machine turns into seconds per step.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("preset", ["bigru-bahdanau", "lstm-luong"])
def test_bf16_autocast_trains_gru_and_lstm_close_to_fp32(preset, one_thread):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, 50, (8, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::2, 7:] = 0
    labels = torch.randint(4, 50, (8, 9), generator=generator)
    labels[1::2, 6:] = -100

    def losses(dtype):
        torch.manual_seed(0)
        config = RNNAttnConfig.from_preset(preset, vocab_size=50, embedding_size=16, hidden_size=32, dropout=0.0)
        model = RNNAttnForConditionalGeneration(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        history = []
        for _ in range(5):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not torch.float32):
                output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, skip_logits=False)
            output.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            history.append(output.loss.item())
        return history, output.logits.dtype

    full, full_dtype = losses(torch.float32)
    half, half_dtype = losses(torch.bfloat16)
    print(f"{preset}: fp32 {full}, bf16 {half}, max difference {max(abs(a - b) for a, b in zip(full, half)):.2e}")
    assert full_dtype == torch.float32 and half_dtype == torch.bfloat16  # autocast really ran in bf16
    assert half == pytest.approx(full, abs=0.02)
    assert half[-1] < half[0]


def test_bf16_autocast_falls_back_to_fp32_rnn_on_a_cpu_without_bf16_kernels():
    """An AVX2-only CPU (emulated by capping oneDNN's and ATen's instruction sets) has no bf16 LSTM kernel:
    the model must still train under bf16 autocast, running that RNN in fp32, and say so once."""
    script = """
import torch
from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration
from hf_rnn_attn.mixed_precision import cpu_autocast_supports
torch.manual_seed(0)
model = RNNAttnForConditionalGeneration(RNNAttnConfig.from_preset("lstm-luong", vocab_size=30, embedding_size=8,
                                                                  hidden_size=8))
ids = torch.randint(4, 30, (2, 5))
for _ in range(2):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(input_ids=ids, labels=ids)
    output.loss.backward()
    model.generate(input_ids=ids, max_new_tokens=3, num_beams=2)
print("lstm bf16 kernel:", cpu_autocast_supports(torch.nn.LSTM, torch.bfloat16), "loss", output.loss.item())
"""
    env = {**ENV, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "lstm bf16 kernel: False" in result.stdout
    assert result.stderr.count("no torch.bfloat16 kernel for LSTM; it runs in float32") == 1
