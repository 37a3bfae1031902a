"""Under bf16 autocast a training step takes the fast paths (`mixed_precision.py`): the fused loss with bf16
products, the GRU encoder and the fused decoder in float32; its loss and gradients stay those of autocast's plain
path within bf16 rounding. These run on any CPU: bf16 products without AVX512-BF16 or AMX are slower, not different.
"""

import pytest
import torch
import torch.nn.functional as F

from hf_rnn_attn import modeling_rnn_attn, recurrent_layers
from hf_rnn_attn.linear_cross_entropy import linear_cross_entropy
from hf_rnn_attn.mixed_precision import fused_loss_matmul_dtype
from tiny_models import source_batch, tiny_model

BF16_RELATIVE_ERROR = 2 ** -8  # bf16 keeps 8 significant bits


def relative_error(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.mark.parametrize("features_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_size", [None, 64])  # 250 labelled rows: one chunk or four, the last padded
def test_linear_cross_entropy_with_bf16_products_matches_autocast_cross_entropy(features_dtype, label_smoothing,
                                                                                chunk_size):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 100, 32, generator=generator).to(features_dtype).requires_grad_()
    weight = (0.3 * torch.randn(500, 32, generator=generator)).requires_grad_()
    bias = torch.randn(500, generator=generator, requires_grad=True)
    labels = torch.randint(0, 500, (3, 100), generator=generator)
    labels[0, 50:] = -100
    leaves = (features, weight, bias)

    def loss_and_gradients(path):
        for leaf in leaves:
            leaf.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=path != "float32"):
            if path == "plain":  # autocast's plain path: bf16 logits, float32 cross-entropy
                logits = F.linear(features, weight, bias)
                assert logits.dtype == torch.bfloat16
                loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum",
                                       label_smoothing=label_smoothing)
            else:
                loss = linear_cross_entropy(features, weight, bias, labels, chunk_size, label_smoothing,
                                            matmul_dtype=torch.bfloat16 if path == "fused" else None)
        loss.backward()
        return loss, [leaf.grad for leaf in leaves]

    fused, fused_grads = loss_and_gradients("fused")
    plain, plain_grads = loss_and_gradients("plain")
    _, float32_grads = loss_and_gradients("float32")
    assert fused.dtype == torch.float32
    assert abs(fused.item() - plain.item()) / plain.item() < BF16_RELATIVE_ERROR
    for name, fused_grad, plain_grad, leaf in zip(("features", "weight", "bias"), fused_grads, plain_grads, leaves):
        assert fused_grad.dtype == leaf.dtype, name
        assert relative_error(fused_grad, plain_grad) < 2 * BF16_RELATIVE_ERROR, name
    # the products really ran in bf16: the weight's gradient is not float32's
    assert relative_error(fused_grads[1], float32_grads[1]) > BF16_RELATIVE_ERROR / 100


def test_fp16_autocast_keeps_the_plain_loss():
    """The fused loss computes its gradients before GradScaler scales the loss: in fp16 they would underflow."""
    features = torch.zeros(1, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        assert fused_loss_matmul_dtype(features) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_loss_matmul_dtype(features) == torch.bfloat16
    assert fused_loss_matmul_dtype(features) == torch.float32
    assert fused_loss_matmul_dtype(features.double()) is None


def spy(monkeypatch, module, name, calls):
    """Records the dtypes of the floating-point tensors passed to `module.<name>` on each call."""
    original = getattr(module, name)

    def recorded(*args, **kwargs):
        calls.append((name, [a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()],
                      kwargs.get("matmul_dtype")))
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, recorded)


@pytest.mark.parametrize("variant, fast_recurrent_paths", [("bigru-bahdanau", ["run_gru_padded", "unroll_gru_attention"]),
                                                           ("lstm-luong-general", [])])
def test_bf16_autocast_training_takes_the_fast_paths_with_the_plain_paths_results(variant, fast_recurrent_paths,
                                                                                  monkeypatch):
    model = tiny_model(variant, dropout=0.0).train()
    input_ids, attention_mask = source_batch()
    labels = torch.randint(3, 20, (3, 6), generator=torch.Generator().manual_seed(2))
    labels[1, 4:] = -100

    def loss_and_gradients(**options):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **options).loss
        loss.backward()
        return loss, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    calls = []
    for module, name in ((recurrent_layers, "run_gru_padded"), (recurrent_layers, "unroll_gru_attention"),
                         (modeling_rnn_attn, "linear_cross_entropy")):
        spy(monkeypatch, module, name, calls)
    fused, fused_grads = loss_and_gradients()
    assert [name for name, _, _ in calls] == [*fast_recurrent_paths, "linear_cross_entropy"]
    for name, dtypes, _ in calls[:-1]:  # the recurrent fast paths ran in float32
        assert set(dtypes) == {torch.float32}, name
    assert calls[-1][2] == torch.bfloat16  # the loss's products in bf16
    calls.clear()
    plain, plain_grads = loss_and_gradients(skip_logits=False)
    assert "linear_cross_entropy" not in [name for name, _, _ in calls]
    assert abs(fused.item() - plain.item()) / plain.item() < BF16_RELATIVE_ERROR
    assert relative_error(fused_grads, plain_grads) < 4 * BF16_RELATIVE_ERROR


def test_bf16_autocast_runs_the_gru_encoders_fast_path_in_float32():
    model = tiny_model("bigru-bahdanau", dropout=0.0).train()
    input_ids, attention_mask = source_batch()
    float32 = model.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    assert torch.equal(autocast, float32)
