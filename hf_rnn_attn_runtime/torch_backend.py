"""Translation with a saved model's PyTorch layers, without transformers: what `hf-rnn-attn translate` runs for a
saved model on the CPU unless an option needs the full model class (attention, ensembles, int8, a length cap, a
coverage penalty, a GPU).

    from hf_rnn_attn_runtime import TorchTranslator
    translator = TorchTranslator("runs/bigru-bahdanau/model")
    translator.translate(["En el principio creó Dios los cielos y la tierra."], num_beams=5)

transformers' imports take about 3 s more than torch's before the first sentence, a third of a greedy
translation of 1,000 verses (`model_code`). The layers need only torch: they are built from config.json, loaded
from model.safetensors and run by the search of the ONNX backend (`search.StepwiseTranslator`, generate()'s
tokens), whose encoder is `RecurrentEncoder.encode` plus the decoder's first state, and whose step is one decoder
step, `output_logits` and the log-softmax: what `lean_decoding` runs inside generate(), so the tokens are the
PyTorch model's.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file
from torch import nn

from .export_folder import ARCHITECTURE_DEFAULTS, ExportedTokenizer, GenerationSettings
from .model_code import import_model_code
from .search import StepwiseTranslator, shares_sources

architecture = import_model_code("architecture")
onednn_products = import_model_code("onednn_products")
recurrent_layers = import_model_code("recurrent_layers")
torch_threads = import_model_code("torch_threads")

WEIGHTS_FILE = "model.safetensors"
# `RNNAttnConfig`'s defaults for the training-only fields that `ARCHITECTURE_DEFAULTS` leaves out (its checks read them).
TRAINING_DEFAULTS = {"dropout": 0.2, "init_range": 0.1, "use_cache": True}
TIED_OUTPUT_WEIGHT = "lm_head.weight"  # saved once, as model.decoder.embed_tokens.weight, when tied


class SavedConfig(SimpleNamespace, architecture.ArchitectureProperties):
    """config.json's fields, with `RNNAttnConfig`'s defaults for those it leaves out, its checks and its derived
    sizes."""

    @classmethod
    def from_folder(cls, folder):
        saved = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        if saved.get("model_type") != "rnn_attn":
            raise ValueError(f"{folder} holds a {saved.get('model_type')!r} model, not an hf_rnn_attn (rnn_attn) one.")
        config = cls(**{**ARCHITECTURE_DEFAULTS, **TRAINING_DEFAULTS, **saved})
        config.fill_size_defaults()
        config.validate_architecture()
        return config


class SavedModel(nn.Module):
    """The layers of `RNNAttnForConditionalGeneration` under the same names, so that its weights load as saved."""

    def __init__(self, config):
        super().__init__()
        self.model = nn.Module()
        self.model.encoder = recurrent_layers.RecurrentEncoder(config)
        self.model.decoder = recurrent_layers.RNNAttnDecoder(config)
        self.lm_head = nn.Linear(config.output_layer_input_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.decoder.embed_tokens.weight


class TorchTranslator(StepwiseTranslator):
    """Greedy and beam-search translation with a saved model's layers on the CPU, in float32.

    Args:
        folder: written by `save_pretrained`: config.json, model.safetensors (float32 weights), if any
            generation_config.json, and the tokenizer's tokenizer.json (without it, `generate` takes token ids).
        threads: how many searches run at once, each on one torch thread (default: torch's thread count);
            `generate` shares a call's sentences out among them, and `__call__` gives each `batch_size` sentences
            at a time, as the pipeline runs its searches side by side.

    Raises `FileNotFoundError` for a folder without those files, and `ValueError` for one that this class does
    not run: another model type, local-m attention (whose step index the search does not carry), weights in another
    dtype, weights that do not fit the config, or a generation config that sets what only generate() applies
    (sampling, a repetition penalty, ...). `hf-rnn-attn translate` then loads the full model class.
    """

    tokenizer_hint = "save the model's (fast) tokenizer with it (`tokenizer.save_pretrained(folder)`)"
    batch_per_search = True

    def __init__(self, folder, threads=None):
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"`threads` must be a positive integer or None, got {threads!r}.")
        folder = Path(folder)
        missing = [name for name in ("config.json", WEIGHTS_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} has no {', '.join(missing)}.")
        self.config = SavedConfig.from_folder(folder)
        if self.config.attention_type == "local-m":
            raise ValueError("attention_type='local-m' places its window by the target step, which this search does "
                             "not carry; load the model with transformers.")
        self.generation_config = GenerationSettings.from_folder(folder, self.config)
        self.tokenizer = ExportedTokenizer(folder) if (folder / "tokenizer.json").is_file() else None
        self.threads = threads or torch.get_num_threads()
        self.layers = SavedModel(self.config).eval()
        _load_weights(self.layers, folder / WEIGHTS_FILE)
        # The decoder state's tensors (`RNNAttnState`) besides the projected keys, which are memory.
        self.state_names = ["hidden", *(["cell"] if self.config.rnn_cell == "lstm" else []),
                            *(["context"] if self.config.input_feeding else [])]

    def _encode(self, input_ids, attention_mask):
        with torch.inference_mode():
            encoded = self.layers.model.encoder.encode(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
            state = self.layers.model.decoder.initial_state(encoded)
        return {"keys": encoded.last_hidden_state.numpy(), "attention_mask": attention_mask,
                **{name: tensor.numpy() for name, tensor in state.tensors().items()}}

    def _step(self, tokens, memory, state, top_k):
        keys = torch.from_numpy(memory["keys"])
        rows_per_source = len(tokens) // len(keys) if shares_sources(self.config) else 1
        decoder_state = recurrent_layers.RNNAttnState(
            hidden=torch.from_numpy(state["hidden"]), cell=_tensor(state.get("cell")),
            context=_tensor(state.get("context")), projected_keys=torch.from_numpy(memory["projected_keys"]))
        with torch.inference_mode():
            features, _, new_state = self.layers.model.decoder(
                torch.from_numpy(tokens)[:, None], decoder_state, keys, torch.from_numpy(memory["attention_mask"]),
                rows_per_source=rows_per_source)
            logits = onednn_products.output_logits(self.layers.lm_head, features[:, -1])  # R x V
            log_probs = logits.log_softmax(dim=-1)
            if top_k == 1:  # greedy search's token: the first largest logit, as `lean_decoding.greedy_search`
                top_tokens = logits.max(dim=-1, keepdim=True).indices
                top_log_probs = log_probs.gather(1, top_tokens)
            else:
                top_log_probs, top_tokens = log_probs.topk(top_k)
        return (top_log_probs.numpy(), top_tokens.numpy(),
                {name: getattr(new_state, name).numpy() for name in self.state_names})

    def _searches_side_by_side(self, count):
        """One torch thread each: most of a step's operations are too small for torch to split over threads."""
        return torch_threads.torch_threads(1)


def _tensor(array):
    return None if array is None else torch.from_numpy(array)


def _load_weights(model, path):
    """The saved weights into `model`; a tied output layer is saved once, under the embedding's name."""
    weights = load_file(str(path))
    expected = model.state_dict()
    tied = model.lm_head.weight is model.model.decoder.embed_tokens.weight
    missing = sorted(set(expected) - set(weights) - ({TIED_OUTPUT_WEIGHT} if tied else set()))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}'s weights do not fit config.json (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}).")
    for name, tensor in weights.items():
        if tensor.dtype != torch.float32 or tensor.shape != expected[name].shape:
            raise ValueError(f"{path}: {name} is {tensor.dtype} {tuple(tensor.shape)}, the model needs float32 "
                             f"{tuple(expected[name].shape)}.")
    model.load_state_dict(weights, strict=False)
