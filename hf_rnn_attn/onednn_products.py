"""The output layer's float32 products on the CPU through oneDNN rather than PyTorch's default, MKL's sgemm.

PyTorch's CPU build runs float32 `F.linear` and `torch.mm` on MKL, which on the 2-core AMD EPYC (Zen 4) stays well
below the CPU's peak at the output layer's shapes. oneDNN, which the same build carries
(`torch.ops.mkldnn._linear_pointwise`, the op torch.compile's CPU backend runs for a frozen linear layer), comes
close to it. Weight 8,000 x 512, GFLOP/s:

    rows (threads)          9 (1)   64 (1)   320 (1)   512 (2)
    MKL                        33       48        77       137
    oneDNN                     50       75        94       204
    oneDNN, reordered weight   89       94       104       209

Both add in float32 throughout; the results differ in the order of the additions only (about 1e-6 of a logit's
size). A 4096^3 product reaches 166-180 GFLOP/s on MKL and 202-212 on oneDNN on that machine (2026-12-07; rates on
it move by up to 20% between runs).

oneDNN compiles one product per shape and keeps it. With a weight in PyTorch's layout each also keeps its own
reordered copy of the weight (the loss's products at 512 row counts grew the process by 4.2 GB); with the weight
reordered once ahead (`_reorder_linear_weight`) they share it (320 row counts: 1.5 MB). So each use keeps to what
stays small:
- `output_logits`, inference: the weight reordered once per version of it and kept beside it (16 MB at
  8,000 x 512), for decoding's every row count;
- `onednn_linear`, training: the fused loss's chunks of logits, whose rows it pads to a multiple of 64 (a few
  shapes).
Everything else, and every product that autograd must see, takes torch's default.
"""

import sys
import weakref

import torch
from torch import nn

# The weights reordered for oneDNN, by id(weight): (a weak reference to it, its version, the reordered weight).
_reordered = {}


def onednn_runs(*tensors):
    """Whether oneDNN's product may take these tensors: dense float32 on the CPU, oneDNN in this build and enabled
    (`torch.backends.mkldnn.flags(enabled=False)` turns it off), and no tracer, compiler or exporter, which would
    record an op that they do not know."""
    return (all(tensor.device.type == "cpu" and tensor.dtype == torch.float32 and tensor.layout == torch.strided
                for tensor in tensors)
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and not ("torch.onnx" in sys.modules and torch.onnx.is_in_onnx_export()))


def output_logits(layer, features):
    """`layer(features)` for the output layer: with a float32 `nn.Linear` on the CPU and nothing for autograd to
    record, oneDNN's product with the layer's weight reordered once (`reordered_weight`); any other layer (int8,
    another device, training) as it is, and so is a weight made under `torch.inference_mode()`, which keeps no
    version to tell when it changes."""
    if (type(layer) is not nn.Linear or layer.weight.is_inference() or not onednn_runs(features, layer.weight)
            or torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                               for t in (features, layer.weight, layer.bias))):
        return layer(features)
    return onednn_linear(features, reordered_weight(layer.weight), layer.bias)


def reordered_weight(weight):
    """`weight` in oneDNN's blocked layout for its products, made once per version of the weight (an optimizer
    step or `load_state_dict` changes it in place, which makes a new version) and dropped with the weight."""
    key = id(weight)
    entry = _reordered.get(key)
    if entry is None or entry[0]() is not weight or entry[1] != weight._version:
        reordered = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 64)  # tuned for 64 rows, fits all
        entry = (weakref.ref(weight, lambda _, key=key: _reordered.pop(key, None)), weight._version, reordered)
        _reordered[key] = entry
    return entry[2]


def onednn_linear(input, weight, bias=None):
    """`input weight^T + bias` on oneDNN, a new tensor; `weight` as PyTorch lays it out or reordered. For callers
    that check `onednn_runs`, compute the gradients themselves and keep to a few shapes (the fused loss pads its
    rows to a multiple of 64)."""
    return torch.ops.mkldnn._linear_pointwise(input, weight, bias, "none", [], "")
