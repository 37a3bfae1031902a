"""`TorchTranslator`, the PyTorch layers without transformers: generate()'s tokens and scores on every variant it
runs, the model class's text through the CLI, the cases it leaves to the model class, and no transformers import."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_rnn_attn import RNNAttnConfig, recurrent_layers
from hf_rnn_attn_runtime import command_line
from hf_rnn_attn_runtime.export_folder import ARCHITECTURE_DEFAULTS
from hf_rnn_attn_runtime.torch_backend import TRAINING_DEFAULTS, SavedConfig, TorchTranslator
from tiny_models import (LOCAL_VARIANTS, SEARCH_BATCH, VARIANTS, lively_model, saved_copy_model, source_batch,
                         tiny_model)

DERIVED = ("encoder_output_size", "encoder_state_size", "uses_bridge", "output_layer_input_size")


@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_tied_output_layer_is_loaded_from_the_embedding(num_beams, tmp_path):
    """`save_pretrained` writes a tied output weight once, under the decoder embedding's name."""
    model = lively_model("lstm-luong-general", embedding_size=16, tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    translator = TorchTranslator(tmp_path)
    assert translator.layers.lm_head.weight is translator.layers.model.decoder.embed_tokens.weight
    input_ids, attention_mask = source_batch(**SEARCH_BATCH)
    expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=10,
                              num_beams=num_beams)
    output = translator.generate(input_ids.numpy(), attention_mask.numpy(), max_new_tokens=10, num_beams=num_beams)
    np.testing.assert_array_equal(output.sequences, expected.numpy())


@pytest.mark.parametrize("variant", [*VARIANTS, *LOCAL_VARIANTS])
def test_the_saved_config_reads_as_rnn_attn_config(variant, tmp_path):
    """What `save_pretrained` writes reads as the model's config, derived sizes included."""
    model = tiny_model(variant)
    model.config.save_pretrained(tmp_path)
    config = SavedConfig.from_folder(tmp_path)
    for name in (*ARCHITECTURE_DEFAULTS, *DERIVED):
        assert getattr(config, name) == getattr(model.config, name), name


def test_a_config_json_without_fields_reads_as_rnn_attn_config_defaults(tmp_path):
    """A field config.json leaves out reads as `RNNAttnConfig`'s default, as transformers would read it."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rnn_attn"}))
    config, defaults = SavedConfig.from_folder(tmp_path), RNNAttnConfig()
    for name in (*ARCHITECTURE_DEFAULTS, *TRAINING_DEFAULTS, *DERIVED):
        assert getattr(config, name) == getattr(defaults, name), name


def test_a_config_that_rnn_attn_config_refuses_is_refused(tmp_path):
    tiny_model("bigru-bahdanau").save_pretrained(tmp_path)
    saved_config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved_config, "rnn_cell": "rnn"}))
    with pytest.raises(ValueError, match="`rnn_cell` must be one of"):
        TorchTranslator(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**saved_config, "model_type": "bart"}))
    with pytest.raises(ValueError, match="not an hf_rnn_attn"):
        TorchTranslator(tmp_path)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    tiny_model("bigru-bahdanau").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({**weights, "lm_head.bias": weights["lm_head.bias"].bfloat16()}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lm_head.bias is torch.bfloat16"):
        TorchTranslator(tmp_path)
    save_file({name: tensor for name, tensor in weights.items() if name != "lm_head.bias"},
              tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['lm_head.bias'\]"):
        TorchTranslator(tmp_path)


def test_local_m_and_missing_files_are_refused(tmp_path):
    tiny_model("lstm-luong-local-m-general").save_pretrained(tmp_path / "local-m")
    with pytest.raises(ValueError, match="local-m"):
        TorchTranslator(tmp_path / "local-m")
    with pytest.raises(FileNotFoundError, match="has no config.json, model.safetensors"):
        TorchTranslator(tmp_path)


@pytest.mark.parametrize("threads", [0, -2, 1.5])
def test_a_bad_thread_count_is_refused(threads, tmp_path):
    with pytest.raises(ValueError, match="`threads` must be a positive integer or None"):
        TorchTranslator(tmp_path, threads=threads)


# ----------------------------------------------------------------------------------------------------- command

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained copy model saved with its tokenizer, and a source file."""
    folder = tmp_path_factory.mktemp("trained")
    _, _, sentences = saved_copy_model(folder / "model")
    source = folder / "source.txt"
    source.write_text("\n".join([sentences[0], "   ", *sentences[1:9]]) + "\n", encoding="utf-8")
    return folder / "model", source


@pytest.mark.parametrize("threads, num_beams", [(1, 1), (2, 1), (2, 3)])
def test_each_search_side_by_side_decodes_a_batch(threads, num_beams, trained, monkeypatch):
    """As the pipeline's searches: `batch_size` sentences decode in each, so T searches hold T batches."""
    model, source = trained
    translator, rows = TorchTranslator(model, threads=threads), []
    search = TorchTranslator.generate
    monkeypatch.setattr(TorchTranslator, "generate", lambda self, *args, max_active_rows, **kwargs:
                        rows.append(max_active_rows) or search(self, *args, max_active_rows=max_active_rows, **kwargs))
    translator.translate(source.read_text(encoding="utf-8").splitlines(), batch_size=3, num_beams=num_beams,
                         max_new_tokens=12)
    assert rows == [3 * num_beams * threads]


def translate(model, source, output, *options):
    return command_line.main(["translate", "--model", str(model), "--input", str(source), "--output", str(output),
                              "--max_new_tokens", "12", "--batch_size", "3", *map(str, options)])


@pytest.mark.parametrize("options", [[], ["--num_beams", "3"], ["--num_beams", "3", "--length_penalty", "0.5"],
                                     ["--threads", "1", "--device", "cpu"], ["--max_source_length", "4"]])
def test_the_command_writes_what_the_model_class_writes(options, trained, tmp_path, monkeypatch):
    model, source = trained
    used = []
    monkeypatch.setattr(TorchTranslator, "__call__", lambda self, *args, **kwargs: used.append(1) or
                        super(TorchTranslator, self).__call__(*args, **kwargs))
    assert translate(model, source, tmp_path / "torch.txt", *options) == 0
    assert used
    monkeypatch.setattr(command_line, "load_torch_translator", lambda args: None)  # the model class's path
    assert translate(model, source, tmp_path / "model_class.txt", *options) == 0
    assert (tmp_path / "torch.txt").read_text(encoding="utf-8") == \
        (tmp_path / "model_class.txt").read_text(encoding="utf-8")


def test_the_command_imports_no_transformers(trained, tmp_path):
    model, source = trained
    arguments = ["translate", "--model", str(model), "--input", str(source), "--output", str(tmp_path / "out.txt"),
                 "--max_new_tokens", "12"]
    program = (f"import sys; from hf_rnn_attn_runtime.command_line import main; status = main({arguments!r}); "
               f"print(status, sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'hf_rnn_attn')))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "0 []"
    assert translate(model, source, tmp_path / "in_process.txt") == 0
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == (tmp_path / "in_process.txt").read_text("utf-8")


@pytest.mark.parametrize("options", [["--alignments", "ALIGN"], ["--source_length_cap", "1.5", "10"],
                                     ["--coverage_penalty", "0.2"], ["--int8"], ["--ensemble", "MODEL"]])
def test_options_of_the_model_class_take_its_path(options, trained):
    model, _ = trained
    options = [str(model) if option == "MODEL" else option for option in options]
    args = command_line.build_parser().parse_args(["translate", "--model", str(model), *options])
    assert not command_line._runs_without_transformers(args)
    args = command_line.build_parser().parse_args(["translate", "--model", str(model)])
    assert command_line._runs_without_transformers(args)


def test_folders_it_does_not_run_and_a_gpu_take_the_model_class(trained, tmp_path, monkeypatch):
    model, _ = trained
    parse = command_line.build_parser().parse_args
    assert isinstance(command_line.load_torch_translator(parse(["translate", "--model", str(model)])),
                      TorchTranslator)
    tiny_model("bigru-bahdanau").save_pretrained(tmp_path / "no-tokenizer")
    (tmp_path / "damaged").mkdir()
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / "damaged" / name).write_bytes((model / name).read_bytes())
    (tmp_path / "damaged" / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:100])
    shutil.copytree(model, tmp_path / "no-repeat-ngrams")
    generation_config = tmp_path / "no-repeat-ngrams" / "generation_config.json"
    generation_config.write_text(json.dumps({**json.loads(generation_config.read_text()), "no_repeat_ngram_size": 2}))
    for name in ("no-tokenizer", "damaged", "missing", "no-repeat-ngrams"):
        folder = tmp_path / name
        assert command_line.load_torch_translator(parse(["translate", "--model", str(folder)])) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert command_line.load_torch_translator(parse(["translate", "--model", str(model)])) is None
    assert isinstance(command_line.load_torch_translator(parse(["translate", "--model", str(model), "--device",
                                                                "cpu"])), TorchTranslator)


def test_the_layers_come_from_the_package_once_it_is_imported():
    """In a process that imported `hf_rnn_attn`, `TorchTranslator` builds its layers from the package's modules."""
    from hf_rnn_attn_runtime import torch_backend

    assert torch_backend.recurrent_layers is recurrent_layers
    assert isinstance(RNNAttnConfig(), torch_backend.architecture.ArchitectureProperties)
