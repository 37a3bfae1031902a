"""What a model's config fields may be and what follows from them: the valid choices, the checks of a config and
the derived sizes, in one place for `RNNAttnConfig` and for the config that `hf_rnn_attn_runtime.torch_backend`
reads from config.json without transformers."""

import math

RNN_CELLS = ("gru", "lstm")
ATTENTION_SCORES = ("additive", "dot", "general", "location")
ATTENTION_TYPES = ("global", "local-m", "local-p")
DECODER_STATE_INITS = ("backward", "final", "zeros")
DECODER_BRIDGES = ("auto", "linear", "none")
OUTPUT_LAYERS = ("linear", "tanh")


def _check_choice(name, value, valid):
    if value not in valid:
        raise ValueError(f"`{name}` must be one of {list(valid)}, got {value!r}.")


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_bool(name, value):
    # A string such as "false" is truthy: it would silently switch the option on.
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def _check_number(name, value, low, high=None):
    """`value` must be a real number in [low, high) (or `> low` when `high` is None)."""
    in_range = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and (low <= value < high if high is not None else value > low))
    if not in_range:
        expected = f"in [{low}, {high})" if high is not None else f"a number above {low}"
        raise ValueError(f"`{name}` must be {expected}, got {value!r}.")




class ArchitectureProperties:
    """Derived sizes and the checks, mixed into a class that has `RNNAttnConfig`'s fields (documented there)."""

    def fill_size_defaults(self):
        """`encoder_hidden_size` and `attention_hidden_size` left None are `hidden_size`."""
        for name in ("encoder_hidden_size", "attention_hidden_size"):
            if getattr(self, name) is None:
                setattr(self, name, self.hidden_size)

    @property
    def encoder_output_size(self):
        """K: size of one encoder state h_i."""
        return self.encoder_hidden_size * (2 if self.bidirectional_encoder else 1)

    @property
    def encoder_state_size(self):
        """Size of the encoder final state that `decoder_state_init` hands to one decoder layer."""
        if self.decoder_state_init == "final":
            return self.encoder_output_size
        return self.encoder_hidden_size

    @property
    def uses_bridge(self):
        if self.decoder_state_init == "zeros":
            return False
        if self.decoder_bridge == "auto":
            return self.encoder_state_size != self.hidden_size
        return self.decoder_bridge == "linear"

    @property
    def output_layer_input_size(self):
        """Input size of the final projection to the vocabulary."""
        if self.output_layer == "tanh":
            return self.hidden_size
        return self.hidden_size + self.encoder_output_size

    def validate_architecture(self):
        """Rejects impossible combinations with a message naming the valid values."""
        _check_choice("rnn_cell", self.rnn_cell, RNN_CELLS)
        _check_choice("attention_score", self.attention_score, ATTENTION_SCORES)
        _check_choice("attention_type", self.attention_type, ATTENTION_TYPES)
        _check_choice("decoder_state_init", self.decoder_state_init, DECODER_STATE_INITS)
        _check_choice("decoder_bridge", self.decoder_bridge, DECODER_BRIDGES)
        _check_choice("output_layer", self.output_layer, OUTPUT_LAYERS)
        for name in ("vocab_size", "embedding_size", "hidden_size", "encoder_hidden_size", "encoder_layers",
                     "decoder_layers", "attention_hidden_size", "local_window"):
            _check_positive(name, getattr(self, name))
        for name in ("bidirectional_encoder", "input_feeding", "tie_word_embeddings", "use_cache"):
            _check_bool(name, getattr(self, name))
        _check_number("dropout", self.dropout, 0, 1)
        _check_number("init_range", self.init_range, 0)
        if self.max_source_positions is not None:
            _check_positive("max_source_positions", self.max_source_positions)
        if self.attention_score == "dot" and self.hidden_size != self.encoder_output_size:
            raise ValueError(
                f"attention_score='dot' needs hidden_size == encoder output size, got hidden_size="
                f"{self.hidden_size} and encoder output size {self.encoder_output_size} (encoder_hidden_size="
                f"{self.encoder_hidden_size}, bidirectional_encoder={self.bidirectional_encoder}); use 'general' "
                f"or 'additive', or change the sizes."
            )
        if self.attention_score == "location" and self.max_source_positions is None:
            raise ValueError("attention_score='location' needs `max_source_positions` (an int), got None.")
        if self.decoder_state_init == "backward" and not self.bidirectional_encoder:
            raise ValueError(
                "decoder_state_init='backward' needs bidirectional_encoder=True; use 'final' or 'zeros'."
            )
        if self.decoder_state_init == "final" and self.encoder_layers != self.decoder_layers:
            raise ValueError(
                f"decoder_state_init='final' needs encoder_layers == decoder_layers, got {self.encoder_layers} "
                f"and {self.decoder_layers}; use 'backward' or 'zeros'."
            )
        if self.decoder_bridge == "none" and self.decoder_state_init != "zeros" \
                and self.encoder_state_size != self.hidden_size:
            raise ValueError(
                f"decoder_bridge='none' needs the encoder state size ({self.encoder_state_size}) to equal "
                f"hidden_size ({self.hidden_size}); use decoder_bridge='linear' or 'auto'."
            )
        if self.tie_word_embeddings and self.output_layer_input_size != self.embedding_size:
            raise ValueError(
                f"tie_word_embeddings=True needs the output layer input size ({self.output_layer_input_size}: "
                f"hidden_size for output_layer='tanh', else hidden_size + encoder output size) to equal embedding_size "
                f"({self.embedding_size})."
            )
