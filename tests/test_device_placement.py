"""Device placement, checked without a GPU: every tensor the models make follows their weights and inputs.

With `torch.device("meta")` as the default device, a tensor made without naming a device lands on the meta
device, and the first operation that mixes it with the model's CPU tensors fails ("Tensor on device meta is not
on the expected device cpu"): the same mistake fails on a GPU, or copies between devices at every step. The model
and its inputs stay on the CPU, so whatever reads values (lengths, stopping, beam bookkeeping) runs as usual.
transformers' own beam-search loop (behind `return_dict_in_generate`) makes a tensor on the default device and
moves it to the inputs' device, harmless on a GPU but impossible out of meta, so it is left out here.
"""

import pytest
import torch

from hf_rnn_attn.ensemble import RNNAttnEnsemble
from tiny_models import LOCAL_VARIANTS, VARIANTS, source_batch, tiny_model

ALL_VARIANTS = [*VARIANTS, *LOCAL_VARIANTS]
# As a context, the default device of tensors made without one: meta, which no model tensor is on.
META_BY_DEFAULT = torch.device("meta")


def test_a_tensor_made_without_a_device_is_caught():
    weights = torch.ones(3)
    with META_BY_DEFAULT, pytest.raises(RuntimeError, match="is not on the expected device"):
        weights + torch.arange(3)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_training_pass_and_its_backward(variant):
    model = tiny_model(variant, dropout=0.1).train()
    input_ids, attention_mask = source_batch()
    labels = torch.tensor([[5, 6, 7, 2, -100], [8, 2, -100, -100, -100], [9, 10, 11, 12, 2]])
    num_items_in_batch = torch.tensor(11)  # as Trainer passes it, on the inputs' device
    with META_BY_DEFAULT:
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                        num_items_in_batch=num_items_in_batch, label_smoothing=0.1)
        outputs.loss.backward()
    assert outputs.loss.device.type == "cpu"
    assert all(p.grad.device.type == "cpu" for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_forward_with_logits_attentions_and_hidden_states(variant):
    model = tiny_model(variant)
    input_ids, attention_mask = source_batch()
    with META_BY_DEFAULT:
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :4],
                        skip_logits=False, output_attentions=True, output_hidden_states=True)
    assert outputs.logits.device.type == "cpu" and outputs.cross_attentions[-1].device.type == "cpu"


GENERATE_KWARGS = {
    "greedy": {"num_beams": 1},
    "greedy, refilled batch, source-length cap": {"num_beams": 1, "max_active_rows": 2, "source_length_cap": (1.5, 2)},
    "beam": {"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.6},
    "beam, refilled batch, coverage penalty": {"num_beams": 3, "max_active_rows": 3, "coverage_penalty": 0.2},
    "sampling (transformers' loop)": {"do_sample": True, "top_k": 5},
    "greedy with attentions (transformers' loop)": {"output_attentions": True, "return_dict_in_generate": True},
}


@pytest.mark.parametrize("variant", ALL_VARIANTS)
@pytest.mark.parametrize("decoding", GENERATE_KWARGS)
def test_generate(variant, decoding):
    model = tiny_model(variant)
    input_ids, attention_mask = source_batch()
    with META_BY_DEFAULT:
        outputs = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6,
                                 **GENERATE_KWARGS[decoding])
    sequences = outputs.sequences if isinstance(outputs, dict) else outputs
    assert sequences.device.type == "cpu"


@pytest.mark.parametrize("decoding", ["greedy", "beam", "sampling (transformers' loop)"])
def test_ensemble_generate(decoding):
    ensemble = RNNAttnEnsemble([tiny_model("bigru-bahdanau", seed=0), tiny_model("bigru-bahdanau", seed=1)])
    input_ids, attention_mask = source_batch()
    with META_BY_DEFAULT:
        sequences = ensemble.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6,
                                      **GENERATE_KWARGS[decoding])
    assert sequences.device.type == "cpu"
