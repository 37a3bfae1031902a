"""oneDNN's float32 products (`onednn_products.py`) give what torch's default products give, run where they
should, and keep to a few shapes."""

import gc
import warnings
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from hf_rnn_attn import linear_cross_entropy as fused_loss
from hf_rnn_attn import onednn_products
from hf_rnn_attn.linear_cross_entropy import linear_cross_entropy
from hf_rnn_attn.onednn_products import output_logits
from tiny_models import source_batch, tiny_model

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


def onednn_rows(function):
    """`function()`'s result and the row count of each oneDNN product it ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profiler:
        result = function()
    rows = [event.input_shapes[0][0] for event in profiler.events() if event.name == "mkldnn::_linear_pointwise"]
    return result, rows


@contextmanager
def onednn_disabled():
    with warnings.catch_warnings():  # torch's flags() also warns about oneDNN's TF32 on Intel GPUs
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def output_layer(in_features=16, vocab_size=300, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Linear(in_features, vocab_size, dtype=dtype)


@pytest.mark.parametrize("features", [torch.randn(1, 16), torch.randn(7, 16), torch.randn(3, 5, 16),
                                      torch.randn(4, 3, 16)[:, -1]], ids=["1 row", "7 rows", "3-D", "strided"])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_output_logits_on_onednn_equal_the_layer(features, mode):
    layer = output_layer()
    with mode():
        logits, rows = onednn_rows(lambda: output_logits(layer, features))
        plain = layer(features)
    assert rows, "oneDNN did not run"
    assert logits.shape == plain.shape
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["autograd", "float64", "oneDNN disabled", "int8 layer", "inference tensor"])
def test_output_logits_leave_autograd_other_dtypes_and_layers_to_the_layer(case):
    if case == "inference tensor":  # made under inference_mode: no version to tell when the weight changes
        with torch.inference_mode():
            layer = output_layer()
    else:
        layer = output_layer(dtype=torch.float64 if case == "float64" else torch.float32)
    features = torch.randn(5, 16, dtype=layer.weight.dtype)
    if case == "int8 layer":
        layer = torch.ao.quantization.quantize_dynamic(nn.Sequential(layer), {nn.Linear}, dtype=torch.qint8)[0]
    if case == "autograd":
        logits, rows = onednn_rows(lambda: output_logits(layer, features))
        assert logits.requires_grad
    elif case == "oneDNN disabled":
        with torch.no_grad(), onednn_disabled():
            logits, rows = onednn_rows(lambda: output_logits(layer, features))
    else:
        with torch.no_grad():
            logits, rows = onednn_rows(lambda: output_logits(layer, features))
    assert rows == []
    assert torch.equal(logits, layer(features))


def test_the_reordered_weight_follows_the_weight_and_goes_with_it():
    layer, features = output_layer(), torch.randn(6, 16)
    with torch.no_grad():
        first = output_logits(layer, features)
        layer.weight.add_(1.0)  # as an optimizer step does: in place, a new version
        torch.testing.assert_close(output_logits(layer, features), layer(features), atol=1e-5, rtol=1e-5)
        layer.load_state_dict(output_layer().state_dict())
        torch.testing.assert_close(output_logits(layer, features), first, atol=0, rtol=0)
    key = id(layer.weight)
    assert key in onednn_products._reordered
    del layer
    gc.collect()
    assert key not in onednn_products._reordered


@pytest.mark.parametrize("num_rows", [1, 64, 65, 700])
def test_the_fused_loss_on_onednn_equals_cross_entropy_on_row_counts_of_64s(num_rows):
    """Rows padded to a multiple of 64: oneDNN compiles one product per shape and keeps it, so every chunk's row
    count is one of chunk / 64 counts."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(num_rows, 16, generator=generator, requires_grad=True)
    weight = torch.randn(300, 16, generator=generator, requires_grad=True)
    bias = torch.randn(300, generator=generator, requires_grad=True)
    labels = torch.randint(0, 300, (num_rows,), generator=generator)
    loss, rows = onednn_rows(lambda: linear_cross_entropy(features, weight, bias, labels, chunk_size=512))
    loss.backward()
    fused_grads = [t.grad.clone() for t in (features, weight, bias)]
    assert rows and all(count % 64 == 0 and count <= 512 for count in rows), rows
    for t in (features, weight, bias):
        t.grad = None
    plain = nn.functional.cross_entropy(nn.functional.linear(features, weight, bias), labels, reduction="sum")
    plain.backward()
    torch.testing.assert_close(loss, plain)
    for fused_grad, t in zip(fused_grads, (features, weight, bias)):
        torch.testing.assert_close(fused_grad, t.grad)


def test_the_fused_loss_off_onednn_takes_no_padding(monkeypatch):
    monkeypatch.setattr(fused_loss, "onednn_runs", lambda *tensors: False)
    features, weight = torch.randn(65, 16), torch.randn(300, 16)
    labels = torch.randint(0, 300, (65,))
    loss, rows = onednn_rows(lambda: linear_cross_entropy(features, weight, None, labels, chunk_size=512))
    assert rows == []
    torch.testing.assert_close(loss, nn.functional.cross_entropy(features @ weight.t(), labels, reduction="sum"))


@pytest.mark.parametrize("variant", ["bigru-bahdanau", "lstm-luong-general"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_decoding_on_onednn_gives_the_tokens_of_the_default_products(variant, num_beams, monkeypatch):
    model = tiny_model(variant).eval()
    input_ids, attention_mask = source_batch()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams, max_new_tokens=8)
    fast, rows = onednn_rows(lambda: model.generate(**kwargs))
    assert rows, "oneDNN did not run"
    monkeypatch.setattr(onednn_products, "onednn_runs", lambda *tensors: False)
    plain, rows = onednn_rows(lambda: model.generate(**kwargs))
    assert rows == []
    assert torch.equal(fast, plain)
