"""Configuration of the RNN encoder-decoder with attention.

The two seed architectures are two points in one space of orthogonal choices (cell, layers, direction,
score, global or local attention, input feeding, decoder-state initialisation, output layer);
`RNNAttnConfig.from_preset` names them.
"""

import difflib
import inspect
from dataclasses import fields

from transformers import GenerationConfig, PretrainedConfig

from .architecture import ArchitectureProperties

PRESETS = {
    # Bahdanau et al. 2015: BiGRU encoder, GRU decoder fed [emb(y_{t-1}); c_{t-1}], additive score,
    # decoder started from the backward GRU's state at source position 1, logits = W_o [h_t; c_t] + b_o.
    "bigru-bahdanau": dict(rnn_cell="gru", encoder_layers=1, decoder_layers=1, bidirectional_encoder=True,
                           attention_score="additive", attention_type="global", input_feeding=True,
                           decoder_state_init="backward", output_layer="linear"),
    # Luong et al. 2015 (global attention): 2-layer LSTMs, decoder started from the encoder's final (h, c),
    # attention after the RNN, o_t = [h_t; c_t] through tanh(W_c o_t) before the softmax.
    "lstm-luong": dict(rnn_cell="lstm", encoder_layers=2, decoder_layers=2, bidirectional_encoder=False,
                       attention_score="general", attention_type="global", input_feeding=False,
                       decoder_state_init="final", output_layer="tanh"),
}


# Keys `**kwargs` may carry besides this config's own arguments: what `PretrainedConfig` stores or consumes, generation
# defaults it drops, what `save_pretrained` and `save_for_hub` write into config.json, and our language codes.
# Anything else is a typo (`attention_scroe="dot"` would silently build an additive model) and is refused.
_KNOWN_EXTRA_KEYS = frozenset({
    *(field.name for field in fields(PretrainedConfig)),
    *(name for name, value in inspect.getmembers(PretrainedConfig) if isinstance(value, property) and value.fset),
    *GenerationConfig().__dict__,
    "torch_dtype", "name_or_path", "_name_or_path", "_commit_hash", "attn_implementation", "experts_implementation",
    "_attn_implementation_internal", "_experts_implementation_internal",
    "model_type", "auto_map", "custom_pipelines", "src_lang", "tgt_lang",
})


def _check_known_keys(cls, kwargs):
    known = set(inspect.signature(cls.__init__).parameters) | _KNOWN_EXTRA_KEYS | set(cls.attribute_map)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        own = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "kwargs")]
        hints = [f"{name!r} (did you mean {match[0]!r}?)" if (match := difflib.get_close_matches(name, own, n=1))
                 else repr(name) for name in unknown]
        raise ValueError(f"Unknown {cls.__name__} argument(s): {', '.join(hints)}. Valid arguments: {own}.")


class RNNAttnConfig(ArchitectureProperties, PretrainedConfig):
    r"""Configuration for [`RNNAttnModel`] and [`RNNAttnForConditionalGeneration`].

    Args:
        vocab_size (`int`, defaults to 8000): size of the joint source/target vocabulary.
        embedding_size (`int`, defaults to 256): token embedding size E (encoder and decoder).
        hidden_size (`int`, defaults to 512): decoder hidden size H.
        encoder_hidden_size (`int`, *optional*): hidden size of each encoder direction; defaults to
            `hidden_size`. The encoder output size is K = encoder_hidden_size x (2 if bidirectional else 1).
        rnn_cell (`str`, defaults to `"gru"`): `"gru"` or `"lstm"`, for encoder and decoder.
        encoder_layers (`int`, defaults to 1): stacked encoder layers.
        decoder_layers (`int`, defaults to 1): stacked decoder layers.
        bidirectional_encoder (`bool`, defaults to `True`): run the encoder in both directions,
            `h_i = [fwd_i ; bwd_i]`.
        attention_score (`str`, defaults to `"additive"`): `"additive"` `v^T tanh(W1 h_t + W2 h_i)`,
            `"dot"` `h_t . h_i` (needs H == K), `"general"` `h_t^T W h_i`, or `"location"` `W h_t`
            (one score per source position up to `max_source_positions`; never looks at `h_i`).
        attention_hidden_size (`int`, *optional*): size of the additive score's hidden layer; defaults to
            `hidden_size`.
        attention_type (`str`, defaults to `"global"`): which source positions step t attends to (Luong et al. 2015,
            section 3.2; steps and positions count from 1), with any score. `"global"`: all of them. `"local-m"`:
            the window `[p_t - D, p_t + D]` around `p_t = t` (or the last real source position, once t is past
            it). `"local-p"`: the window around a predicted `p_t = S * sigmoid(v_p^T tanh(W_p h_t))` (S the real
            source length), the weights multiplied by `exp(-(s - p_t)^2 / (2 sigma^2))`, `sigma = D / 2`, and
            renormalised (the paper does not renormalise; see the README). Both windows are clipped to the real
            source, and the weights sum to 1 over the window.
        local_window (`int`, defaults to 10): D, the half-width of the local window (Luong et al. use 10);
            ignored by global attention.
        input_feeding (`bool`, defaults to `True`): feed the previous context `c_{t-1}` into the decoder
            RNN input, `[emb(y_{t-1}) ; c_{t-1}]`. `c_0` is a zero vector. Without it the decoder RNN does
            not depend on attention, and training runs the whole target through the RNN in one call.
        decoder_state_init (`str`, defaults to `"backward"`): how the decoder state starts. `"backward"`:
            every decoder layer starts from the top encoder layer's backward final state (the one at source
            position 1; needs a bidirectional encoder). `"final"`: decoder layer l starts from encoder layer
            l's final state, both directions concatenated (needs `encoder_layers == decoder_layers`).
            `"zeros"`: zero state.
        decoder_bridge (`str`, defaults to `"auto"`): `"linear"` maps the start state through
            `tanh(W_s s)`; `"none"` uses it as is (sizes must match); `"auto"` bridges only when sizes differ.
        output_layer (`str`, defaults to `"linear"`): `"linear"`: logits `W_o o_t + b_o` with
            `o_t = [h_t ; c_t]` (Bahdanau); `"tanh"`: `o_t` first goes through the feed-forward layer
            `tanh(W_c o_t)` of size H, Luong's attentional hidden state.
        dropout (`float`, defaults to 0.2): dropout on embeddings, between RNN layers and before the output.
        max_source_positions (`int`, *optional*): longest source the location score handles; required
            for `attention_score="location"`.
        init_range (`float`, defaults to 0.1): parameters start uniform in `[-init_range, init_range]`.
        tie_word_embeddings (`bool`, defaults to `False`): share the decoder embedding with the output
            projection (needs the output layer's input size to equal `embedding_size`).
        use_cache (`bool`, defaults to `True`): whether `forward` returns the decoder state as `past_key_values`
            (what generate() feeds back to decode one token per step), when the call does not say.
        kwargs: what `PretrainedConfig` takes (token ids, `dtype`, ...) and `src_lang` / `tgt_lang`, the language
            codes of the direction the model translates. Any other key, such as a misspelt field, raises
            `ValueError` rather than being stored and ignored.
    """

    model_type = "rnn_attn"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_hidden_layers": "decoder_layers"}

    def __init__(
        self,
        vocab_size=8000,
        embedding_size=256,
        hidden_size=512,
        encoder_hidden_size=None,
        rnn_cell="gru",
        encoder_layers=1,
        decoder_layers=1,
        bidirectional_encoder=True,
        attention_score="additive",
        attention_hidden_size=None,
        attention_type="global",
        local_window=10,
        input_feeding=True,
        decoder_state_init="backward",
        decoder_bridge="auto",
        output_layer="linear",
        dropout=0.2,
        max_source_positions=None,
        init_range=0.1,
        tie_word_embeddings=False,
        use_cache=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        is_encoder_decoder=True,
        **kwargs,
    ):
        _check_known_keys(type(self), kwargs)
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.encoder_hidden_size = encoder_hidden_size
        self.rnn_cell = rnn_cell
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.bidirectional_encoder = bidirectional_encoder
        self.attention_score = attention_score
        self.attention_hidden_size = attention_hidden_size
        self.attention_type = attention_type
        self.local_window = local_window
        self.input_feeding = input_feeding
        self.decoder_state_init = decoder_state_init
        self.decoder_bridge = decoder_bridge
        self.output_layer = output_layer
        self.dropout = dropout
        self.max_source_positions = max_source_positions
        self.init_range = init_range
        self.use_cache = use_cache
        self.fill_size_defaults()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            is_encoder_decoder=is_encoder_decoder,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_architecture()

    @classmethod
    def from_preset(cls, name, **overrides):
        """Builds one of the named architectures (`PRESETS`), with explicit field overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; valid presets: {list(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})
