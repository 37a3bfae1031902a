"""hf_rnn_attn_runtime: translation with the ONNX graphs of `hf-rnn-attn export`, on numpy, onnxruntime and tokenizers.

It imports neither torch nor transformers (importing `hf_rnn_attn` loads both, about 3 s on a 2-core machine), so
`hf-rnn-attn translate --backend onnx` starts in a fraction of a second. The export itself needs the PyTorch model
(`hf_rnn_attn.onnx_export`).
"""

__all__ = ["ONNXGeneration", "ONNXTranslator"]


def __getattr__(name):
    """The translator imports onnxruntime (the `onnx` extra) on first use, not with the package: the `hf-rnn-attn`
    command, whose every subcommand starts in `command_line` here, must run without it."""
    if name in __all__:
        from . import onnx

        return getattr(onnx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
