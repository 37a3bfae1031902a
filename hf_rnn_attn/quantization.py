"""int8 dynamic quantisation of a PyTorch model: int8 weights, activations quantised on the fly at each call.

For the ONNX graphs, `hf_rnn_attn.onnx_export.export_onnx(..., int8=True)` does the same with onnxruntime.
"""

import copy
import warnings

import torch
from torch import nn

from .attention import AdditiveScore


def quantize_int8(model):
    """A copy of `model` for CPU inference whose Linear and LSTM layers run in int8
    (`torch.ao.quantization.quantize_dynamic`); the model itself is unchanged.

    Two kinds of layer stay in float32, because the model reads them in ways torch.ao's quantised modules do not
    support: GRUs (`run_rnn` tells a GRU's bare state from an LSTM's tuple by `isinstance(rnn, nn.GRU)`, which the
    quantised GRU is not) and the additive score's `v` (the score reads `v.weight` as a tensor). Embeddings stay
    float32 too (dynamic quantisation has no int8 lookup).
    """
    keep_float = {id(module.v) for module in model.modules() if isinstance(module, AdditiveScore)}
    spec = {name: torch.ao.quantization.default_dynamic_qconfig for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.LSTM)) and id(module) not in keep_float}
    with warnings.catch_warnings():
        # torch.ao.quantization says it is deprecated in favour of torchao, but is what torch 2.13 ships.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).float().cpu().eval(), spec,
                                                      dtype=torch.qint8, inplace=True)
