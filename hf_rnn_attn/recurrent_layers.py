"""The recurrent encoder and the attentional decoder, in plain PyTorch: the layers of the two architectures.

`modeling_rnn_attn` wraps them in transformers' model classes; this module imports only torch (and its siblings
that do), so that `hf-rnn-attn translate` can run them without importing transformers
(`hf_rnn_attn_runtime.torch_backend`). The README's design notes list where each equation is.

Shapes: B batch, S source length, T target length, E embedding size, H decoder hidden size,
K encoder output size (2 x encoder hidden size when bidirectional), L layers, V vocabulary size.
"""

import logging
from dataclasses import dataclass, fields, replace
from functools import cache, partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .attention import ALIGNMENTS, SCORES, attend, local_window
from .fused_gru import gru_directions
from .fused_unroll import fuses, unroll_gru_attention
from .mixed_precision import cpu_autocast_supports, float32_fast_paths_run, without_autocast

logger = logging.getLogger(__name__)

# Rows per block of the encoder's packed RNN on the CPU without gradients (`RecurrentEncoder.encode`).
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
        _warn_once(f"This CPU has no {dtype} kernel for {type(rnn).__name__}; it runs in float32.")
        with torch.autocast("cpu", enabled=False):
            return run_rnn(rnn, inputs.float(), None if state is None else tuple(s.float() for s in state))
    if state is not None:
        state = tuple(s.transpose(0, 1).contiguous() for s in state)  # layers x B x H
        state = state[0] if isinstance(rnn, nn.GRU) else state
    outputs, final = rnn(inputs, state)
    final = final if isinstance(final, tuple) else (final,)
    return outputs, tuple(s.transpose(0, 1) for s in final)  # B x layers x H


@cache
def _warn_once(message):
    logger.warning(message)


def run_gru_padded(gru, embedded, lengths):
    """`run_rnn(gru, pack_padded_sequence(embedded, lengths))` for a batch-first `nn.GRU`, on the padded batch.

    The same states (within float rounding), faster to train: the packed GRU's backward pass fills a zero gradient
    the size of the whole packed input at every step (the backward of its per-step `narrow`). Each row's padding
    comes after its tokens, so a forward direction reads it only after its last real state; a backward direction
    runs over each row reversed within its length. Padded positions are zero, as `pad_packed_sequence` leaves them.
    On the CPU a layer's directions run side by side with a hand-written backward pass (`fused_gru.py`); elsewhere
    each runs as `torch.gru` (cuDNN on a GPU).

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
        direction_inputs = [inputs]
        if directions > 1:
            direction_inputs.append(inputs.gather(1, reversed_order[..., None].expand(-1, -1, inputs.size(-1))))
        weights = [[getattr(gru, f"{name}_l{layer}" + ("_reverse" if direction else ""))
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")] for direction in range(directions)]
        if inputs.device.type == "cpu":
            all_states = gru_directions(direction_inputs, weights)  # B x S x H each
        else:
            all_states = [torch.gru(direction_input, direction_input.new_zeros(1, inputs.size(0), gru.hidden_size),
                                    direction_weights, True, 1, 0.0, gru.training, False, True)[0]
                          for direction_input, direction_weights in zip(direction_inputs, weights)]
        outputs = []
        for direction, states in enumerate(all_states):
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


@dataclass
class EncoderStates:
    """What the encoder computes: `modeling_rnn_attn.RNNAttnEncoderOutput`'s fields (documented there), which
    transformers' callers get as that `ModelOutput`."""

    last_hidden_state: torch.Tensor
    final_hidden_state: torch.Tensor
    final_cell_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class RecurrentEncoder(nn.Module):
    """Embeddings and a (bi)directional stacked GRU/LSTM over the packed source."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = build_rnn(config, config.embedding_size, config.encoder_hidden_size, config.encoder_layers,
                             bidirectional=config.bidirectional_encoder)

    def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=False):
        """`EncoderStates` of the source: `input_ids` (B x S), or `inputs_embeds` (B x S x E) in their place, and
        `attention_mask` (B x S, right-padded; default all ones)."""
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
            return EncoderStates(last_hidden_state=states, final_hidden_state=final[0])
        # On the CPU without gradients, blocks of rows: the per-step gates of a batch of a thousand sentences
        # spill out of the cache. Not while tracing (ONNX export), which would record the blocks' fixed row ranges.
        if (torch.is_grad_enabled() or embedded.device.type != "cpu" or torch.jit.is_tracing()
                or embedded.size(0) <= INFERENCE_ROWS_PER_BLOCK):
            states, final, lower_layers = self._run_packed(embedded, lengths, output_hidden_states)
        else:
            states, final, lower_layers = self._run_packed_in_blocks(embedded, lengths, output_hidden_states)
        hidden_states = (embedded, *lower_layers, states) if output_hidden_states else None
        final_hidden, final_cell = hidden_and_cell(final)  # B x (L * directions) x He each
        return EncoderStates(last_hidden_state=states, final_hidden_state=final_hidden, final_cell_state=final_cell,
                             hidden_states=hidden_states)

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
