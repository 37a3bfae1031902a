"""hf_rnn_attn_runtime: translation without transformers, for `hf-rnn-attn translate` and for serving.

- `ONNXTranslator`: the ONNX graphs of `hf-rnn-attn export`, on numpy, onnxruntime and tokenizers; it imports
  neither torch nor transformers (importing `hf_rnn_attn` loads both, about 3 s on a 2-core machine), so
  `hf-rnn-attn translate --backend onnx` starts in a fraction of a second. The export itself needs the PyTorch
  model (`hf_rnn_attn.onnx_export`).
- `TorchTranslator`: a saved model folder on PyTorch's layers, without transformers' 3 s of imports.

Both run the same greedy and beam search (`search.StepwiseTranslator`), which returns generate()'s tokens.
"""

__all__ = ["Generation", "ONNXTranslator", "TorchTranslator"]
MODULES = {"Generation": "search", "ONNXTranslator": "onnx", "TorchTranslator": "torch_backend"}


def __getattr__(name):
    """Each translator imports its engine (onnxruntime, the `onnx` extra; or torch) on first use, not with the
    package: the `hf-rnn-attn` command, whose every subcommand starts in `command_line` here, must run without it."""
    if name in MODULES:
        from importlib import import_module

        return getattr(import_module(f".{MODULES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
