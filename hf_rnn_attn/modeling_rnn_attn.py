"""RNN encoder-decoder with attention, as a Hugging Face seq2seq model.

Reads top to bottom: input checks -> encoder -> decoder (start state, one unroll for training and
generation) -> pretrained base -> model -> model with the language-model head.

Shapes: B batch, S source length, T target length, E embedding size, H decoder hidden size,
K encoder output size (2 x encoder hidden size when bidirectional), L layers, V vocabulary size.
"""

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.utils import ModelOutput, logging

from .attention import SCORES, attend
from .configuration_rnn_attn import RNNAttnConfig
from .decoder_state import RNNAttnState

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------- input checks

def check_token_ids(name, ids, vocab_size, allow_ignore_index=False):
    """Token ids must be a non-empty 2-D batch inside the vocabulary (labels may also hold -100)."""
    if ids.dim() != 2:
        raise ValueError(f"`{name}` must have shape (batch, length), got shape {tuple(ids.shape)}.")
    if ids.numel() == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(ids.shape)}); pass at least one token per row.")
    real = ids[ids != -100] if allow_ignore_index else ids
    if real.numel() and (real.min() < 0 or real.max() >= vocab_size):
        bad = real[(real < 0) | (real >= vocab_size)][0].item()
        allowed = f"[0, {vocab_size})" + (" or -100" if allow_ignore_index else "")
        raise ValueError(f"`{name}` holds token id {bad}, outside the vocabulary {allowed}.")


def check_source_mask(attention_mask, input_ids, config):
    """The mask must match the ids, be right-padded (what packing assumes) and keep a token in every row."""
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"`attention_mask` shape {tuple(attention_mask.shape)} does not match `input_ids` shape "
            f"{tuple(input_ids.shape)}."
        )
    lengths = attention_mask.sum(dim=1)
    if (lengths == 0).any():
        row = (lengths == 0).nonzero()[0].item()
        raise ValueError(f"Row {row} of `attention_mask` is all padding; every source needs at least one token.")
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), positions < lengths.unsqueeze(1)):
        raise ValueError(
            "`attention_mask` must be right-padded (1s then 0s in each row); set the tokenizer's padding_side='right'."
        )
    if config.attention_score == "location" and input_ids.size(1) > config.max_source_positions:
        raise ValueError(
            f"Source length {input_ids.size(1)} exceeds max_source_positions={config.max_source_positions} of the "
            f"location score; truncate the source (e.g. tokenizer(..., truncation=True, max_length="
            f"{config.max_source_positions}))."
        )
    return lengths


def shift_tokens_right(labels, pad_token_id, decoder_start_token_id):
    """Teacher forcing inputs: `<start> y_1 ... y_{T-1}`, with the loss's -100 turned into padding."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


# --------------------------------------------------------------------------------------------------- encoder

@dataclass
class RNNAttnEncoderOutput(ModelOutput):
    """Encoder outputs, all batch-first so that generate() expands them for beams.

    Attributes:
        last_hidden_state: B x S x K, the top layer's states `h_i` (zeros on padding).
        final_hidden_state: B x (L * directions) x He, each layer and direction's final hidden state, in
            `nn.GRU` order (layer 0 forward, layer 0 backward, layer 1 forward, ...).
        final_cell_state: same shape, for an LSTM encoder; else None.
        hidden_states: (embeddings, top layer states) when `output_hidden_states`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    final_hidden_state: torch.FloatTensor | None = None
    final_cell_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def build_rnn(config, input_size, hidden_size, num_layers, bidirectional=False):
    rnn_class = nn.GRU if config.rnn_cell == "gru" else nn.LSTM
    return rnn_class(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                     dropout=config.dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)


@cache
def cpu_autocast_supports(rnn_class, dtype):
    """Whether `rnn_class` runs under CPU autocast to `dtype` on this CPU.

    oneDNN's bf16 LSTM needs AVX-512 (it fails with "could not create a primitive descriptor" on AVX2-only
    CPUs), so ask the kernel itself once, with a 1-token input, rather than guess from CPU flags.
    """
    try:
        with torch.autocast("cpu", dtype=dtype):
            rnn_class(2, 2)(torch.zeros(1, 1, 2))
        return True
    except RuntimeError:
        return False


def run_rnn(rnn, inputs, state=None):
    """`rnn(inputs, state)`; in fp32 where CPU autocast asks for a precision this CPU's RNN kernel lacks."""
    dtype = torch.get_autocast_dtype("cpu")
    if (torch.is_autocast_enabled("cpu") and rnn.weight_hh_l0.device.type == "cpu"
            and not cpu_autocast_supports(type(rnn), dtype)):
        logger.warning_once(f"This CPU has no {dtype} kernel for {type(rnn).__name__}; it runs in float32.")
        with torch.autocast("cpu", enabled=False):
            if state is not None:
                state = tuple(s.float() for s in state) if isinstance(state, tuple) else state.float()
            return rnn(inputs.float(), state)
    return rnn(inputs, state)


class RNNAttnEncoder(nn.Module):
    """Embeddings and a (bi)directional stacked GRU/LSTM over the packed source."""

    main_input_name = "input_ids"

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = build_rnn(config, config.embedding_size, config.encoder_hidden_size, config.encoder_layers,
                             bidirectional=config.bidirectional_encoder)

    def forward(self, input_ids, attention_mask=None, output_attentions=None, output_hidden_states=None,
                return_dict=True, **kwargs):
        check_token_ids("input_ids", input_ids, self.config.vocab_size)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = check_source_mask(attention_mask, input_ids, self.config)
        embedded = self.dropout(self.embed_tokens(input_ids))  # B x S x E
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_states, final = run_rnn(self.rnn, packed)
        states, _ = pad_packed_sequence(packed_states, batch_first=True, total_length=input_ids.size(1))  # B x S x K
        final_hidden, final_cell = final if isinstance(final, tuple) else (final, None)
        output = RNNAttnEncoderOutput(
            last_hidden_state=states,
            final_hidden_state=final_hidden.transpose(0, 1),  # B x (L * directions) x He
            final_cell_state=None if final_cell is None else final_cell.transpose(0, 1),
            hidden_states=(embedded, states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------------- decoder

def gru_cell(input_gates, hidden, weight_hh, bias_hh):
    """One `nn.GRU` step with the input side `W_i x + b_i` (3H) already computed."""
    i_r, i_z, i_n = input_gates.chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(hidden, weight_hh, bias_hh).chunk(3, dim=-1)
    reset = torch.sigmoid(i_r + h_r)
    update = torch.sigmoid(i_z + h_z)
    candidate = torch.tanh(i_n + reset * h_n)
    return (1 - update) * candidate + update * hidden


def lstm_cell(input_gates, hidden, cell, weight_hh, bias_hh):
    """One `nn.LSTM` step with the input side `W_i x + b_i` (4H) already computed."""
    gates = input_gates + F.linear(hidden, weight_hh, bias_hh)
    in_gate, forget_gate, candidate, out_gate = gates.chunk(4, dim=-1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(candidate)
    return torch.sigmoid(out_gate) * torch.tanh(cell), cell


class RNNAttnDecoder(nn.Module):
    """Stacked GRU/LSTM decoder with attention over the encoder states.

    Step t: `h_t = RNN(x_t, state)` with `x_t = emb(y_{t-1})`, or `[emb(y_{t-1}) ; c_{t-1}]` with input feeding;
    `alpha = softmax(score(h_t, h_i))` over real source positions; `c_t = sum_i alpha_i h_i`;
    `o_t = [h_t ; c_t]`, or Luong's `tanh(W_c [h_t ; c_t])`. The caller maps `o_t` to logits.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        context_size = config.encoder_output_size if config.input_feeding else 0
        self.rnn = build_rnn(config, config.embedding_size + context_size, config.hidden_size, config.decoder_layers)
        self.score = SCORES[config.attention_score](config)
        self.bridge = nn.Linear(config.encoder_state_size, config.hidden_size) if config.uses_bridge else None
        self.W_c = None
        if config.output_layer == "tanh":
            self.W_c = nn.Linear(config.hidden_size + config.encoder_output_size, config.hidden_size, bias=False)

    def initial_state(self, encoder_output):
        """The state before the first target token, from the encoder's final states and keys."""
        config, keys = self.config, encoder_output.last_hidden_state
        batch_size = keys.size(0)
        starts = [encoder_output.final_hidden_state]
        if config.rnn_cell == "lstm":
            starts.append(encoder_output.final_cell_state)
        if config.decoder_state_init == "zeros":
            starts = [keys.new_zeros(batch_size, config.decoder_layers, config.hidden_size) for _ in starts]
        elif config.decoder_state_init == "backward":
            # nn.GRU orders final states (layer, direction): the last is the top layer's backward state,
            # the one that ended at source position 1.
            starts = [s[:, -1:].expand(-1, config.decoder_layers, -1) for s in starts]  # B x L x He
        else:
            directions = 2 if config.bidirectional_encoder else 1
            starts = [s.reshape(batch_size, config.encoder_layers, directions * config.encoder_hidden_size)
                      for s in starts]  # B x L x K, [fwd ; bwd] per layer
        if self.bridge is not None:
            starts = [torch.tanh(self.bridge(s)) for s in starts]  # B x L x H
        hidden, cell = starts if len(starts) == 2 else (starts[0], None)
        context = keys.new_zeros(batch_size, keys.size(-1)) if config.input_feeding else None  # c_0 = 0
        return RNNAttnState(hidden=hidden.contiguous(), cell=cell if cell is None else cell.contiguous(),
                            context=context, projected_keys=self.score.project_keys(keys))

    def forward(self, input_ids, state, keys, attention_mask):
        """Consumes T target tokens from `state`.

        Args:
            input_ids: B x T previous target tokens.
            state: `RNNAttnState` before them.
            keys: B x S x K encoder states `h_i`.
            attention_mask: B x S, 1 for real source tokens.
        Returns:
            `o_t` (B x T x H + K, or B x T x H with `output_layer="tanh"`), attention weights B x T x S,
            the new state.
        """
        embedded = self.dropout(self.embed_tokens(input_ids))  # B x T x E
        if self.config.input_feeding:
            top, context, weights, hidden, cell = self._unroll_with_input_feeding(embedded, state, keys, attention_mask)
        else:
            top, final = run_rnn(self.rnn, embedded, state.rnn_state())  # B x T x H: one call over all steps
            final_hidden, final_cell = final if isinstance(final, tuple) else (final, None)
            hidden = final_hidden.transpose(0, 1)
            cell = None if final_cell is None else final_cell.transpose(0, 1)
            context, weights = attend(self.score(top, state.projected_keys), attention_mask, keys)
        output = torch.cat([top, context], dim=-1)  # B x T x (H + K)
        if self.W_c is not None:
            output = torch.tanh(self.W_c(output))  # B x T x H
        new_state = RNNAttnState(hidden=hidden, cell=cell,
                                 context=context[:, -1] if self.config.input_feeding else None,
                                 projected_keys=state.projected_keys,
                                 seen_tokens=state.seen_tokens + input_ids.size(1))
        return output, weights, new_state

    def _unroll_with_input_feeding(self, embedded, state, keys, attention_mask):
        """The sequential part only: each step's RNN input needs the previous step's context.

        Runs the `nn.GRU`/`nn.LSTM` weights step by step; the embedding part of the first layer's input
        projection is computed for all steps in one product.
        """
        rnn, num_layers, embedding_size = self.rnn, self.config.decoder_layers, self.config.embedding_size
        weight_ih = rnn.weight_ih_l0
        # unbind, not [:, t]: its backward stacks T gradients once instead of filling T full-size zero tensors.
        embedded_gates = F.linear(embedded, weight_ih[:, :embedding_size], rnn.bias_ih_l0).unbind(1)  # T x (B x G*H)
        weight_context = weight_ih[:, embedding_size:]
        hidden = list(state.hidden.unbind(1))  # L x (B x H)
        cell = list(state.cell.unbind(1)) if state.cell is not None else [None] * num_layers
        context = state.context  # B x K
        tops, contexts, weights = [], [], []
        for step_gates in embedded_gates:
            gates = step_gates + F.linear(context, weight_context)
            for layer in range(num_layers):
                if layer > 0:
                    below = F.dropout(hidden[layer - 1], self.config.dropout, self.training)
                    gates = F.linear(below, getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"bias_ih_l{layer}"))
                weight_hh, bias_hh = getattr(rnn, f"weight_hh_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
                if cell[layer] is None:
                    hidden[layer] = gru_cell(gates, hidden[layer], weight_hh, bias_hh)
                else:
                    hidden[layer], cell[layer] = lstm_cell(gates, hidden[layer], cell[layer], weight_hh, bias_hh)
            step_context, step_weights = attend(self.score(hidden[-1].unsqueeze(1), state.projected_keys),
                                                attention_mask, keys)  # B x 1 x K, B x 1 x S
            context = step_context.squeeze(1)
            tops.append(hidden[-1])
            contexts.append(context)
            weights.append(step_weights)
        cell = torch.stack(cell, dim=1) if state.cell is not None else None
        return (torch.stack(tops, dim=1), torch.stack(contexts, dim=1), torch.cat(weights, dim=1),
                torch.stack(hidden, dim=1), cell)


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

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Like `PreTrainedModel.from_pretrained`, but refuses a checkpoint whose weights do not fit the config.

        transformers would only warn and start missing weights at random, silently losing the trained model.
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
        problems = {kind: sorted(info.get(kind) or []) for kind in ("missing_keys", "unexpected_keys")}
        problems = {kind: keys for kind, keys in problems.items() if keys}
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
                output_hidden_states=None, return_dict=None, **kwargs):
        """`decoder_attention_mask` is accepted for API compatibility and ignored: the decoder is causal, so
        right padding of the target never changes the outputs at real positions."""
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("Pass `input_ids` (or precomputed `encoder_outputs`).")
            encoder_outputs = self.encoder(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        elif not isinstance(encoder_outputs, RNNAttnEncoderOutput):
            encoder_outputs = RNNAttnEncoderOutput(*encoder_outputs)
        keys = encoder_outputs.last_hidden_state  # B x S x K
        if attention_mask is None:
            attention_mask = keys.new_ones(keys.shape[:2], dtype=torch.long)
        if decoder_input_ids is None:
            raise ValueError("Pass `decoder_input_ids` or `labels`.")
        check_token_ids("decoder_input_ids", decoder_input_ids, self.config.vocab_size)
        state = past_key_values if past_key_values is not None else self.decoder.initial_state(encoder_outputs)
        features, weights, state = self.decoder(decoder_input_ids, state, keys, attention_mask)
        output = Seq2SeqModelOutput(
            last_hidden_state=features,
            past_key_values=state if use_cache is not False else None,
            decoder_hidden_states=(features,) if output_hidden_states else None,
            cross_attentions=(weights.unsqueeze(1),) if output_attentions else None,  # B x 1 head x T x S
            encoder_last_hidden_state=keys,
            encoder_hidden_states=encoder_outputs.hidden_states,
        )
        return output if return_dict is not False else output.to_tuple()


class RNNAttnForConditionalGeneration(RNNAttnPreTrainedModel, GenerationMixin):
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

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def prepare_decoder_input_ids_from_labels(self, labels):
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, num_items_in_batch=None, **kwargs):
        """Teacher-forced logits (and the loss when `labels` are given) or one generation step.

        The loss is the summed token cross-entropy over `labels != -100`, divided by `num_items_in_batch`
        when Trainer passes it (target tokens across accumulation steps and processes), else by this
        batch's count.
        """
        if labels is not None:
            check_token_ids("labels", labels, self.config.vocab_size, allow_ignore_index=True)
            if decoder_input_ids is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                             encoder_outputs, past_key_values, use_cache, output_attentions,
                             output_hidden_states, return_dict=True)
        logits = self.lm_head(self.dropout(outputs.last_hidden_state))  # B x T x V
        loss = None
        if labels is not None:
            total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
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
        return output if return_dict is not False else output.to_tuple()
