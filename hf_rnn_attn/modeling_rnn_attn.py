"""RNN encoder-decoder with attention, as a Hugging Face seq2seq model.

The layers (recurrent networks, encoder, decoder) are in `recurrent_layers.py`, which imports no transformers.
This module reads top to bottom: the model's input checks -> the encoder's output and calling conventions ->
pretrained base -> model -> model with the language-model head. The README's design notes list where each equation
of the two architectures is.

Shapes: B batch, S source length, T target length, E embedding size, H decoder hidden size,
K encoder output size (2 x encoder hidden size when bidirectional), L layers, V vocabulary size.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.utils import ModelOutput

from .configuration_rnn_attn import RNNAttnConfig
from .lean_decoding import LeanGenerationMixin
from .linear_cross_entropy import linear_cross_entropy
from .mixed_precision import fused_loss_matmul_dtype
from .onednn_products import output_logits
from .recurrent_layers import RecurrentEncoder, RNNAttnDecoder, check_embeddings, check_token_ids


# ---------------------------------------------------------------------------------------------- input checks

def check_batch_sizes(input_ids, encoder_outputs, **targets):
    """Targets (`labels`, `decoder_input_ids`) need one row per source: a loss over rows of another batch is
    meaningless, and a batch of 1 would broadcast silently."""
    source = input_ids if input_ids is not None else (encoder_outputs[0] if encoder_outputs is not None else None)
    if not isinstance(source, torch.Tensor) or source.dim() < 2:
        return  # no source, or not a batch: check_token_ids says what is wrong
    for name, target in targets.items():
        if isinstance(target, torch.Tensor) and target.dim() > 0 and target.size(0) != source.size(0):
            raise ValueError(f"`{name}` has {target.size(0)} rows but the batch has {source.size(0)} sources; "
                             f"pass one target row per source.")


def check_num_beams(num_beams):
    """generate() divides by the beam count: 0 fails with a ZeroDivisionError, a negative one deep in torch."""
    if num_beams is not None and (not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1):
        raise ValueError(f"`num_beams` must be a positive integer (1 for greedy decoding), got {num_beams!r}.")


def with_config_defaults(config, **arguments):
    """Each argument as passed, or the config's field of that name when it is None: transformers' convention for
    `output_attentions`, `output_hidden_states`, `return_dict` and `use_cache`."""
    return [getattr(config, name) if value is None else value for name, value in arguments.items()]


def shift_tokens_right(labels, pad_token_id, decoder_start_token_id):
    """Teacher forcing inputs: `<start> y_1 ... y_{T-1}`, with the loss's -100 turned into padding."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


# --------------------------------------------------------------------------------------------------- encoder

@dataclass
class RNNAttnEncoderOutput(ModelOutput):
    """Encoder outputs, all batch-first so that generate() expands them for beams.

    An RNN encoder has no attention, so unlike transformers' encoder outputs there is no `attentions` field.

    Attributes:
        last_hidden_state: B x S x K, the top layer's states `h_i` (zeros on padding).
        final_hidden_state: B x (L * directions) x He, each layer and direction's final hidden state, in
            `nn.GRU` order (layer 0 forward, layer 0 backward, layer 1 forward, ...).
        final_cell_state: same shape, for an LSTM encoder; else None.
        hidden_states: when `output_hidden_states`, the embeddings (B x S x E) then each layer's states
            (B x S x K, zeros on padding); the last is `last_hidden_state`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    final_hidden_state: torch.FloatTensor | None = None
    final_cell_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None

    @classmethod
    def from_tuple(cls, outputs):
        """The output back from `to_tuple()`, which drops None fields: a GRU encoder's tuple has no cell state, so
        the fields are told apart by type (the states are tensors, `hidden_states` a tuple), not by position."""
        tensors = [output for output in outputs if isinstance(output, torch.Tensor)]
        hidden_states = next((output for output in outputs if isinstance(output, (tuple, list))), None)
        return cls(**dict(zip(("last_hidden_state", "final_hidden_state", "final_cell_state"), tensors)),
                   hidden_states=hidden_states)


class RNNAttnEncoder(RecurrentEncoder):
    """`RecurrentEncoder` with transformers' calling conventions, returning an `RNNAttnEncoderOutput`."""

    main_input_name = "input_ids"

    def forward(self, input_ids=None, attention_mask=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, inputs_embeds=None, **kwargs):
        """`inputs_embeds` (B x S x E) replaces the embedding of `input_ids`. `output_hidden_states` and
        `return_dict` default to the config's; `output_attentions` is accepted for generate(): an RNN encoder has
        no attention."""
        output_hidden_states, return_dict = with_config_defaults(
            self.config, output_hidden_states=output_hidden_states, return_dict=return_dict)
        states = self.encode(input_ids, attention_mask, inputs_embeds, output_hidden_states)
        output = RNNAttnEncoderOutput(**vars(states))
        return output if return_dict else output.to_tuple()


# ---------------------------------------------------------------------------------------------------- models

class RNNAttnPreTrainedModel(PreTrainedModel):
    config_class = RNNAttnConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    # Assisted generation and other cache tricks need a croppable cache; a recurrent state is not one.
    _is_stateful = True

    def _init_weights(self, module):
        """Uniform in [-init_range, init_range], the classic recipe for RNN translation models."""
        for parameter in module.parameters(recurse=False):
            init.uniform_(parameter, -self.config.init_range, self.config.init_range)

    def _resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of=None, mean_resizing=True):
        """transformers resizes the input (encoder) embedding and the output layer; the decoder embeds target ids
        with a table of its own (the one a tied output layer shares), which must grow with them."""
        decoder = self.get_decoder()
        resized = self._get_resized_embeddings(decoder.embed_tokens, new_num_tokens, pad_to_multiple_of, mean_resizing)
        decoder.embed_tokens = resized.requires_grad_(decoder.embed_tokens.weight.requires_grad)
        return super()._resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Like `PreTrainedModel.from_pretrained`, but refuses a checkpoint whose weights do not fit the config.

        transformers would only warn and start such weights at random, silently losing the trained model. Two
        standard flows still start weights fresh, as listed in the load report and `output_loading_info`: a base
        model (`RNNAttnModel`) checkpoint under the language-model head (only `lm_head.*` missing), and an explicit
        `state_dict` that lacks some weights. A checkpoint weight that would go unused is always refused.
        """
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise ValueError(
                "The checkpoint's weights do not match its config: some tensor sizes differ (the load report "
                "above lists them). Check config.json against the weights."
            ) from error
        missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
        if kwargs.get("state_dict") is not None or all(key.startswith("lm_head.") for key in missing):
            missing = []
        problems = {kind: keys for kind, keys in (("missing_keys", missing), ("unexpected_keys", unexpected)) if keys}
        if problems:
            details = "; ".join(f"{kind}: {keys[:5]}" for kind, keys in problems.items())
            raise ValueError(
                f"The checkpoint's weights do not match its config ({model.config.rnn_cell} cell, "
                f"attention_score={model.config.attention_score!r}): {details}."
            )
        return (model, info) if wants_info else model


class RNNAttnModel(RNNAttnPreTrainedModel):
    """Encoder and attentional decoder; returns `o_t` features, no vocabulary projection."""

    def __init__(self, config):
        super().__init__(config)
        self.encoder = RNNAttnEncoder(config)
        self.decoder = RNNAttnDecoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value):
        self.encoder.embed_tokens = value

    def get_encoder(self):
        return self.encoder

    def get_decoder(self):
        return self.decoder

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, inputs_embeds=None, decoder_inputs_embeds=None,
                **kwargs):
        """`decoder_attention_mask` is accepted for API compatibility and ignored: the decoder is causal, so
        right padding of the target never changes the outputs at real positions.

        `inputs_embeds` (B x S x E) and `decoder_inputs_embeds` (B x T x E) replace the embeddings of `input_ids`
        and `decoder_input_ids`. `use_cache`, `output_attentions`, `output_hidden_states` and `return_dict`
        default to the config's. The hidden states are the embeddings then each RNN layer's states (encoder:
        B x S x K, the last being `encoder_last_hidden_state`; decoder: B x T x H, the top layer's `h_t`, from
        which `last_hidden_state` `o_t` is computed).
        """
        use_cache, output_attentions, output_hidden_states, return_dict = with_config_defaults(
            self.config, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=return_dict)
        check_batch_sizes(input_ids if input_ids is not None else inputs_embeds, encoder_outputs,
                          decoder_input_ids=decoder_input_ids, decoder_inputs_embeds=decoder_inputs_embeds)
        if encoder_outputs is None:
            if input_ids is None and inputs_embeds is None:
                raise ValueError("Pass `input_ids`, `inputs_embeds` or precomputed `encoder_outputs`.")
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           output_hidden_states=output_hidden_states, return_dict=True,
                                           inputs_embeds=inputs_embeds)
        elif not isinstance(encoder_outputs, RNNAttnEncoderOutput):
            encoder_outputs = RNNAttnEncoderOutput.from_tuple(encoder_outputs)
        keys = encoder_outputs.last_hidden_state  # B x S x K
        if attention_mask is None:
            attention_mask = keys.new_ones(keys.shape[:2], dtype=torch.long)
        if decoder_input_ids is not None and decoder_inputs_embeds is not None:
            raise ValueError("Pass `decoder_input_ids` or `decoder_inputs_embeds`, not both.")
        if decoder_inputs_embeds is not None:
            check_embeddings("decoder_inputs_embeds", decoder_inputs_embeds, self.config.embedding_size)
        elif decoder_input_ids is None:
            raise ValueError("Pass `decoder_input_ids`, `decoder_inputs_embeds` or `labels`.")
        else:
            check_token_ids("decoder_input_ids", decoder_input_ids, self.config.vocab_size)
        state = past_key_values if past_key_values is not None else self.decoder.initial_state(encoder_outputs)
        features, weights, state, *hidden_states = self.decoder(
            input_ids=decoder_input_ids, state=state, keys=keys, attention_mask=attention_mask,
            inputs_embeds=decoder_inputs_embeds, output_hidden_states=output_hidden_states)
        output = Seq2SeqModelOutput(
            last_hidden_state=features,
            past_key_values=state if use_cache else None,
            decoder_hidden_states=hidden_states[0] if hidden_states else None,
            cross_attentions=(weights.unsqueeze(1),) if output_attentions else None,  # B x 1 head x T x S
            encoder_last_hidden_state=keys,
            encoder_hidden_states=encoder_outputs.hidden_states,
        )
        return output if return_dict else output.to_tuple()


class RNNAttnForConditionalGeneration(LeanGenerationMixin, RNNAttnPreTrainedModel, GenerationMixin):
    """`RNNAttnModel` plus the vocabulary projection, the loss from `labels`, and `generate()`."""

    _tied_weights_keys = {"lm_head.weight": "model.decoder.embed_tokens.weight"}
    # The loss below is sum / num_items_in_batch, as Trainer expects under gradient accumulation and DDP.
    accepts_loss_kwargs = True

    def __init__(self, config):
        super().__init__(config)
        self.model = RNNAttnModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.output_layer_input_size, config.vocab_size)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # the decoder state is an RNNAttnState, not a key/value cache

    def get_encoder(self):
        return self.model.encoder

    def get_decoder(self):
        return self.model.decoder

    def _coverage_tracking_state(self, encoder_outputs):
        return self.model.decoder.initial_state(encoder_outputs, track_coverage=True)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def prepare_decoder_input_ids_from_labels(self, labels):
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """`GenerationMixin.generate`, with a clear error for a beam count below 1."""
        check_num_beams(kwargs.get("num_beams", (generation_config or self.generation_config).num_beams))
        return super().generate(inputs, generation_config=generation_config, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, num_items_in_batch=None, skip_logits=None,
                source_length_cap=None, max_active_rows=None, inputs_embeds=None, decoder_inputs_embeds=None,
                coverage_penalty=None, label_smoothing=None, **kwargs):
        """Teacher-forced logits (and the loss when `labels` are given) or one generation step.

        The other arguments are `RNNAttnModel.forward`'s; `return_dict` defaults to the config's.

        The loss is the summed token cross-entropy over `labels != -100`, divided by `num_items_in_batch`
        when Trainer passes it (target tokens across accumulation steps and processes), else by this
        batch's count. `label_smoothing=e` (0 <= e < 1) smooths its targets to `(1 - e) onehot(y) + e / V`, as
        `F.cross_entropy(label_smoothing=e)` and Trainer's `label_smoothing_factor` (which `TranslationTrainer`
        passes here) do.

        `source_length_cap=(a, b)` is read by `generate()`: greedy and beam search then give a source of S
        tokens at most `a * S + b` new tokens (see `lean_decoding.source_length_limits`). `max_active_rows=N` is
        read by greedy and beam search `generate()` too: it decodes N rows (N // num_beams sentences) at a time,
        replacing each sentence that ends by the next one (`lean_decoding`), for a large batch; the results do not
        change. `coverage_penalty=beta` is read by beam search `generate()`: GNMT's coverage penalty
        (`beam_penalties.py`).

        `skip_logits` (default: training with `labels`, as with Liger-Kernel in transformers) returns
        `logits=None` and computes the loss chunk by chunk without the B x T x V logits (`linear_cross_entropy`):
        the same loss and gradients, less time and memory.
        """
        (return_dict,) = with_config_defaults(self.config, return_dict=return_dict)
        check_batch_sizes(input_ids if input_ids is not None else inputs_embeds, encoder_outputs, labels=labels)
        if label_smoothing is not None and (labels is None or not 0 <= label_smoothing < 1):
            raise ValueError(f"`label_smoothing` must be in [0, 1) and come with `labels`; got {label_smoothing!r}"
                             f"{'' if labels is not None else ' without labels'}.")
        if labels is not None:
            check_token_ids("labels", labels, self.config.vocab_size, allow_ignore_index=True)
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                             decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
                             past_key_values=past_key_values, use_cache=use_cache, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, return_dict=True, inputs_embeds=inputs_embeds,
                             decoder_inputs_embeds=decoder_inputs_embeds)
        features = self.dropout(outputs.last_hidden_state)  # B x T x D
        if skip_logits is None:
            skip_logits = self.training and labels is not None and torch.is_grad_enabled()
        if skip_logits and labels is None:
            raise ValueError("`skip_logits=True` needs `labels`: without them there is nothing to return.")
        matmul_dtype = fused_loss_matmul_dtype(features) if skip_logits else None
        logits = None if skip_logits else output_logits(self.lm_head, features)  # B x T x V
        loss = None
        if labels is not None:
            if matmul_dtype is not None:
                total = linear_cross_entropy(features, self.lm_head.weight, self.lm_head.bias, labels,
                                             label_smoothing=label_smoothing or 0.0, matmul_dtype=matmul_dtype)
            else:
                logits_for_loss = logits if logits is not None else output_logits(self.lm_head, features)
                total = F.cross_entropy(logits_for_loss.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                        reduction="sum", label_smoothing=label_smoothing or 0.0)
            count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
            loss = total / torch.as_tensor(count, device=total.device).clamp(min=1)
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            decoder_hidden_states=outputs.decoder_hidden_states,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
        )
        return output if return_dict else output.to_tuple()
