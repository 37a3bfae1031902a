"""Checkpoint averaging: `hf_rnn_attn.averaging` and `hf-rnn-attn average`."""

import pytest
import torch
from safetensors.torch import load_file
from script_helpers import tiny_tokenizer
from tiny_models import tiny_config

from hf_rnn_attn import RNNAttnForConditionalGeneration, cli
from hf_rnn_attn.averaging import average_checkpoints, last_checkpoints


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def save_checkpoint(folder, tokenizer, seed, **overrides):
    torch.manual_seed(seed)
    model = RNNAttnForConditionalGeneration(tiny_config("bigru-bahdanau", vocab_size=len(tokenizer), **overrides))
    model.generation_config.num_beams = seed + 1  # tells whose generation config was copied
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.state_dict()


def test_copies_of_one_checkpoint_average_to_it_exactly(tmp_path, tokenizer):
    weights = save_checkpoint(tmp_path / "checkpoint-5", tokenizer, seed=0)
    output = average_checkpoints([tmp_path / "checkpoint-5"] * 3, tmp_path / "averaged")
    averaged = RNNAttnForConditionalGeneration.from_pretrained(output).state_dict()
    assert averaged.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(averaged[name], tensor), name
    assert (output / "tokenizer.json").is_file() and (output / "generation_config.json").is_file()


def test_two_checkpoints_average_to_their_mean(tmp_path, tokenizer):
    first = save_checkpoint(tmp_path / "a", tokenizer, seed=0)
    second = save_checkpoint(tmp_path / "b", tokenizer, seed=1)
    output = average_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "averaged")
    averaged = load_file(output / "model.safetensors")
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (first[name] + second[name]) / 2, rtol=0, atol=1e-7)
    model = RNNAttnForConditionalGeneration.from_pretrained(output)
    assert model.generation_config.num_beams == 2  # the last checkpoint listed
    last = RNNAttnForConditionalGeneration.from_pretrained(tmp_path / "b")
    assert model.config.to_diff_dict() == last.config.to_diff_dict()


def test_last_checkpoints_are_taken_in_step_order(tmp_path):
    for step in (500, 1000, 1500, 90):  # a name sort would put checkpoint-90 last
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-best").mkdir()
    assert [path.name for path in last_checkpoints(tmp_path, 2)] == ["checkpoint-1000", "checkpoint-1500"]
    with pytest.raises(ValueError, match="holds 4 checkpoint-\\* folders.*asked for the last 5"):
        last_checkpoints(tmp_path, 5)


def test_checkpoints_of_different_models_are_refused(tmp_path, tokenizer):
    save_checkpoint(tmp_path / "a", tokenizer, seed=0)
    save_checkpoint(tmp_path / "b", tokenizer, seed=0, attention_score="general")
    with pytest.raises(ValueError, match="different configs \\(attention_score 'additive' vs 'general'\\)"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "averaged")
    assert not (tmp_path / "averaged").exists()


def test_an_existing_output_folder_is_never_overwritten(tmp_path, tokenizer):
    save_checkpoint(tmp_path / "a", tokenizer, seed=0)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "model.safetensors").write_text("keep me")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        average_checkpoints([tmp_path / "a"], tmp_path / "used")
    assert (tmp_path / "used" / "model.safetensors").read_text() == "keep me"


def test_command_averages_the_last_checkpoints_of_a_run(tmp_path, tokenizer, capsys):
    run = tmp_path / "run"
    weights = [save_checkpoint(run / f"checkpoint-{step}", tokenizer, seed=seed)
               for seed, step in enumerate((10, 20, 30))]
    assert cli.main(["average", "--run_dir", str(run), "--last", "2", "--output", str(tmp_path / "avg")]) == 0
    assert "checkpoint-20, checkpoint-30" in capsys.readouterr().err
    averaged = RNNAttnForConditionalGeneration.from_pretrained(tmp_path / "avg").state_dict()
    torch.testing.assert_close(averaged["lm_head.weight"], (weights[1]["lm_head.weight"] + weights[2]["lm_head.weight"])
                               / 2, rtol=0, atol=1e-7)
    # The same folder again is refused, as one line with status 2.
    assert cli.main(["average", "--checkpoints", str(run / "checkpoint-10"), "--output", str(tmp_path / "avg")]) == 2
    assert "hf-rnn-attn average: error: Output folder" in capsys.readouterr().err
