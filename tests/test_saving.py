"""Strict save/load through the Auto classes, and remote-code loading without the package."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration, RNNAttnModel
from tiny_models import source_batch, tiny_model

HIDE_PACKAGE = "import sys; sys.modules['hf_rnn_attn'] = None\n"


def run_without_package(code, cwd):
    """Runs `code` in a fresh interpreter where `import hf_rnn_attn` fails, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-c", HIDE_PACKAGE + textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("variant", ["bigru-bahdanau", "lstm-luong-location"])
def test_strict_round_trip_through_auto_classes(tmp_path, variant):
    model = tiny_model(variant)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "rnn_attn"
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_rnn_attn.RNNAttnForConditionalGeneration"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), RNNAttnConfig)
    loaded, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(loaded, RNNAttnForConditionalGeneration)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[key], reloaded[key]) for key in original)
    input_ids, attention_mask = source_batch()
    assert torch.equal(model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=5),
                       loaded.eval().generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=5))


def test_base_model_loads_through_auto_model(tmp_path):
    tiny_model("lstm-luong-general").model.save_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path), RNNAttnModel)


def test_checkpoint_whose_config_does_not_match_its_weights_is_refused(tmp_path):
    tiny_model("bigru-bahdanau").save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["rnn_cell"] = "lstm"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match its config"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path)


def test_checkpoint_with_other_sizes_is_refused(tmp_path):
    tiny_model("lstm-luong-general").save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["vocab_size"] = 25
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match its config"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("variant", ["bigru-bahdanau", "lstm-luong-additive"])
def test_remote_code_loads_in_a_process_without_the_package(tmp_path, variant):
    model = tiny_model(variant)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    for name in ("configuration_rnn_attn.py", "architecture.py", "modeling_rnn_attn.py", "recurrent_layers.py",
                 "attention.py", "lean_decoding.py", "beam_penalties.py"):
        assert (model_dir / name).exists(), name
    input_ids, attention_mask = source_batch()
    expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, num_beams=2)
    result = run_without_package(f"""
        import torch
        from transformers import AutoModelForSeq2SeqLM
        try:
            import hf_rnn_attn
            raise SystemExit("package should be hidden")
        except ImportError:
            pass
        model = AutoModelForSeq2SeqLM.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        out = model.generate(input_ids=torch.tensor({input_ids.tolist()}),
                             attention_mask=torch.tensor({attention_mask.tolist()}), max_new_tokens=6, num_beams=2)
        print(out.tolist())
    """, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(expected.tolist())
