"""Sharing and serving: save_for_hub, loading as remote code without the package, the translation pipeline,
the model card, push_to_hub and the `hf-rnn-attn` command line."""

import gc
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import jinja2
import jinja2.meta
import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard

from hf_rnn_attn import cli
from hf_rnn_attn.configuration_rnn_attn import PRESETS
from hf_rnn_attn.hub import HubUploadError, hub_files, push_to_hub, save_for_hub
from hf_rnn_attn.model_card import card_contents, card_template, render_model_card
from hf_rnn_attn.pipeline_translation import RNNAttnTranslationPipeline, translation_pipeline
from hf_rnn_attn.torch_threads import torch_threads
from hf_rnn_attn.tokenizer_training import train_translation_tokenizer
from hf_rnn_attn.translate import translate_texts
from hf_rnn_attn_runtime import command_line
from hf_rnn_attn_runtime.torch_backend import TorchTranslator
from tiny_models import COPY_WORDS, train_copy_model

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESET_NAMES = ["bigru-bahdanau", "lstm-luong"]
_rng = random.Random(0)
SENTENCES = [" ".join(_rng.choice(COPY_WORDS) for _ in range(_rng.randint(2, 5))) for _ in range(100)]
SOURCES = [SENTENCES[0], "el gato come", SENTENCES[1], "la luna azul tiene agua"]
METRICS = {"bleu": 23.45, "chrf": 51.2, "bleu_signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"}
DATASET_INFO = {"name": "Toy word strings", "split": "test", "train_pairs": 100}
TRAINING_INFO = {"steps": 40, "hardware": "2 CPU cores"}
GENERATION_SETTINGS = [{"max_new_tokens": 12}, {"max_new_tokens": 12, "num_beams": 3}]
EXPECTED_FILES = {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json", "configuration_rnn_attn.py", "modeling_rnn_attn.py", "attention.py",
                  "lean_decoding.py", "linear_cross_entropy.py", "pipeline_translation.py", "alignment.py",
                  "beam_penalties.py", "fused_gru.py", "fused_unroll.py", "mixed_precision.py", "workspace.py",
                  "onednn_products.py", "recurrent_layers.py", "architecture.py", "torch_threads.py"}


# -------------------------------------------------------------------------------- tiny trained models (fixtures)

@pytest.fixture(scope="module")
def tokenizer():
    return train_translation_tokenizer(SENTENCES, SENTENCES, vocab_size=60)


def reference_translations(model, tokenizer, sources, **generate_kwargs):
    inputs = tokenizer(sources, padding=True, return_tensors="pt")
    with torch.no_grad():
        output_ids = model.generate(**inputs, **generate_kwargs)
    return tokenizer.batch_decode(output_ids, skip_special_tokens=True)


@pytest.fixture(scope="module", params=PRESET_NAMES)
def saved(request, tokenizer, tmp_path_factory):
    model = train_copy_model(tokenizer, SENTENCES, preset=request.param)
    folder = tmp_path_factory.mktemp(request.param) / "model"
    files = save_for_hub(model, tokenizer, folder, metrics=METRICS, dataset_info=DATASET_INFO, src_lang="es",
                         tgt_lang="en", training_info=TRAINING_INFO, repo_id="someone/tiny-rnn-attn")
    references = [reference_translations(model, tokenizer, SOURCES, **settings) for settings in GENERATION_SETTINGS]
    return SimpleNamespace(preset=request.param, model=model, tokenizer=tokenizer, folder=folder, files=files,
                           references=references)


def test_tiny_models_translate_non_trivially(saved):
    greedy = saved.references[0]
    assert len(set(greedy)) > 1 and all(greedy)


# ------------------------------------------------------------------------------------------ the saved folder

def test_save_for_hub_writes_a_complete_repository(saved):
    assert set(saved.files) == EXPECTED_FILES
    config = json.loads((saved.folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_rnn_attn.RNNAttnConfig",
                                  "AutoModelForSeq2SeqLM": "modeling_rnn_attn.RNNAttnForConditionalGeneration"}
    assert config["custom_pipelines"]["translation"]["impl"] == "pipeline_translation.RNNAttnTranslationPipeline"
    assert config["custom_pipelines"]["translation"]["pt"] == ["AutoModelForSeq2SeqLM"]
    assert (config["src_lang"], config["tgt_lang"]) == ("es", "en")


def test_save_for_hub_leaves_the_model_unchanged(saved):
    for name in ("src_lang", "tgt_lang", "custom_pipelines"):
        assert not hasattr(saved.model.config, name)


def test_save_for_hub_rejects_bad_arguments(saved, tmp_path):
    with pytest.raises(ValueError, match="tokenizer"):
        save_for_hub(saved.model, None, tmp_path / "no-tokenizer")
    with pytest.raises(TypeError, match="RNNAttn model"):
        save_for_hub(torch.nn.Linear(2, 2), saved.tokenizer, tmp_path / "not-a-model")


def test_save_for_hub_warns_about_leftover_files(saved, tmp_path, caplog):
    (tmp_path / "added_tokens.json").write_text('{"<old>": 99}')
    files = save_for_hub(saved.model, saved.tokenizer, tmp_path)
    assert "added_tokens.json" in files  # an upload would send it, and it changes the tokenizer: say so
    assert "added_tokens.json" in caplog.text and "earlier save" in caplog.text


def test_dry_run_lists_exactly_the_folder(saved, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a dry run must not contact the Hub")

    monkeypatch.setattr(HfApi, "create_repo", no_network)
    monkeypatch.setattr(HfApi, "upload_folder", no_network)
    on_disk = sorted(str(path.relative_to(saved.folder)) for path in saved.folder.rglob("*") if path.is_file())
    assert push_to_hub(saved.folder, "someone/tiny-rnn-attn", dry_run=True) == on_disk == saved.files


def test_hub_files_are_an_allow_list(saved, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved.folder, folder)
    (tmp_path / "secret.txt").write_text("hf_NotARealSecret42")
    for name in (".env", ".git/HEAD", "__pycache__/x.cpython-311.pyc", "token", "training_args.bin", "notes.py",
                 "checkpoint-10/optimizer.pt", "checkpoint-10/model.safetensors", "sub/config.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("hf_NotARealSecret42")
    (folder / "special_tokens_map.json").symlink_to(tmp_path / "secret.txt")
    (folder / "model-00001-of-00002.safetensors").write_text("a shard")
    assert hub_files(folder) == sorted([*saved.files, "model-00001-of-00002.safetensors"])


# ---------------------------------------------------------------------------- loading without the package

WITHOUT_PACKAGE = r"""
import json, sys
# Hide hf_rnn_attn even if it is installed (editable or not): any import of it now raises ImportError.
sys.modules["hf_rnn_attn"] = None
try:
    import hf_rnn_attn
except ImportError:
    pass
else:
    raise SystemExit("hf_rnn_attn is importable")
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

folder, sources, settings = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
translator = pipeline("translation", model=folder, trust_remote_code=True, device="cpu")
result = {"model_module": type(model).__module__, "pipeline_module": type(translator).__module__,
          "pipeline_model_module": type(translator.model).__module__,
          "package_modules": sorted(name for name, module in sys.modules.items()
                                    if name.startswith("hf_rnn_attn") and module is not None),
          "generate": [], "pipeline": []}
inputs = tokenizer(sources, padding=True, return_tensors="pt")
for kwargs in settings:
    result["generate"].append(tokenizer.batch_decode(model.generate(**inputs, **kwargs), skip_special_tokens=True))
    result["pipeline"].append([records[0]["translation_text"]
                               for records in translator(sources, batch_size=2, **kwargs)])
print(json.dumps(result))
"""


def run_without_package(script, cwd, *args):
    """Runs `script` in a fresh isolated interpreter (-I: no PYTHONPATH, no cwd on sys.path) that cannot import
    hf_rnn_attn, with its own HF_HOME so that remote code is copied afresh."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(cwd / "hf_home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-I", "-c", script, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_folder_loads_and_translates_without_the_package(saved, tmp_path):
    completed = run_without_package(WITHOUT_PACKAGE, tmp_path, str(saved.folder), json.dumps(SOURCES),
                                    json.dumps(GENERATION_SETTINGS))
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["package_modules"] == []
    for module in ("model_module", "pipeline_module", "pipeline_model_module"):
        assert result[module].startswith("transformers_modules."), result[module]
    assert result["generate"] == saved.references
    assert result["pipeline"] == saved.references
    # Loading copies the code elsewhere (HF_HOME); the folder still holds exactly what an upload would send.
    assert push_to_hub(saved.folder, "someone/tiny-rnn-attn", dry_run=True) == saved.files


# ---------------------------------------------------------------------------------- the pipeline in-process

@pytest.fixture(scope="module")
def translator(saved):
    return translation_pipeline(saved.model, saved.tokenizer, device="cpu", max_new_tokens=12)


def test_pipeline_output_format(translator, saved):
    single = translator(SOURCES[0])
    assert single == [{"translation_text": saved.references[0][0]}]
    assert translator(SOURCES) == [[{"translation_text": text}] for text in saved.references[0]]


def test_pipeline_batching_and_generation_kwargs(translator, saved):
    beams = [records[0]["translation_text"] for records in translator(SOURCES, batch_size=3, num_beams=3)]
    assert beams == saved.references[1]
    pairs = translator(SOURCES, batch_size=2, num_beams=3, num_return_sequences=2)
    assert [len(records) for records in pairs] == [2] * len(SOURCES)
    assert [records[0]["translation_text"] for records in pairs] == saved.references[1]
    one_token = translator(SOURCES, max_new_tokens=1)
    assert all(len(saved.tokenizer(records[0]["translation_text"], add_special_tokens=False)["input_ids"]) <= 1
               for records in one_token)


def test_pipeline_batches_sources_of_similar_length_and_keeps_the_input_order(translator, saved, monkeypatch):
    calls = []
    generate = saved.model.generate
    monkeypatch.setattr(saved.model, "generate", lambda **kwargs: calls.append(
        (kwargs["attention_mask"].sum(1).tolist(), kwargs.get("max_active_rows"))) or generate(**kwargs))
    lengths = sorted((len(saved.tokenizer(text)["input_ids"]) for text in SOURCES), reverse=True)
    with torch_threads(1):  # one search (side by side: the next test)
        # Beam search: one generate() call, longest first, 2 sentences (2 x 3 rows) decoding at a time.
        beams = translator(SOURCES, batch_size=2, num_beams=3)
        assert [records[0]["translation_text"] for records in beams] == saved.references[1]
        assert [(sorted(batch, reverse=True), rows) for batch, rows in calls] == [(lengths, 6)]
        # Greedy search: the same, 2 rows.
        calls.clear()
        assert translator(SOURCES, batch_size=2) == [[{"translation_text": text}] for text in saved.references[0]]
        assert [(sorted(batch, reverse=True), rows) for batch, rows in calls] == [(lengths, 2)]
    # Sampling runs transformers' loop, which cannot refill: batches of 2, longest first.
    calls.clear()
    translator(SOURCES, batch_size=2, do_sample=True, max_new_tokens=3)
    assert [(sorted(batch, reverse=True), rows) for batch, rows in calls] == [(lengths[:2], None), (lengths[2:], None)]


def test_pipeline_runs_one_search_per_torch_thread_side_by_side(translator, saved, monkeypatch):
    """With T torch threads on the CPU and T batches' worth of sentences, T searches decode at once, each in a thread
    of its own over every T-th sentence of the length order, on one torch thread: the same translations."""
    calls = []
    generate = saved.model.generate
    monkeypatch.setattr(saved.model, "generate", lambda **kwargs: calls.append(
        (sorted(kwargs["attention_mask"].sum(1).tolist(), reverse=True), kwargs.get("max_active_rows"),
         torch.get_num_threads())) or generate(**kwargs))
    lengths = sorted((len(saved.tokenizer(text)["input_ids"]) for text in SOURCES), reverse=True)
    with torch_threads(2):
        for num_beams, references in zip([1, 3], saved.references):
            calls.clear()
            translations = translator(SOURCES, batch_size=2, num_beams=num_beams)
            assert [records[0]["translation_text"] for records in translations] == references
            assert sorted(calls) == sorted([(lengths[0::2], 2 * num_beams, 1), (lengths[1::2], 2 * num_beams, 1)])
            assert torch.get_num_threads() == 2
        calls.clear()  # fewer than two batches' worth: one search on both threads
        assert translator(SOURCES, batch_size=3) == [[{"translation_text": text}] for text in saved.references[0]]
        assert calls == [(lengths, 3, 2)]
        monkeypatch.setattr(saved.model, "generate", lambda **kwargs: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            translator(SOURCES, batch_size=2)
        assert torch.get_num_threads() == 2


def test_pipeline_checks_languages_against_the_config(saved):
    saved.model.config.src_lang, saved.model.config.tgt_lang = "es", "en"
    try:
        translator = translation_pipeline(saved.model, saved.tokenizer, device="cpu", max_new_tokens=4)
        translator(SOURCES[0], src_lang="es", tgt_lang="en")
        with pytest.raises(ValueError, match="tgt_lang='en'"):
            translator(SOURCES[0], tgt_lang="fr")
    finally:
        del saved.model.config.src_lang, saved.model.config.tgt_lang


def test_pipeline_rejects_bad_inputs(translator, saved):
    with pytest.raises(ValueError, match="must be strings"):
        translator([3])
    with pytest.raises(ValueError, match="tokenizer"):
        translation_pipeline(saved.model)


def test_pipeline_blank_and_empty_inputs_never_reach_the_model(translator, saved, monkeypatch):
    generated_rows = []
    generate = translator.model.generate

    def counting_generate(*args, **kwargs):
        generated_rows.append(kwargs["input_ids"].size(0))
        return generate(*args, **kwargs)

    monkeypatch.setattr(translator.model, "generate", counting_generate)
    assert translator("") == translator("   ") == [{"translation_text": ""}]
    assert translator([]) == []
    assert translator("", num_beams=2, num_return_sequences=2) == [{"translation_text": ""}] * 2
    assert generated_rows == []
    mixed = translator(["", SOURCES[0], " \t ", SOURCES[1]], batch_size=2)
    greedy = saved.references[0]
    assert mixed == [[{"translation_text": text}] for text in ("", greedy[0], "", greedy[1])]
    assert sum(generated_rows) == 2  # only the two real sentences


def test_translation_pipeline_from_folder(saved):
    translator = translation_pipeline(saved.folder, device="cpu", max_new_tokens=12)
    assert isinstance(translator, RNNAttnTranslationPipeline)
    assert [records[0]["translation_text"] for records in translator(SOURCES)] == saved.references[0]


# ---------------------------------------------------------------------------------------------- model card

def front_matter(card_text):
    assert card_text.startswith("---\n")
    header, _, body = card_text[4:].partition("\n---\n")
    return yaml.safe_load(header), body


def indexed_metrics(metadata):
    return {metric["type"]: metric["value"] for metric in metadata["model-index"][0]["results"][0]["metrics"]}


PRESET_MARKERS = {
    "bigru-bahdanau": [r"h_i = [\overrightarrow{h}_i ; \overleftarrow{h}_i]", r"s_0 = \overleftarrow{h}_1",
                       r"h_t = \mathrm{GRU}([\mathrm{emb}(y_{t-1}) ; c_{t-1}], h_{t-1})",
                       r"v^\top \tanh(W_1 h_t + W_2 h_i)", r"W_o [h_t ; c_t] + b_o"],
    "lstm-luong": ["2-layer LSTM", r"(s_0^{(l)}, m_0^{(l)}) = (h_S^{(l)}, m_S^{(l)})",
                   r"h_t = \mathrm{LSTM}(\mathrm{emb}(y_{t-1}), \mathrm{state}_{t-1})", r"e_{ti} = h_t^\top W h_i",
                   r"o_t = \tanh(W_c [h_t ; c_t])", r"\mathrm{softmax}(W_s o_t)"],
}


def test_model_card_front_matter_and_body(saved):
    text = (saved.folder / "README.md").read_text(encoding="utf-8")
    metadata, body = front_matter(text)
    assert metadata["license"] == "apache-2.0"
    assert metadata["pipeline_tag"] == "translation"
    assert metadata["language"] == ["es", "en"]
    assert "datasets" not in metadata  # a name without a Hub id is not a dataset id
    assert metadata["model-index"][0]["results"][0]["dataset"]["name"] == "Toy word strings"
    assert set(metadata["metrics"]) == {"bleu", "chrf"}
    assert saved.preset in metadata["tags"]
    assert indexed_metrics(metadata) == {"bleu": 23.45, "chrf": 51.2}
    assert ModelCard(text).data.eval_results[0].metric_value == 23.45  # the Hub's own parser agrees
    for marker in PRESET_MARKERS[saved.preset]:
        assert marker in body
    assert not re.search(r"\{\{\s*>?\s*[\w.-]+\s*\}\}", text)  # every template slot was filled
    assert "| BLEU | 23.45 |" in body and "| chrF | 51.20 |" in body
    assert METRICS["bleu_signature"] in body
    assert "- Steps: 40" in body and "- Train pairs: 100" in body
    assert 'trust_remote_code=True' in body and "someone/tiny-rnn-attn" in body
    assert "uses the `" + saved.preset + "` preset as published" in body


def test_model_card_templates_name_only_known_slots(saved):
    # Jinja renders an unknown name as "" without a word: a misspelt slot would silently vanish from the card.
    _, values = card_contents(saved.model)
    for preset in PRESETS:
        slots = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(card_template(preset)))
        assert slots <= {"card_data", *values}, slots - {"card_data", *values}


def test_model_card_never_invents_numbers(saved):
    partial = render_model_card(saved.model, metrics={"eval_bleu": 10.0})
    metadata, body = front_matter(partial)
    assert indexed_metrics(metadata) == {"bleu": 10.0}
    assert "| chrF | not measured |" in body
    metadata, body = front_matter(render_model_card(saved.model))
    assert "model-index" not in metadata and "metrics" not in metadata and "language" not in metadata
    assert "| BLEU | not measured |" in body and "| chrF | not measured |" in body
    assert body.count("Not recorded.") == 2  # training data and budget


def test_model_card_links_a_hub_dataset(saved):
    metadata, body = front_matter(render_model_card(saved.model, metrics={"chrf": 40.0},
                                                    dataset_info={"id": "someone/toy", "split": "validation"}))
    assert metadata["datasets"] == ["someone/toy"]
    assert metadata["model-index"][0]["results"][0]["dataset"] == {"name": "someone/toy", "type": "someone/toy",
                                                                   "split": "validation"}
    assert "https://huggingface.co/datasets/someone/toy" in body


def test_model_card_names_a_variant_and_its_score(tokenizer):
    model = train_copy_model(tokenizer, SENTENCES, preset="lstm-luong", steps=0, attention_score="additive")
    metadata, body = front_matter(render_model_card(model))
    assert "lstm-luong" in metadata["tags"]
    assert "departs from the `lstm-luong` preset" in body and "`attention_score='additive'`" in body
    assert r"e_{ti} = v^\top \tanh(W_1 h_t + W_2 h_i)" in body


# ----------------------------------------------------------------------------------------- push (no network)

def test_failed_upload_raises_a_clear_error(saved, monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    with pytest.raises(HubUploadError, match=r"Could not upload .* 'someone/tiny-rnn-attn': ConnectionError"):
        push_to_hub(saved.folder, "someone/tiny-rnn-attn")


def test_push_uploads_only_the_model_files(saved, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(saved.folder, folder)
    for name in (".env", "token", "training_args.bin", "checkpoint-10/optimizer.pt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("hf_NotARealSecret42")
    commits = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "create_commit", lambda self, **kwargs: commits.append(kwargs))
    assert push_to_hub(folder, "someone/tiny-rnn-attn") == saved.files
    (commit,) = commits
    assert sorted(operation.path_in_repo for operation in commit["operations"]) == saved.files


@pytest.mark.parametrize("problem, error, message", [
    ("no-weights", FileNotFoundError, r"has no model weights \(model.safetensors\)"),
    ("no-tokenizer", FileNotFoundError, r"has no tokenizer.json"),
    ("linked-weights", ValueError, r"\['model.safetensors'\] are symbolic links, which are never uploaded"),
])
def test_push_refuses_a_folder_without_weights_or_tokenizer(saved, tmp_path, problem, error, message):
    folder = tmp_path / "model"
    shutil.copytree(saved.folder, folder)
    if problem == "no-weights":
        (folder / "model.safetensors").unlink()
    elif problem == "no-tokenizer":
        (folder / "tokenizer.json").unlink()
    else:
        (folder / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
        (folder / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(error, match=message):
        push_to_hub(folder, "someone/tiny-rnn-attn", dry_run=True)


def test_push_rejects_bad_folders_and_ids(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push_to_hub(tmp_path / "missing", "someone/x", dry_run=True)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        push_to_hub(tmp_path, "someone/x", dry_run=True)
    with pytest.raises(ValueError, match="Repo id"):
        push_to_hub(saved.folder, "not a/valid//id", dry_run=True)


# ---------------------------------------------------------------------------------------------------- CLI

def cli_env():
    """The environment of a command-line subprocess: this checkout's package, offline."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_cli_translate_stdin_to_stdout(saved, tmp_path):
    lines = [SOURCES[0], "", SOURCES[1], SOURCES[2], SOURCES[3]]
    completed = subprocess.run(
        [sys.executable, "-m", "hf_rnn_attn.cli", "translate", "--model", str(saved.folder), "--batch_size", "2",
         "--max_new_tokens", "12", "--device", "cpu"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, encoding="utf-8", env=cli_env(),
        cwd=tmp_path, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    greedy = saved.references[0]
    assert completed.stdout.split("\n") == [greedy[0], "", greedy[1], greedy[2], greedy[3], ""]


WITHOUT_ONNX_EXTRA = """
import json, sys
sys.modules["onnx"] = sys.modules["onnxruntime"] = None  # an install without the `onnx` extra
from hf_rnn_attn_runtime.command_line import main
print(json.dumps([main(argv) for argv in json.loads(sys.argv[1])]))
"""


def test_cli_runs_without_the_onnx_extra_and_says_what_its_onnx_commands_need(saved, tmp_path):
    """onnx and onnxruntime are an optional extra: without them `translate` runs on PyTorch, and `export` and
    `--backend onnx` say what to install instead of failing to import."""
    source, output = tmp_path / "source.txt", tmp_path / "out.txt"
    source.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    commands = [["translate", "--model", str(saved.folder), "--input", str(source), "--output", str(output),
                 "--batch_size", "2", "--max_new_tokens", "12", "--device", "cpu"],
                ["translate", "--backend", "onnx", "--model", str(saved.folder), "--input", str(source)],
                ["export", "--model", str(saved.folder), "--output", str(tmp_path / "graphs")]]
    completed = subprocess.run([sys.executable, "-c", WITHOUT_ONNX_EXTRA, json.dumps(commands)], capture_output=True,
                               text=True, encoding="utf-8", env=cli_env(), cwd=tmp_path, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == [0, 2, 2]
    assert output.read_text(encoding="utf-8").split("\n") == [*saved.references[0], ""]
    assert completed.stderr.strip().splitlines() == [
        'hf-rnn-attn translate: error: onnxruntime is not installed: pip install "hf_rnn_attn[onnx]"',
        'hf-rnn-attn export: error: onnx is not installed: pip install "hf_rnn_attn[onnx]"']
    assert not (tmp_path / "graphs").exists()


def test_console_script_freezes_the_imports_then_runs_the_command(monkeypatch):
    """`hf-rnn-attn` is `console_main`: the command's imports (torch and the model code unless it is `translate
    --backend onnx`), the imported objects frozen (a faster exit), then the command, whose status is the
    process's. The subprocess tests around this one run it through `python -m hf_rnn_attn.cli`."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["hf-rnn-attn"] == "hf_rnn_attn_runtime.command_line:console_main"
    frozen_when_run = []
    monkeypatch.setattr(command_line, "run_command",
                        lambda args: frozen_when_run.append((args.command, gc.get_freeze_count())) or 3)
    monkeypatch.setattr(sys, "argv", ["hf-rnn-attn", "average", "--run_dir", "run", "--last", "2", "--output", "out"])
    try:
        with pytest.raises(SystemExit) as exited:
            command_line.console_main()
    finally:
        gc.unfreeze()
    assert exited.value.code == 3
    assert frozen_when_run[0][0] == "average" and frozen_when_run[0][1] > 0


def test_cli_translate_file_to_file(saved, tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    output = tmp_path / "out.txt"
    status = cli.main(["translate", "--model", str(saved.folder), "--input", str(source), "--output", str(output),
                       "--num_beams", "3", "--max_new_tokens", "12", "--batch_size", "3", "--device", "cpu"])
    assert status == 0
    assert output.read_text(encoding="utf-8").split("\n") == [*saved.references[1], ""]


def test_every_translation_entry_point_takes_the_length_sorted_path(saved, tmp_path, monkeypatch):
    """The CLI and `translate_texts` (scripts/evaluate_model.py) translate through the pipeline's one batched,
    length-sorted path, or the CLI through `TorchTranslator`'s, which also sorts, so that evaluation measures what
    users get, in input order."""
    calls, searched_lengths = [], []
    sorted_path = RNNAttnTranslationPipeline._translate_longest_first
    monkeypatch.setattr(RNNAttnTranslationPipeline, "_translate_longest_first",
                        lambda self, texts, **kwargs: calls.append(list(texts)) or sorted_path(self, texts, **kwargs))
    search = TorchTranslator.generate
    monkeypatch.setattr(TorchTranslator, "generate", lambda self, input_ids, attention_mask, **kwargs:
                        searched_lengths.append(attention_mask.sum(axis=1).tolist())
                        or search(self, input_ids, attention_mask, **kwargs))
    greedy = saved.references[0]
    assert translate_texts(saved.model, saved.tokenizer, SOURCES, batch_size=2, max_new_tokens=12) == greedy
    source, output = tmp_path / "source.txt", tmp_path / "out.txt"
    source.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    arguments = ["translate", "--model", str(saved.folder), "--input", str(source), "--output", str(output),
                 "--max_new_tokens", "12", "--batch_size", "2", "--device", "cpu"]
    assert cli.main(arguments) == 0  # on TorchTranslator
    assert output.read_text(encoding="utf-8").split("\n") == [*greedy, ""]
    (lengths,) = searched_lengths
    assert len(lengths) == len(SOURCES) and lengths == sorted(lengths, reverse=True)
    monkeypatch.setattr(command_line, "load_torch_translator", lambda args: None)
    assert cli.main(arguments) == 0  # on the pipeline
    assert output.read_text(encoding="utf-8").split("\n") == [*greedy, ""]
    assert calls == [SOURCES, SOURCES]


@pytest.mark.parametrize("problem", ["missing-model", "no-config", "missing-input", "not-utf8", "no-output-dir"])
def test_cli_translate_errors(problem, saved, tmp_path, capsys):
    arguments = {"--model": str(saved.folder), "--input": str(tmp_path / "source.txt")}
    (tmp_path / "source.txt").write_text("el gato\n", encoding="utf-8")
    expected = {"missing-model": "does not exist", "no-config": "has no config.json",
                "missing-input": "cannot read input .*No such file", "not-utf8": "not UTF-8",
                "no-output-dir": "cannot write --output"}[problem]
    if problem == "missing-model":
        arguments["--model"] = str(tmp_path / "nowhere")
    elif problem == "no-config":
        arguments["--model"] = str(tmp_path)
    elif problem == "missing-input":
        arguments["--input"] = str(tmp_path / "nothing.txt")
    elif problem == "not-utf8":
        (tmp_path / "source.txt").write_bytes(b"caf\xe9\n")
    else:
        arguments["--output"] = str(tmp_path / "no" / "such" / "dir" / "out.txt")
    status = cli.main(["translate", *[part for pair in arguments.items() for part in pair]])
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("hf-rnn-attn translate: error: ")
    assert re.search(expected, err), err


def assert_one_line_error(err, command="translate"):
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"hf-rnn-attn {command}: error: "), err


@pytest.mark.parametrize("damage, message", [
    ("truncate-weights", r"model.safetensors is not a readable safetensors file .*corrupted or truncated"),
    ("garbage-weights", r"model.safetensors is not a readable safetensors file"),
    ("truncate-tokenizer", r"tokenizer.json is not valid JSON .*corrupted or truncated"),
])
def test_cli_names_a_corrupted_file(saved, tmp_path, capsys, damage, message):
    folder = tmp_path / "model"
    shutil.copytree(saved.folder, folder)
    name = "tokenizer.json" if damage == "truncate-tokenizer" else "model.safetensors"
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(b"\x00" * 64 if damage == "garbage-weights" else data[: len(data) // 2])
    (tmp_path / "source.txt").write_text("el gato\n", encoding="utf-8")
    status = cli.main(["translate", "--model", str(folder), "--input", str(tmp_path / "source.txt"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2
    assert_one_line_error(err)
    assert re.search(message, err), err


@pytest.mark.parametrize("arguments, message", [
    (["--device", "banana"], r"argument --device: 'banana' is not a device of this machine"),
    (["--device", "cuda:99"], r"argument --device: 'cuda:99' is not a device of this machine"),
    (["--batch_size", "0"], r"argument --batch_size: must be a positive integer, got 0"),
    (["--max_source_length", "-2"], r"argument --max_source_length: must be a positive integer, got -2"),
])
def test_cli_bad_arguments_are_one_line_and_status_2(saved, capsys, arguments, message):
    with pytest.raises(SystemExit) as exited:
        cli.main(["translate", "--model", str(saved.folder), *arguments])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert_one_line_error(err)
    assert re.search(message, err), err


def test_cli_failed_write_keeps_the_previous_output(saved, tmp_path):
    """A write that fails midway (here: a file size limit, as a full disk would) must not destroy the file."""
    output = tmp_path / "out.txt"
    output.write_text("the previous translations\n", encoding="utf-8")
    limit = 40  # bytes; the translations below are longer
    completed = subprocess.run(
        [sys.executable, "-m", "hf_rnn_attn.cli", "translate", "--model", str(saved.folder), "--output", str(output),
         "--max_new_tokens", "12", "--device", "cpu"],
        input="\n".join(SOURCES * 5) + "\n", capture_output=True, text=True, encoding="utf-8", env=cli_env(),
        cwd=tmp_path, timeout=600, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert_one_line_error(completed.stderr)
    assert "cannot write --output" in completed.stderr and "File too large" in completed.stderr
    assert output.read_text(encoding="utf-8") == "the previous translations\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.txt"]  # no temporary file left


def test_cli_truncates_sources_for_the_location_score(tokenizer, tmp_path, capsys):
    model = train_copy_model(tokenizer, SENTENCES, preset="lstm-luong", steps=0, attention_score="location", max_source_positions=4)
    save_for_hub(model, tokenizer, tmp_path / "model")
    long_line = "el gato come la luna azul y el perro bebe agua"
    assert len(tokenizer(long_line)["input_ids"]) > 4
    (tmp_path / "source.txt").write_text(f"el\n{long_line}\n", encoding="utf-8")
    arguments = ["translate", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "source.txt"),
                 "--max_new_tokens", "3", "--device", "cpu"]
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert re.search(r"exceeds max_source_positions=4 .*Pass --max_source_length 4 to truncate longer sources", err)
    assert cli.main([*arguments, "--max_source_length", "4"]) == 0
    assert len(capsys.readouterr().out.split("\n")) == 3  # two translations and the final line end


def test_cli_push_dry_run_and_failure(saved, capsys, monkeypatch):
    assert cli.main(["push", "--folder", str(saved.folder), "--repo_id", "someone/tiny", "--dry_run"]) == 0
    assert capsys.readouterr().out.split() == saved.files

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    assert cli.main(["push", "--folder", str(saved.folder), "--repo_id", "someone/tiny"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Could not upload" in err
    assert cli.main(["push", "--folder", str(saved.folder / "missing"), "--repo_id", "someone/tiny"]) == 2
