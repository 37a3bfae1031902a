"""RNN encoder-decoder with attention, as a Hugging Face seq2seq model.

Reads top to bottom: input checks -> recurrent networks (one state format for GRU and LSTM) -> encoder ->
decoder (its state, the plain step, the fused unroll for teacher forcing) -> pretrained base -> model -> model
with the language-model head. The README's design notes list where each equation of the two architectures is.

Shapes: B batch, S source length, T target length, E embedding size, H decoder hidden size,
K encoder output size (2 x encoder hidden size when bidirectional), L layers, V vocabulary size.
"""

from dataclasses import dataclass, fields, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.utils import ModelOutput, logging

from .attention import ALIGNMENTS, SCORES, attend, local_window
from .configuration_rnn_attn import RNNAttnConfig
from .fused_unroll import fuses, unroll_gru_attention
from .lean_decoding import LeanGenerationMixin
from .linear_cross_entropy import linear_cross_entropy
from .mixed_precision import (cpu_autocast_supports, float32_fast_paths_run, fused_loss_matmul_dtype,
                              without_autocast)
from .onednn_products import output_logits

logger = logging.get_logger(__name__)

# Rows per block of the encoder's packed RNN on the CPU without gradients (`RNNAttnEncoder.forward`).
INFERENCE_ROWS_PER_BLOCK = 64

# ---------------------------------------------------------------------------------------------- input checks

def check_token_ids(name, ids, vocab_size, allow_ignore_index=False):
    """Token ids must be a non-empty 2-D integer batch inside the vocabulary (labels may also hold -100)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of token ids, got {type(ids).__name__}.")
    if ids.dtype not in (torch.long, torch.int):
        raise TypeError(f"`{name}` must hold integer token ids (torch.long), got dtype {ids.dtype}.")
    if ids.dim() != 2:
        raise ValueError(f"`{name}` must have shape (batch, length), got shape {tuple(ids.shape)}.")
    if ids.numel() == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(ids.shape)}); pass at least one token per row.")
    real = ids[ids != -100] if allow_ignore_index else ids
    if real.numel() and (real.min() < 0 or real.max() >= vocab_size):
        bad = real[(real < 0) | (real >= vocab_size)][0].item()
        allowed = f"[0, {vocab_size})" + (" or -100" if allow_ignore_index else "")
        raise ValueError(f"`{name}` holds token id {bad}, outside the vocabulary {allowed}.")


def check_embeddings(name, embeds, embedding_size):
    """Embeddings passed instead of token ids must be a float B x L x E batch."""
    if (not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point() or embeds.dim() != 3
            or embeds.size(-1) != embedding_size or embeds.size(1) == 0):
        got = f"{embeds.dtype} tensor of shape {tuple(embeds.shape)}" if isinstance(embeds, torch.Tensor) \
            else type(embeds).__name__
        raise ValueError(f"`{name}` must be a float tensor of shape (batch, length, {embedding_size}), got {got}.")


def check_source_mask(attention_mask, source, config, source_name="input_ids"):
    """The mask must match the source (B x S ids or B x S x E embeddings), hold only 0 and 1, be right-padded
    (what packing assumes) and keep a token in every row."""
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"`attention_mask` must be a torch.Tensor, got {type(attention_mask).__name__}.")
    if attention_mask.shape != source.shape[:2]:
        raise ValueError(
            f"`attention_mask` shape {tuple(attention_mask.shape)} does not match `{source_name}` shape "
            f"{tuple(source.shape[:2])}."
        )
    invalid = (attention_mask != 0) & (attention_mask != 1)
    if invalid.any():
        raise ValueError(
            f"`attention_mask` must hold only 0 (padding) and 1 (token), got {attention_mask[invalid][0].item()}."
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
    if config.attention_score == "location" and source.size(1) > config.max_source_positions:
        raise ValueError(
            f"Source length {source.size(1)} exceeds max_source_positions={config.max_source_positions} of the "
            f"location score; truncate the source (e.g. tokenizer(..., truncation=True, max_length="
            f"{config.max_source_positions}))."
        )
    return lengths


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


# ---------------------------------------------------------------------------------------- recurrent networks
#
# A recurrent state is a tuple, `(h,)` for a GRU and `(h, c)` for an LSTM, each batch-first (B x layers x H), as
# OpenNMT-py wraps a GRU's state: code that carries it never asks which cell it has. `run_rnn` is the only place
# that knows `nn.GRU` takes a bare tensor and that both modules want (layers, B, H).

def build_rnn(config, input_size, hidden_size, num_layers, bidirectional=False):
    rnn_class = nn.GRU if config.rnn_cell == "gru" else nn.LSTM
    return rnn_class(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                     dropout=config.dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)


def hidden_and_cell(state):
    """`(h, c)` of a recurrent state, `c` None for a GRU: how the encoder output and `RNNAttnState` name them."""
    return state if len(state) == 2 else (state[0], None)


def state_tuple(hidden, cell):
    """The recurrent state `(h,)` or `(h, c)` from its named parts; the inverse of `hidden_and_cell`."""
    return (hidden,) if cell is None else (hidden, cell)


def run_rnn(rnn, inputs, state=None):
    """`rnn(inputs, state)` with recurrent states as tuples (see above), initial (or None for zeros) and final;
    in fp32 where CPU autocast asks for a precision this CPU's RNN kernel lacks."""
    dtype = torch.get_autocast_dtype("cpu")
    if (torch.is_autocast_enabled("cpu") and rnn.weight_hh_l0.device.type == "cpu"
            and not cpu_autocast_supports(type(rnn), dtype)):
        logger.warning_once(f"This CPU has no {dtype} kernel for {type(rnn).__name__}; it runs in float32.")
        with torch.autocast("cpu", enabled=False):
            return run_rnn(rnn, inputs.float(), None if state is None else tuple(s.float() for s in state))
    if state is not None:
        state = tuple(s.transpose(0, 1).contiguous() for s in state)  # layers x B x H
        state = state[0] if isinstance(rnn, nn.GRU) else state
    outputs, final = rnn(inputs, state)
    final = final if isinstance(final, tuple) else (final,)
    return outputs, tuple(s.transpose(0, 1) for s in final)  # B x layers x H


def run_gru_padded(gru, embedded, lengths):
    """`run_rnn(gru, pack_padded_sequence(embedded, lengths))` for a batch-first `nn.GRU`, on the padded batch.

    The same states (within float rounding), faster to train: the packed GRU's backward pass fills a zero gradient
    the size of the whole packed input at every step (the backward of its per-step `narrow`). Each row's padding
    comes after its tokens, so a forward direction reads it only after its last real state; a backward direction
    runs over each row reversed within its length. Padded positions are zero, as `pad_packed_sequence` leaves them.

    Args: embedded B x S x E, lengths B (on the input's device). Returns outputs B x S x (D H) and the final state
    `(h,)`, B x (L D) x H, ordered as `nn.GRU` orders it (layer, then direction).
    """
    steps = torch.arange(embedded.size(1), device=embedded.device)
    last = (lengths - 1)[:, None]  # B x 1
    real = steps < lengths[:, None]  # B x S
    reversed_order = torch.where(real, last - steps, steps)  # B x S: each row's tokens reversed, padding kept
    directions = 2 if gru.bidirectional else 1
    inputs, finals = embedded, []
    for layer in range(gru.num_layers):
        if layer > 0:
            inputs = F.dropout(inputs, gru.dropout, gru.training)  # what the stacked GRU applies between layers
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            weights = [getattr(gru, f"{name}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            direction_inputs = inputs
            if direction:
                direction_inputs = inputs.gather(1, reversed_order[..., None].expand(-1, -1, inputs.size(-1)))
            states, _ = torch.gru(direction_inputs, direction_inputs.new_zeros(1, inputs.size(0), gru.hidden_size),
                                  weights, True, 1, 0.0, gru.training, False, True)  # B x S x H
            finals.append(states.gather(1, last[..., None].expand(-1, 1, gru.hidden_size)))  # B x 1 x H
            if direction:
                states = states.gather(1, reversed_order[..., None].expand(-1, -1, gru.hidden_size))
            outputs.append(states)
        inputs = torch.cat(outputs, dim=-1) if directions > 1 else outputs[0]
    return inputs * real[..., None], (torch.cat(finals, dim=1),)


def run_rnn_layers(rnn, inputs, state=None):
    """`run_rnn(rnn, inputs, state)` one layer at a time, to return each layer's outputs as well: a stacked
    `nn.GRU`/`nn.LSTM` call returns the top layer's only. The same weights and computation, slower: only for
    `output_hidden_states`.

    Args:
        rnn: a batch-first `nn.GRU` or `nn.LSTM`.
        inputs: B x T x I, or a `PackedSequence` of them.
        state: the initial state as `run_rnn` takes it, or None.
    Returns:
        (top layer outputs, final state) as `run_rnn` returns them, and the outputs of each layer below the top.
    """
    directions = 2 if rnn.bidirectional else 1
    lower_layers, finals = [], []
    for layer in range(rnn.num_layers):
        if layer > 0:
            lower_layers.append(inputs)
            # The dropout the stacked RNN applies between layers.
            if isinstance(inputs, PackedSequence):
                inputs = inputs._replace(data=F.dropout(inputs.data, rnn.dropout, rnn.training))
            else:
                inputs = F.dropout(inputs, rnn.dropout, rnn.training)
        one_layer = type(rnn)(rnn.input_size if layer == 0 else directions * rnn.hidden_size, rnn.hidden_size,
                              batch_first=rnn.batch_first, bidirectional=rnn.bidirectional, device="meta")
        for name, _ in list(one_layer.named_parameters()):  # share layer `layer`'s parameters
            setattr(one_layer, name, getattr(rnn, name.replace("_l0", f"_l{layer}")))
        rows = slice(layer * directions, (layer + 1) * directions)
        layer_state = None if state is None else tuple(s[:, rows] for s in state)
        # cuDNN would move the shared parameters into a weight buffer of `one_layer`, out of `rnn`'s own.
        with torch.backends.cudnn.flags(enabled=False):
            inputs, final = run_rnn(one_layer, inputs, layer_state)
        finals.append(final)
    return inputs, tuple(torch.cat(parts, dim=1) for parts in zip(*finals)), lower_layers


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

    def forward(self, input_ids=None, attention_mask=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, inputs_embeds=None, **kwargs):
        """`inputs_embeds` (B x S x E) replaces the embedding of `input_ids`. `output_hidden_states` and
        `return_dict` default to the config's; `output_attentions` is accepted for generate(): an RNN encoder has
        no attention."""
        output_hidden_states, return_dict = with_config_defaults(
            self.config, output_hidden_states=output_hidden_states, return_dict=return_dict)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass `input_ids` or `inputs_embeds` (exactly one of them).")
        if inputs_embeds is None:
            check_token_ids("input_ids", input_ids, self.config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)
        else:
            check_embeddings("inputs_embeds", inputs_embeds, self.config.embedding_size)
        if attention_mask is None:
            attention_mask = inputs_embeds.new_ones(inputs_embeds.shape[:2], dtype=torch.long)
        lengths = check_source_mask(attention_mask, inputs_embeds, self.config,
                                    "input_ids" if input_ids is not None else "inputs_embeds")
        embedded = self.dropout(inputs_embeds)  # B x S x E
        if (isinstance(self.rnn, nn.GRU) and torch.is_grad_enabled() and not output_hidden_states
                and float32_fast_paths_run(embedded)):
            with without_autocast(embedded):
                states, final = run_gru_padded(self.rnn, embedded, lengths.to(embedded.device))  # training: faster
            output = RNNAttnEncoderOutput(last_hidden_state=states, final_hidden_state=final[0])
            return output if return_dict else output.to_tuple()
        # On the CPU without gradients, blocks of rows: the per-step gates of a batch of a thousand sentences
        # spill out of the cache. Not while tracing (ONNX export), which would record the blocks' fixed row ranges.
        if (torch.is_grad_enabled() or embedded.device.type != "cpu" or torch.jit.is_tracing()
                or embedded.size(0) <= INFERENCE_ROWS_PER_BLOCK):
            states, final, lower_layers = self._run_packed(embedded, lengths, output_hidden_states)
        else:
            states, final, lower_layers = self._run_packed_in_blocks(embedded, lengths, output_hidden_states)
        hidden_states = (embedded, *lower_layers, states) if output_hidden_states else None
        final_hidden, final_cell = hidden_and_cell(final)  # B x (L * directions) x He each
        output = RNNAttnEncoderOutput(last_hidden_state=states, final_hidden_state=final_hidden,
                                      final_cell_state=final_cell, hidden_states=hidden_states)
        return output if return_dict else output.to_tuple()

    def _run_packed_in_blocks(self, embedded, lengths, output_hidden_states):
        """`_run_packed` over blocks of `INFERENCE_ROWS_PER_BLOCK` rows, joined: each row's states are the same
        computation (within float rounding; the encoder of 1,000 test verses: 0.24-0.44 s in one block, 0.16 s in
        blocks of 64 on a 2-core Xeon)."""
        blocks = [self._run_packed(embedded[start:start + INFERENCE_ROWS_PER_BLOCK],
                                   lengths[start:start + INFERENCE_ROWS_PER_BLOCK], output_hidden_states)
                  for start in range(0, embedded.size(0), INFERENCE_ROWS_PER_BLOCK)]
        states, finals, lower_layers = zip(*blocks)
        return (torch.cat(states), tuple(torch.cat(parts) for parts in zip(*finals)),
                [torch.cat(parts) for parts in zip(*lower_layers)])

    def _run_packed(self, embedded, lengths, output_hidden_states):
        """The RNN over the packed rows of `embedded` (b x S x E): their states (b x S x K, zeros on padding), the
        final state (`(h,)` or `(h, c)`, b x (L * directions) x He each) and the lower layers' states (a list of
        b x S x K, empty without `output_hidden_states`)."""
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        if output_hidden_states:
            packed_states, final, packed_lower_layers = run_rnn_layers(self.rnn, packed)
        else:
            packed_states, final = run_rnn(self.rnn, packed)
            packed_lower_layers = []
        states, *lower_layers = [pad_packed_sequence(layer, batch_first=True, total_length=embedded.size(1))[0]
                                 for layer in (packed_states, *packed_lower_layers)]  # b x S x K each
        return states, final, lower_layers


# --------------------------------------------------------------------------------------------------- decoder

@dataclass
class RNNAttnState:
    """The decoder state after `seen_tokens` target tokens, carried between steps as `past_key_values`.

    Batch-first, so that generate() reorders it along dim 0 in beam search (`reorder_cache`); `run_rnn` alone
    transposes it for `nn.GRU`/`nn.LSTM`.

    Attributes:
        hidden: B x L x H, the decoder RNN's hidden state per layer.
        cell: B x L x H for an LSTM, else None.
        context: B x K, the previous attention context `c_{t-1}` when the decoder uses input feeding, else None.
        projected_keys: the score's projection of the encoder states (e.g. `W2 h_i`, B x S x A), computed
            once per source sentence.
        seen_tokens: number of target tokens consumed so far.
        coverage: B x S, the attention each source token has received so far, `sum_t alpha_ti`; only for
            generate(coverage_penalty=...) (`beam_penalties.py`), else None.
    """

    hidden: torch.Tensor
    cell: torch.Tensor | None
    context: torch.Tensor | None
    projected_keys: torch.Tensor
    seen_tokens: int = 0
    coverage: torch.Tensor | None = None

    # Read by generate(): this state can be neither compiled as a static cache nor cropped.
    is_compileable = False
    is_croppable = False

    @classmethod
    def from_rnn(cls, rnn_state, context, projected_keys, seen_tokens=0, coverage=None):
        """The state holding `rnn_state`, the decoder RNN's `(h,)` or `(h, c)` (B x L x H each)."""
        hidden, cell = hidden_and_cell(rnn_state)
        return cls(hidden=hidden, cell=cell, context=context, projected_keys=projected_keys, seen_tokens=seen_tokens,
                   coverage=coverage)

    def rnn_state(self):
        """The decoder RNN's state, `(h,)` or `(h, c)`, as `run_rnn` takes it."""
        return state_tuple(self.hidden, self.cell)

    def tensors(self):
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, dtype):
        """This state with its floating-point tensors in `dtype` (itself if they are already)."""
        changed = {name: tensor.to(dtype) for name, tensor in self.tensors().items()
                   if tensor.is_floating_point() and tensor.dtype != dtype}
        return replace(self, **changed) if changed else self

    def select_rows(self, rows, source_rows=None):
        """Keeps, in place, `rows` (in that order) of every tensor: sentences that leave take their keys along.
        `source_rows`: those of `projected_keys` when it holds one row per source, shared by the rows of its beams
        (`lean_decoding.ActiveRows`)."""
        for name, tensor in self.tensors().items():
            index = source_rows if name == "projected_keys" and source_rows is not None else rows
            setattr(self, name, tensor.index_select(0, index.to(tensor.device)))

    def reorder_cache(self, beam_idx):
        """Keeps, in place, the rows of the beams that survived (generate() ignores a return value).

        Beam search only reorders the beams of each sentence, which share one source: their `projected_keys`
        (B x S x A, the largest tensor here) are equal and stay as they are.
        """
        for name, tensor in self.tensors().items():
            if name != "projected_keys":
                setattr(self, name, tensor.index_select(0, beam_idx.to(tensor.device)))

    def get_seq_length(self, layer_idx=0):
        return self.seen_tokens


def gru_cell(input_gates, hidden, weight_hh, bias_hh):
    """One `nn.GRU` step with the input side `W_i x + b_i` (3H) already computed; returns the state `(h,)`."""
    i_r, i_z, i_n = input_gates.chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(hidden, weight_hh, bias_hh).chunk(3, dim=-1)
    reset = torch.sigmoid(i_r + h_r)
    update = torch.sigmoid(i_z + h_z)
    candidate = torch.tanh(i_n + reset * h_n)
    return ((1 - update) * candidate + update * hidden,)


def lstm_cell(input_gates, hidden, cell, weight_hh, bias_hh):
    """One `nn.LSTM` step with the input side `W_i x + b_i` (4H) already computed; returns the state `(h, c)`."""
    gates = input_gates + F.linear(hidden, weight_hh, bias_hh)
    in_gate, forget_gate, candidate, out_gate = gates.chunk(4, dim=-1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(candidate)
    return torch.sigmoid(out_gate) * torch.tanh(cell), cell


CELLS = {"gru": gru_cell, "lstm": lstm_cell}


class RNNAttnDecoder(nn.Module):
    """Stacked GRU/LSTM decoder with attention over the encoder states.

    Step t: `h_t = RNN(x_t, state)` with `x_t = emb(y_{t-1})`, or `[emb(y_{t-1}) ; c_{t-1}]` with input feeding;
    `alpha = softmax(score(h_t, h_i))` over real source positions (local attention: those in a window around
    `p_t`); `c_t = sum_i alpha_i h_i`; `o_t = [h_t ; c_t]`, or Luong's `tanh(W_c [h_t ; c_t])`. The caller maps
    `o_t` to logits.

    `step` computes this as written; `_unroll_with_input_feeding` is the same computation, fused for teacher
    forcing (tests/test_modeling.py checks one against the other).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        context_size = config.encoder_output_size if config.input_feeding else 0
        self.rnn = build_rnn(config, config.embedding_size + context_size, config.hidden_size, config.decoder_layers)
        self.score = SCORES[config.attention_score](config)
        # Local attention's p_t; global attention has none.
        self.aligned_position = ALIGNMENTS[config.attention_type](config) if config.attention_type != "global" else None
        self.bridge = nn.Linear(config.encoder_state_size, config.hidden_size) if config.uses_bridge else None
        self.W_c = None
        if config.output_layer == "tanh":
            self.W_c = nn.Linear(config.hidden_size + config.encoder_output_size, config.hidden_size, bias=False)

    def initial_state(self, encoder_output, track_coverage=False):
        """The state before the first target token, from the encoder's final states and keys; with
        `track_coverage`, it also sums the attention weights (`RNNAttnState.coverage`)."""
        config, keys = self.config, encoder_output.last_hidden_state
        batch_size = keys.size(0)
        starts = state_tuple(encoder_output.final_hidden_state, encoder_output.final_cell_state)
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
        context = keys.new_zeros(batch_size, keys.size(-1)) if config.input_feeding else None  # c_0 = 0
        return RNNAttnState.from_rnn(tuple(s.contiguous() for s in starts), context=context,
                                     projected_keys=self.score.project_keys(keys),
                                     coverage=keys.new_zeros(keys.shape[:2]) if track_coverage else None)

    def forward(self, input_ids, state, keys, attention_mask, inputs_embeds=None, output_hidden_states=False,
                rows_per_source=1):
        """Consumes T target tokens from `state`: teacher forcing with input feeding takes the fused unroll, the
        rest (one token, or T tokens without input feeding) `step`.

        Args:
            input_ids: B x T previous target tokens (None with `inputs_embeds`).
            state: `RNNAttnState` before them.
            keys: B x S x K encoder states `h_i`.
            attention_mask: B x S, 1 for real source tokens.
            inputs_embeds: B x T x E, in place of the embeddings of `input_ids`.
            output_hidden_states: also return the hidden states (slower without input feeding: the RNN then
                runs one layer at a time).
            rows_per_source: with N > 1 (one token, global attention), `keys`, `attention_mask` and the state's
                `projected_keys` hold one row per source, shared by N consecutive rows (the beams of a sentence).
        Returns:
            `o_t` (B x T x H + K, or B x T x H with `output_layer="tanh"`), attention weights B x T x S,
            the new state, and with `output_hidden_states` the embeddings (B x T x E) then each RNN layer's
            states (B x T x H; the last is the top layer's `h_t`).
        """
        embedded = self.dropout(self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds)  # B x T x E
        run = self.step
        if rows_per_source > 1:
            if embedded.size(1) > 1 or self.aligned_position is not None:
                raise ValueError("`rows_per_source` > 1 takes one token per row and global attention.")
            run = partial(self.step, rows_per_source=rows_per_source)
        elif self.config.input_feeding and embedded.size(1) > 1:
            fused = fuses(self.config) and float32_fast_paths_run(embedded)
            run = self._unroll_fused if fused else self._unroll_with_input_feeding
        output, weights, new_state, layers = run(embedded, state, keys, attention_mask, output_hidden_states)
        if state.coverage is not None:
            new_state.coverage = state.coverage + weights.sum(dim=1)  # B x S: sum_t alpha_ti
        if output_hidden_states:
            return output, weights, new_state, (embedded, *layers)
        return output, weights, new_state

    def step(self, embedded, state, keys, attention_mask, output_hidden_states=False, rows_per_source=1):
        """The decoder as the papers write it, for one token (B x 1 x E embedded), or for all T teacher-forced
        tokens at once without input feeding, where `x_t` does not need `c_{t-1}`.

        Returns `o_t`, the attention weights, the new state (as `forward`) and each RNN layer's states (B x T x H)
        with `output_hidden_states`, else None. `rows_per_source` as in `forward`.
        """
        x = embedded  # B x T x E
        if self.config.input_feeding:
            x = torch.cat([embedded, state.context.unsqueeze(1)], dim=-1)  # B x 1 x (E + K): [emb(y_{t-1}) ; c_{t-1}]
        if output_hidden_states:
            top, final, lower_layers = run_rnn_layers(self.rnn, x, state.rnn_state())
        else:
            top, final = run_rnn(self.rnn, x, state.rnn_state())  # B x T x H: h_t
        if rows_per_source > 1:  # each source's rows attend as its N x T queries (B x T = A x N T)
            query = top.reshape(-1, rows_per_source * top.size(1), top.size(-1))  # A x N T x H
            context, weights = (t.reshape(*top.shape[:2], -1) for t in self.attention(query, state, keys,
                                                                                       attention_mask))
        else:
            context, weights = self.attention(top, state, keys, attention_mask)  # B x T x K, B x T x S
        new_state = RNNAttnState.from_rnn(final, context=context[:, -1] if self.config.input_feeding else None,
                                          projected_keys=state.projected_keys,
                                          seen_tokens=state.seen_tokens + embedded.size(1))
        layers = (*lower_layers, top) if output_hidden_states else None
        return self.output(top, context), weights, new_state, layers

    def attention(self, top, state, keys, attention_mask, step=0):
        """Context `c_t` (B x T x K) and weights (B x T x S) for `h_t` (B x T x H), the target steps that follow
        the `state.seen_tokens + step` tokens already consumed; the step index matters to local-m's `p_t = t`."""
        scores = self.score(top, state.projected_keys)  # B x T x S
        if self.aligned_position is None:
            return attend(scores, attention_mask, keys)
        steps = state.seen_tokens + step + torch.arange(1, top.size(1) + 1, device=top.device)  # T: t, from 1
        # The real source length, not the padded one, places local-p's p_t and clips local-m's.
        positions = self.aligned_position(top, steps, attention_mask.sum(dim=1))  # B x T: p_t
        scores, window = local_window(scores, positions, self.config.local_window, self.aligned_position.gaussian)
        return attend(scores, attention_mask, keys, window)

    def output(self, top, context):
        """`o_t` from `h_t` (B x T x H) and `c_t` (B x T x K)."""
        output = torch.cat([top, context], dim=-1)  # B x T x (H + K): [h_t ; c_t]
        if self.W_c is not None:
            output = torch.tanh(self.W_c(output))  # B x T x H: tanh(W_c [h_t ; c_t])
        return output

    def _unroll_fused(self, embedded, state, keys, attention_mask, output_hidden_states=False):
        """`_unroll_with_input_feeding` for a one-layer GRU with global additive attention (`fused_unroll.py`):
        the same results, with a hand-written backward pass."""
        rnn, embedding_size = self.rnn, self.config.embedding_size
        with without_autocast(embedded):  # the hand-written backward pass is in the weights' dtype
            dtype = rnn.weight_hh_l0.dtype
            embedded, keys, state = embedded.to(dtype), keys.to(dtype), state.to(dtype)
            embedded_gates = F.linear(embedded, rnn.weight_ih_l0[:, :embedding_size], rnn.bias_ih_l0)  # B x T x 3H
            top, contexts, weights = unroll_gru_attention(embedded_gates, state.hidden[:, 0], state.context, keys,
                                                          state.projected_keys, attention_mask, rnn, self.score)
        new_state = RNNAttnState.from_rnn((top[:, -1:],), context=contexts[:, -1], projected_keys=state.projected_keys,
                                          seen_tokens=state.seen_tokens + embedded.size(1))
        return self.output(top, contexts), weights, new_state, (top,) if output_hidden_states else None

    def _unroll_with_input_feeding(self, embedded, state, keys, attention_mask, output_hidden_states=False):
        """`step` over T > 1 teacher-forced tokens with input feeding, fused: the same results, faster.

        Only the recurrence is sequential: each step's RNN input needs the previous step's context. The first
        layer's input projection splits along `x_t = [emb(y_{t-1}) ; c_{t-1}]`,
            W_ih x_t + b_ih = (W_ih[:, :E] emb(y_{t-1}) + b_ih) + W_ih[:, E:] c_{t-1},
        and the first term, which does not depend on earlier steps, is one product for all T steps. Each layer
        then applies the `nn.GRU`/`nn.LSTM` cell equations (`gru_cell`, `lstm_cell`) to its input gates, with the
        same weights and the dropout the stacked RNN applies between layers.
        """
        rnn, num_layers, embedding_size = self.rnn, self.config.decoder_layers, self.config.embedding_size
        cell_step = CELLS[self.config.rnn_cell]
        weight_ih = rnn.weight_ih_l0
        # unbind, not [:, t]: its backward stacks T gradients once instead of filling T full-size zero tensors.
        embedded_gates = F.linear(embedded, weight_ih[:, :embedding_size], rnn.bias_ih_l0).unbind(1)  # T x (B x G*H)
        weight_context = weight_ih[:, embedding_size:]
        layer_states = list(zip(*(s.unbind(1) for s in state.rnn_state())))  # L x ((h,) or (h, c), B x H each)
        context = state.context  # B x K
        tops, contexts, weights, lower_layers = [], [], [], []
        for step, step_gates in enumerate(embedded_gates):
            gates = step_gates + F.linear(context, weight_context)
            for layer in range(num_layers):
                if layer > 0:
                    below = F.dropout(layer_states[layer - 1][0], self.config.dropout, self.training)
                    gates = F.linear(below, getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"bias_ih_l{layer}"))
                layer_states[layer] = cell_step(gates, *layer_states[layer], getattr(rnn, f"weight_hh_l{layer}"),
                                                getattr(rnn, f"bias_hh_l{layer}"))
            top = layer_states[-1][0]  # B x H
            step_context, step_weights = self.attention(top.unsqueeze(1), state, keys, attention_mask,
                                                        step)  # B x 1 x K, B x 1 x S
            context = step_context.squeeze(1)
            tops.append(top)
            contexts.append(context)
            weights.append(step_weights)
            if output_hidden_states:
                lower_layers.append([layer_state[0] for layer_state in layer_states[:-1]])
        top = torch.stack(tops, dim=1)  # B x T x H
        final = tuple(torch.stack(parts, dim=1) for parts in zip(*layer_states))  # (h,) or (h, c), B x L x H each
        new_state = RNNAttnState.from_rnn(final, context=context, projected_keys=state.projected_keys,
                                          seen_tokens=state.seen_tokens + embedded.size(1))
        layers = (*(torch.stack(states, dim=1) for states in zip(*lower_layers)), top) if output_hidden_states else None
        return self.output(top, torch.stack(contexts, dim=1)), torch.cat(weights, dim=1), new_state, layers


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
