"""The sizes and choices that follow from a model's config fields, in one place for `RNNAttnConfig` and for the
config that `hf_rnn_attn_runtime.torch_backend` reads from config.json without transformers."""


class ArchitectureProperties:
    """Mixed into a class that has `RNNAttnConfig`'s fields (documented there)."""

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
