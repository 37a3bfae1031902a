"""ONNX export and the onnxruntime translator: the same tokens and scores as generate() on every variant, the
same text as the PyTorch path through the CLI, int8 on both backends, and clear errors for wrong folders."""

import inspect
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from hf_rnn_attn import RNNAttnConfig, cli
from hf_rnn_attn.onnx import GRAPH_FILES, ONNXTranslator
from hf_rnn_attn_runtime.export_folder import (ARCHITECTURE_DEFAULTS, GENERATION_DEFAULTS, NEUTRAL_VALUES,
                                               ExportedTokenizer, GenerationSettings)
from hf_rnn_attn.onnx_export import OPSET, export_onnx, top_k_nodes
from hf_rnn_attn.quantization import quantize_int8
from hf_rnn_attn.translate import translate_texts
from tiny_models import SEARCH_BATCH, lively_model, saved_copy_model, source_batch, tiny_model

def test_export_runs_in_eval_mode_and_leaves_the_model_as_it_was(tmp_path):
    """Dropout must not reach the graphs, nor the export switch the caller's model between modes."""
    model = lively_model("bigru-bahdanau", dropout=0.3).train()
    export_onnx(model, tmp_path)
    assert model.training
    model.eval()
    input_ids, attention_mask = source_batch(**SEARCH_BATCH)
    expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=3, max_new_tokens=10)
    output = ONNXTranslator(tmp_path).generate(input_ids.numpy(), attention_mask.numpy(), num_beams=3,
                                              max_new_tokens=10)
    np.testing.assert_array_equal(output.sequences, expected.numpy())


# ------------------------------------------------------------------------------------------- text and CLI

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained copy model saved as a model folder and exported with its int8 graphs."""
    folder = tmp_path_factory.mktemp("trained")
    model, tokenizer, sentences = saved_copy_model(folder / "model")
    assert cli.main(["export", "--model", str(folder / "model"), "--output", str(folder / "onnx"), "--int8"]) == 0
    return model, tokenizer, folder, sentences[:9]


def test_translations_equal_the_pytorch_path(trained):
    model, tokenizer, folder, sentences = trained
    translator = ONNXTranslator(folder / "onnx")
    texts = [sentences[0], "   ", *sentences[1:]]
    for settings in ({"max_new_tokens": 12}, {"max_new_tokens": 12, "num_beams": 3}):
        expected = translate_texts(model, tokenizer, texts, batch_size=4, **settings)
        assert translator.translate(texts, batch_size=4, **settings) == expected
    assert translator.translate(texts)[1] == "" and translator.translate([]) == []


def run_translate(arguments, source, output):
    return cli.main(["translate", "--input", str(source), "--output", str(output), "--max_new_tokens", "12",
                     "--batch_size", "3", *map(str, arguments)])


def test_cli_onnx_backend_writes_what_the_torch_backend_writes(trained, tmp_path):
    _, _, folder, sentences = trained
    source = tmp_path / "source.txt"
    source.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    assert run_translate(["--model", folder / "model", "--num_beams", "3"], source, tmp_path / "torch.txt") == 0
    assert run_translate(["--model", folder / "onnx", "--num_beams", "3", "--backend", "onnx", "--threads", "1"],
                         source, tmp_path / "onnx.txt") == 0
    assert (tmp_path / "onnx.txt").read_text(encoding="utf-8") == (tmp_path / "torch.txt").read_text(encoding="utf-8")


def test_int8_on_both_backends(trained, tmp_path):
    """The int8 graphs hold int8 weights and translate; torch.ao quantises a copy of the model's Linear layers."""
    model, _, folder, sentences = trained
    graph = onnx.load(str(folder / "onnx" / "decoder.int8.onnx"))
    assert any(tensor.data_type == onnx.TensorProto.INT8 for tensor in graph.graph.initializer)
    source = tmp_path / "source.txt"
    source.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    for backend, model_folder in (("onnx", folder / "onnx"), ("torch", folder / "model")):
        output = tmp_path / f"{backend}.txt"
        assert run_translate(["--model", model_folder, "--backend", backend, "--int8"], source, output) == 0
        assert len(output.read_text(encoding="utf-8").split("\n")) == len(sentences) + 1
    quantized = quantize_int8(model)
    assert type(quantized.lm_head).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert type(model.lm_head) is torch.nn.Linear  # the model itself is unchanged


# ------------------------------------------------------------------------------------------------- errors

def test_exporting_a_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json, so it is not a saved model"):
        export_onnx(tmp_path / "notes", tmp_path / "out")
    assert cli.main(["export", "--model", str(tmp_path / "notes"), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("hf-rnn-attn export: error: ")
    assert not (tmp_path / "out").exists()


def test_unknown_backend_and_torch_only_options(trained, capsys):
    _, _, folder, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["translate", "--model", str(folder / "onnx"), "--backend", "tensorflow"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tensorflow' (choose from 'torch', 'onnx')" in capsys.readouterr().err
    assert cli.main(["translate", "--model", str(folder / "onnx"), "--backend", "onnx", "--device", "cpu"]) == 2
    assert "--device work only with --backend torch" in capsys.readouterr().err


def test_onnx_backend_on_a_folder_without_graphs(trained, tmp_path, capsys):
    _, _, folder, _ = trained
    with pytest.raises(FileNotFoundError, match=r"has no encoder.onnx or decoder.onnx; write the graphs with "
                                                r"`hf-rnn-attn export"):
        ONNXTranslator(folder / "model")
    with pytest.raises(FileNotFoundError, match=r"has no config.json, so it is not an ONNX export"):
        ONNXTranslator(tmp_path)
    shutil.copytree(folder / "onnx", tmp_path / "fp32only")
    (tmp_path / "fp32only" / "decoder.int8.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no decoder.int8.onnx; .* --int8`"):
        ONNXTranslator(tmp_path / "fp32only", int8=True)
    source = tmp_path / "source.txt"
    source.write_text("el gato\n", encoding="utf-8")
    assert run_translate(["--model", folder / "model", "--backend", "onnx"], source, tmp_path / "out.txt") == 2
    assert "cannot load a model from" in capsys.readouterr().err


def test_graphs_from_an_older_export_are_refused(tmp_path, capsys):
    export_onnx(tiny_model("lstm-luong-general"), tmp_path / "onnx")
    tiny_model("lstm-luong-dot").config.to_json_file(tmp_path / "onnx" / "config.json")  # the model was changed
    with pytest.raises(ValueError, match=r"encoder.onnx was exported from a model with another config "
                                         r"\(attention_score='general' in the graph, 'dot' in config.json\)"):
        ONNXTranslator(tmp_path / "onnx")
    source = tmp_path / "source.txt"
    source.write_text("el gato\n", encoding="utf-8")
    assert run_translate(["--model", tmp_path / "onnx", "--backend", "onnx"], source, tmp_path / "out.txt") == 2
    assert "exported from a model with another config" in capsys.readouterr().err


def test_a_config_field_newer_than_the_export_is_read_as_its_default(tmp_path):
    """An export from before a config field existed computes what the field's default does."""
    model = tiny_model("lstm-luong-general")
    export_onnx(model, tmp_path)
    for name in GRAPH_FILES[False]:
        graph = onnx.load(str(tmp_path / name))
        metadata = {prop.key: prop.value for prop in graph.metadata_props}
        recorded = json.loads(metadata["hf_rnn_attn_config"])
        del recorded["attention_type"]
        onnx.helper.set_model_props(graph, {**metadata, "hf_rnn_attn_config": json.dumps(recorded)})
        onnx.save(graph, str(tmp_path / name))
    ONNXTranslator(tmp_path)
    model.config.attention_type = "local-p"
    model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"attention_type='global' in the graph, 'local-p' in config.json"):
        ONNXTranslator(tmp_path)


def test_encoder_and_decoder_of_two_exports_are_refused(tmp_path):
    for seed in (0, 1):
        export_onnx(tiny_model("bigru-bahdanau", seed=seed), tmp_path / str(seed))
    shutil.copy(tmp_path / "1" / "decoder.onnx", tmp_path / "0" / "decoder.onnx")
    with pytest.raises(ValueError, match=r"encoder.onnx and .*decoder.onnx come from two different exports"):
        ONNXTranslator(tmp_path / "0")


def test_graphs_that_fail_the_check_leave_the_earlier_export_as_it_was(tmp_path, monkeypatch):
    export_onnx(tiny_model("lstm-luong-general"), tmp_path)
    earlier = {name: (tmp_path / name).read_bytes() for name in GRAPH_FILES[False]}

    def disagree(model, encoder_path, decoder_path):
        raise RuntimeError("The exported graphs disagree with the model")

    monkeypatch.setattr("hf_rnn_attn.onnx_export._check_graphs", disagree)
    with pytest.raises(RuntimeError, match="disagree"):
        export_onnx(tiny_model("lstm-luong-general", seed=1), tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in GRAPH_FILES[False]} == earlier
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
    ONNXTranslator(tmp_path)  # still the earlier, whole export


def test_local_m_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ONNX export does not support attention_type='local-m'"):
        export_onnx(tiny_model("bigru-local-m-dot"), tmp_path)


@pytest.mark.parametrize("threads", [0, -2, 1.5])
def test_a_bad_thread_count_is_refused(threads, tmp_path):
    with pytest.raises(ValueError, match="`threads` must be a positive integer or None"):
        ONNXTranslator(tmp_path, threads=threads)


# ------------------------------------------------------------------------------------ without torch or transformers

def test_the_runtime_reads_the_config_defaults_of_rnn_attn_config():
    """hf_rnn_attn_runtime cannot import `RNNAttnConfig`, so it keeps its own copy of the architecture defaults."""
    training_only = {"dropout", "init_range", "use_cache"}
    signature = inspect.signature(RNNAttnConfig.__init__).parameters.items()
    assert ARCHITECTURE_DEFAULTS == {name: parameter.default for name, parameter in signature
                                     if name not in ("self", "kwargs", *training_only)}


def test_the_runtime_reads_unset_generation_settings_as_generate_does():
    defaults = GenerationConfig._get_default_generation_params()
    assert GENERATION_DEFAULTS == {name: defaults[name] for name in GENERATION_DEFAULTS}
    assert NEUTRAL_VALUES == {name: defaults[name] for name in NEUTRAL_VALUES}


def test_the_runtime_tokenizer_gives_the_ids_and_texts_of_the_saved_tokenizer(trained):
    """tokenizer.json through `tokenizers` against the transformers tokenizer saved with it, in every truncation
    mode; the trained tokenizer was saved after padded calls, whose padding transformers does not apply."""
    _, tokenizer, folder, sentences = trained
    exported, saved = ExportedTokenizer(folder / "onnx"), AutoTokenizer.from_pretrained(folder / "onnx")
    texts = [*sentences, "", "el gato come pan " * 80]
    for truncation, max_length in [(None, None), (True, 4), (True, None), (None, 5), (False, 4)]:
        assert exported(texts, truncation=truncation, max_length=max_length) == \
            {"input_ids": saved(texts, truncation=truncation, max_length=max_length)["input_ids"]}
    ids = saved(texts)["input_ids"]
    assert exported.batch_decode(ids) == saved.batch_decode(ids, skip_special_tokens=True,
                                                            clean_up_tokenization_spaces=False)


def test_generation_settings_without_a_generation_config_come_from_the_config(trained, tmp_path):
    _, _, folder, _ = trained
    shutil.copytree(folder / "onnx", tmp_path / "onnx")
    (tmp_path / "onnx" / "generation_config.json").unlink()
    translator = ONNXTranslator(tmp_path / "onnx")
    assert translator.generation_config == GenerationSettings(
        num_beams=1, num_return_sequences=1, max_length=20, max_new_tokens=None, length_penalty=1.0,
        early_stopping=False, eos_token_id=translator.config.eos_token_id, sets_length=False)


def test_a_generation_config_that_changes_generate_s_tokens_is_refused(trained, tmp_path):
    """The search applies no logits processor: a generation config that sets one would give other translations
    than the model's. Fields that do not change the tokens, or set to generate()'s own values, are read."""
    _, _, folder, _ = trained
    shutil.copytree(folder / "onnx", tmp_path / "onnx")
    path = tmp_path / "onnx" / "generation_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "do_sample": False, "repetition_penalty": 1.0, "output_scores": True}))
    assert ONNXTranslator(tmp_path / "onnx").generation_config.num_beams == 1
    path.write_text(json.dumps({**saved, "no_repeat_ngram_size": 2, "do_sample": True, "top_k": 50}))
    with pytest.raises(ValueError, match="sets do_sample, no_repeat_ngram_size, which this search does not apply"):
        ONNXTranslator(tmp_path / "onnx")


def test_translating_with_the_runtime_imports_neither_torch_nor_transformers(trained):
    _, _, folder, sentences = trained
    program = (f"import sys; from hf_rnn_attn_runtime import ONNXTranslator; "
               f"print(ONNXTranslator({str(folder / 'onnx')!r}).translate({sentences[:3]!r}, max_new_tokens=12)); "
               f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'hf_rnn_attn')))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    translations, imported = result.stdout.splitlines()
    assert translations == repr(ONNXTranslator(folder / "onnx").translate(sentences[:3], max_new_tokens=12))
    assert imported == "[]"


def test_the_onnx_command_imports_neither_torch_nor_transformers(trained, tmp_path):
    """`hf-rnn-attn translate --backend onnx` runs in `hf_rnn_attn_runtime` alone (a start in a fraction of a
    second), and writes what the torch backend writes."""
    _, _, folder, sentences = trained
    source = tmp_path / "source.txt"
    source.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    assert run_translate(["--model", folder / "model"], source, tmp_path / "torch.txt") == 0
    arguments = ["translate", "--backend", "onnx", "--model", str(folder / "onnx"), "--input", str(source),
                 "--output", str(tmp_path / "onnx.txt"), "--max_new_tokens", "12", "--batch_size", "3"]
    program = (f"import sys; from hf_rnn_attn_runtime.command_line import main; status = main({arguments!r}); "
               f"print(status, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', "
               f"'hf_rnn_attn')))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "0 []"
    assert (tmp_path / "onnx.txt").read_text(encoding="utf-8") == (tmp_path / "torch.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("size", [128, 200, 20])
def test_the_two_round_top_k_orders_as_top_k(size, tmp_path):
    """The decoder graph's top-k (`top_k_nodes`, blocks of 64) against a stable sort, on values with many ties
    within and across blocks (also where the best blocks come in the reverse order of their index), for
    vocabularies of whole blocks, with a part block, and under one block."""
    nodes, constants = top_k_nodes("values", "k", size, "top_values", "top_indices")
    graph = onnx.helper.make_graph(
        nodes, "top_k", [onnx.helper.make_tensor_value_info("values", onnx.TensorProto.FLOAT, ["rows", size]),
                         onnx.helper.make_tensor_value_info("k", onnx.TensorProto.INT64, [1])],
        [onnx.helper.make_tensor_value_info("top_values", onnx.TensorProto.FLOAT, ["rows", "k"]),
         onnx.helper.make_tensor_value_info("top_indices", onnx.TensorProto.INT64, ["rows", "k"])], constants)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.save(model, tmp_path / "top_k.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "top_k.onnx"), providers=["CPUExecutionProvider"])
    values = np.random.default_rng(0).integers(-3, 3, size=(6, size)).astype(np.float32)  # ties everywhere
    values[1] = 0.0  # one value throughout
    values[3:, ::64] = 3 + np.arange(0, size, 64)  # later blocks rank first, and share their other values
    for k in sorted({1, 3, 10, size}):
        top_values, top_indices = session.run(None, {"values": values, "k": np.array([k])})
        expected = np.argsort(-values, axis=1, kind="stable")[:, :k]  # largest first, ties to the lower index
        np.testing.assert_array_equal(top_indices, expected)
        np.testing.assert_array_equal(top_values, np.take_along_axis(values, expected, axis=1))
