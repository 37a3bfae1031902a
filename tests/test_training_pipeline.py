"""The main job's pipeline on a small slice of the real corpus: export, tokenizer, training, evaluation,
Hub folder. Runs the scripts as a user would, in subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_rnn_attn.bible_corpus import export_translation_corpus

ROOT = Path(__file__).resolve().parent.parent


def run_script(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    data = work / "data"
    export_translation_corpus(data, books=["Ruth", "Jonah"])
    run_script(str(ROOT / "scripts/train.py"), "--dataset", str(data), "--preset", "bigru-bahdanau",
               "--output_dir", str(work / "run/trainer"), "--vocab_size", "400", "--embedding_size", "16",
               "--hidden_size", "16", "--max_steps", "6", "--per_device_train_batch_size", "8",
               "--eval_strategy", "steps", "--eval_steps", "3", "--save_steps", "3", "--predict_with_generate",
               "true", "--generation_max_length", "20", "--max_eval_samples", "5", "--default_num_beams", "3",
               "--default_length_penalty", "0.6", "--load_best_model_at_end", "true", "--metric_for_best_model",
               "bleu", "--report_to", "tensorboard", "--logging_steps", "1", cwd=work)
    for beams in ("1", "5"):
        run_script(str(ROOT / "scripts/evaluate_model.py"), "--model", str(work / "run/trainer"), "--dataset",
                   str(data), "--num_beams", beams, "--max_new_tokens", "20", "--max_samples", "7",
                   "--output_dir", str(work / f"run/test-beam{beams}"), cwd=work)
    return work


def test_training_writes_a_loadable_model_with_tokenizer_and_logs(trained_run):
    trainer_dir = trained_run / "run/trainer"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (trainer_dir / name).exists(), name
    state = json.loads((trainer_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    evaluations = [entry for entry in state["log_history"] if "eval_bleu" in entry]
    assert len(evaluations) >= 2 and all("eval_chrf" in entry for entry in evaluations)
    assert state["best_model_checkpoint"] is not None
    assert list((trainer_dir / "runs").rglob("events.out.tfevents.*")), "TensorBoard logs"
    generation = json.loads((trainer_dir / "generation_config.json").read_text())
    assert (generation["num_beams"], generation["length_penalty"]) == (3, 0.6)


def test_evaluate_writes_hypotheses_and_a_bleu_json(trained_run):
    report = json.loads((trained_run / "run/test-beam5/metrics.json").read_text())
    assert report["num_sentences"] == 7 and report["settings"]["num_beams"] == 5
    assert 0 <= report["bleu"] <= 100 and 0 <= report["chrf"] <= 100
    assert report["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    hypotheses = (trained_run / "run/test-beam5/hypotheses.txt").read_text(encoding="utf-8").splitlines()
    assert len(hypotheses) == 7


def test_hub_folder_carries_the_measured_scores(trained_run):
    run_script(str(ROOT / "scripts/make_hub_folder.py"), "--run_dir", str(trained_run / "run"), "--dataset",
               str(trained_run / "data"), "--output_dir", str(trained_run / "run/model"), cwd=trained_run)
    card = (trained_run / "run/model/README.md").read_text(encoding="utf-8")
    bleu = json.loads((trained_run / "run/test-beam5/metrics.json").read_text())["bleu"]
    assert f"{bleu:.2f}" in card or str(bleu) in card
    config = json.loads((trained_run / "run/model/config.json").read_text())
    assert config["src_lang"] == "es" and config["tgt_lang"] == "en"
    assert "translation" in config["custom_pipelines"]

