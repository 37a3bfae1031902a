"""`hf_rnn_attn.onnx` is `hf_rnn_attn_runtime.onnx`: the ONNX translator lives in the torch-free package, so that a
process running the graphs need not import torch or transformers; this name keeps working."""

from hf_rnn_attn_runtime.onnx import (ARCHITECTURE_DEFAULTS, EXPORT_FORMAT, GRAPH_FILES, MEMORY_NAMES, ONNXTranslator,
                                      architecture)
from hf_rnn_attn_runtime.search import Generation

__all__ = ["ARCHITECTURE_DEFAULTS", "EXPORT_FORMAT", "GRAPH_FILES", "MEMORY_NAMES", "Generation", "ONNXTranslator",
           "architecture"]
