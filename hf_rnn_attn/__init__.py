"""hf_rnn_attn: RNN encoder-decoder models with attention as Hugging Face seq2seq models.

Importing the package registers the config and models with the Auto classes, and marks them for remote
code so that `save_pretrained` writes `auto_map` and copies the model code next to the weights.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_rnn_attn import PRESETS, RNNAttnConfig
from .modeling_rnn_attn import RNNAttnForConditionalGeneration, RNNAttnModel, RNNAttnPreTrainedModel

AutoConfig.register(RNNAttnConfig.model_type, RNNAttnConfig, exist_ok=True)
AutoModel.register(RNNAttnConfig, RNNAttnModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(RNNAttnConfig, RNNAttnForConditionalGeneration, exist_ok=True)
RNNAttnConfig.register_for_auto_class()
RNNAttnModel.register_for_auto_class("AutoModel")
RNNAttnForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

__all__ = ["PRESETS", "RNNAttnConfig", "RNNAttnModel", "RNNAttnForConditionalGeneration", "RNNAttnPreTrainedModel",
           "plot_attention"]


def __getattr__(name):
    """`hf_rnn_attn.plot_attention` imports matplotlib on first use, not with the package."""
    if name == "plot_attention":
        from .plotting import plot_attention
        return plot_attention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
__version__ = "0.1.0"
