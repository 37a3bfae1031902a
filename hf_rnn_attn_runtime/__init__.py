"""hf_rnn_attn_runtime: translation with the ONNX graphs of `hf-rnn-attn export`, on numpy, onnxruntime and tokenizers.

It imports neither torch nor transformers (importing `hf_rnn_attn` loads both, about 3 s on a 2-core machine), so
`hf-rnn-attn translate --backend onnx` starts in a fraction of a second. The export itself needs the PyTorch model
(`hf_rnn_attn.onnx_export`).
"""

from .onnx import ONNXGeneration, ONNXTranslator

__all__ = ["ONNXGeneration", "ONNXTranslator"]
