"""What an ONNX export folder or a saved model folder holds besides the graphs or weights, read as transformers would
read it, without transformers: the model's config, its generation settings and its tokenizer (`tokenizer.json`, run
by the `tokenizers` library that transformers' fast tokenizers wrap)."""

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from tokenizers import Tokenizer

# The config fields the graphs and layers depend on, with their defaults: `RNNAttnConfig`'s arguments but the
# training-only dropout, init_range and use_cache (tests/test_onnx.py checks them against it; this package cannot
# import it).
ARCHITECTURE_DEFAULTS = {
    "vocab_size": 8000, "embedding_size": 256, "hidden_size": 512, "encoder_hidden_size": None, "rnn_cell": "gru",
    "encoder_layers": 1, "decoder_layers": 1, "bidirectional_encoder": True, "attention_score": "additive",
    "attention_hidden_size": None, "attention_type": "global", "local_window": 10, "input_feeding": True,
    "decoder_state_init": "backward", "decoder_bridge": "auto", "output_layer": "linear",
    "max_source_positions": None, "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1,
    "eos_token_id": 2, "decoder_start_token_id": 1, "is_encoder_decoder": True,
}
# generate()'s values for the settings a generation config leaves unset (transformers'
# `GenerationConfig._get_default_generation_params`; tests/test_onnx.py checks them against it).
GENERATION_DEFAULTS = {"num_beams": 1, "num_return_sequences": 1, "max_length": 20, "length_penalty": 1.0,
                       "early_stopping": False}
# What `GenerationConfig.from_model_config` takes from a config when the folder has no generation_config.json.
MODEL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# Generation config fields that leave generate()'s tokens as the search computes them: any value of the first, the
# value given of the second. Any other field (sampling, a repetition penalty, a minimum length, ...) would make the
# search's translations differ from generate()'s, so a folder whose generation config sets one is refused.
OUTPUT_ONLY_FIELDS = {"_from_model_config", "transformers_version", "output_attentions", "output_hidden_states",
                      "output_scores", "output_logits", "return_dict_in_generate", "use_cache"}
NEUTRAL_VALUES = {"do_sample": False, "num_beam_groups": 1, "temperature": 1.0, "top_p": 1.0, "top_k": 50,
                  "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0}


def read_config(folder, defaults):
    """config.json as attributes; a field it lacks reads as its `defaults` entry (as `RNNAttnConfig` would)."""
    return SimpleNamespace(**{**defaults, **json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))})


@dataclass
class GenerationSettings:
    """The generation config fields the search reads, with generate()'s values for unset ones. `from_folder`
    raises `ValueError` for a generation config that sets a field the search does not apply.

    `sets_length`: whether the folder's generation config chose a length limit (else translation stops after
    the pipeline's default number of new tokens)."""

    num_beams: int
    num_return_sequences: int
    max_length: int
    max_new_tokens: int | None
    length_penalty: float
    early_stopping: bool | str
    eos_token_id: int | list | None
    sets_length: bool = False

    @classmethod
    def from_folder(cls, folder, config):
        path = Path(folder) / "generation_config.json"
        if path.is_file():
            chosen = {key: value for key, value in json.loads(path.read_text(encoding="utf-8")).items()
                      if value is not None}
            searched = {*cls.__dataclass_fields__, *MODEL_TOKEN_FIELDS, *OUTPUT_ONLY_FIELDS}
            unsupported = sorted(key for key, value in chosen.items() if key not in searched
                                 and (key not in NEUTRAL_VALUES or value != NEUTRAL_VALUES[key]))
            if unsupported:
                raise ValueError(f"{path} sets {', '.join(unsupported)}, which this search does not apply: only "
                                 f"generate() gives this model's translations.")
        else:
            chosen = {key: getattr(config, key) for key in MODEL_TOKEN_FIELDS if getattr(config, key, None) is not None}
        settings = {**GENERATION_DEFAULTS, "max_new_tokens": None, "eos_token_id": None, **chosen}
        return cls(**{name: settings[name] for name in cls.__dataclass_fields__ if name != "sets_length"},
                   sets_length=not {"max_new_tokens", "max_length"}.isdisjoint(chosen))


class ExportedTokenizer:
    """The export's tokenizer.json, called as the transformers tokenizer saved with it: the same ids (special
    tokens included) and truncation, and `batch_decode(..., skip_special_tokens=True)`'s texts."""

    def __init__(self, folder):
        folder = Path(folder)
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_padding()  # a file saved after a padded call keeps its padding; transformers resets it
        settings_path = folder / "tokenizer_config.json"
        settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
        self.model_max_length = settings.get("model_max_length")

    def __call__(self, texts, truncation=None, max_length=None):
        """{"input_ids": one list of ids per text}. As transformers: `truncation=True` cuts at `max_length`, else
        at the tokenizer's `model_max_length`; a `max_length` alone also truncates."""
        limit = None
        if truncation:
            limit = max_length if max_length is not None else self.model_max_length
        elif truncation is None:
            limit = max_length
        if limit is None:
            self._tokenizer.no_truncation()
        else:
            self._tokenizer.enable_truncation(int(limit))
        return {"input_ids": [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]}

    def batch_decode(self, sequences):
        """The text of each id sequence, special tokens left out."""
        return self._tokenizer.decode_batch([[int(token) for token in ids] for ids in sequences],
                                            skip_special_tokens=True)
