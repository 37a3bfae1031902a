"""generate()'s greedy and beam-search loops, lean: finished sentences leave the batch.

transformers' loops keep every sentence of a batch in every step until the last one ends, and call the full
`forward` (input checks, output classes) each step. A recurrent state can simply drop the rows of finished
sentences, so here each step runs the decoder and the output layer on the unfinished rows only. The search is
transformers' own: the same stopping criteria and, for beam search, the same helper methods of
`GenerationMixin` (top-k continuations, finished-hypothesis updates, the early-stop heuristic), applied to the
sentences still open. A sentence leaves once transformers' loop could no longer change its result (greedy: it
hit a stopping criterion; beam search: its early-stop heuristic is satisfied, or with `early_stopping=True`
all its beams are finished), so the tokens and scores are the same.

`RNNAttnForConditionalGeneration` uses these loops when no logits processor, streamer or per-step output
(`return_dict_in_generate`) is asked for, and transformers' own loops otherwise.

Shapes: B sentences, N beams, R = B x N rows, A active sentences, M max_length.
"""

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from .beam_penalties import CoveragePenaltyMixin


def lean_decoding_applies(logits_processor, stopping_criteria, generation_config, synced_gpus, streamer,
                          model_kwargs):
    """Plain greedy or beam search: nothing that needs transformers' loops. `source_length_cap` needs this."""
    applies = (len(logits_processor) == 0 and streamer is None and not synced_gpus
               and all(isinstance(criterion, (EosTokenCriteria, MaxLengthCriteria)) for criterion in stopping_criteria)
               and stopping_criteria.max_length is not None
               and not generation_config.return_dict_in_generate and not generation_config.do_sample
               and model_kwargs.get("past_key_values") is None and model_kwargs.get("encoder_outputs") is not None)
    if not applies and model_kwargs.get("source_length_cap") is not None:
        raise ValueError("`source_length_cap` works with plain greedy and beam search only: no sampling, logits "
                         "processors (no_repeat_ngram_size, min_new_tokens, ...), streamer or return_dict_in_generate.")
    return applies


class ActiveRows:
    """The decoder inputs of the rows still decoding: state, keys and source mask, shrunk as sentences end."""

    def __init__(self, model, model_kwargs, track_coverage=False):
        encoder_outputs = model_kwargs["encoder_outputs"]
        self.model = model
        self.keys = encoder_outputs.last_hidden_state  # R x S x K
        self.mask = model_kwargs.get("attention_mask")
        if self.mask is None:
            self.mask = self.keys.new_ones(self.keys.shape[:2], dtype=torch.long)
        self.state = model.model.decoder.initial_state(encoder_outputs, track_coverage=track_coverage)
        # Under local-m (`p_t = t`) a row joining later would take the step count of the rows already decoding,
        # which the state holds once for all rows (`seen_tokens`).
        self.refillable = model.config.attention_type != "local-m"

    def next_logits(self, tokens):
        """Logits of the next token (R x V, float32) after feeding `tokens`: R x P (the prompt) or R (one step)."""
        tokens = tokens if tokens.dim() == 2 else tokens[:, None]
        features, _, self.state = self.model.model.decoder(tokens, self.state, self.keys, self.mask)
        return self.model.lm_head(features[:, -1]).float()  # R x V

    def keep(self, rows):
        """Keeps (and reorders to) `rows` of the current rows, on the source columns that they still read."""
        self.state.select_rows(rows)
        self.keys = self.keys.index_select(0, rows)
        self.mask = self.mask.index_select(0, rows)
        self._resize_source(int(self.mask.sum(dim=1).max()) if rows.numel() else self.mask.size(1))

    def take(self, rows):
        """A new `ActiveRows` holding a copy of `rows`; this one is unchanged."""
        taken = copy.copy(self)
        taken.state = replace(self.state)
        taken.keep(rows)
        return taken

    def extend(self, other):
        """Appends the rows of `other` after these, both padded to the wider source."""
        width = max(self.mask.size(1), other.mask.size(1))
        self._resize_source(width)
        other._resize_source(width)
        for name, tensor in self.state.tensors().items():
            setattr(self.state, name, torch.cat([tensor, getattr(other.state, name)]))
        self.keys = torch.cat([self.keys, other.keys])
        self.mask = torch.cat([self.mask, other.mask])

    def _resize_source(self, width):
        """Cuts or pads (with padding) the source columns of the keys, mask and state to `width`.

        Masks are right-padded, and attention gives padding exactly 0, so this changes nothing but the work: once
        the sentences with the longest sources have ended, the others no longer attend over their padding.
        """
        extra = width - self.mask.size(1)
        if extra == 0:
            return

        def resize(tensor):  # B x S x ...
            if extra < 0:
                return tensor[:, :width].contiguous()
            return F.pad(tensor, (0, 0) * (tensor.dim() - 2) + (0, extra))

        self.keys, self.mask = resize(self.keys), resize(self.mask)
        self.state.projected_keys = resize(self.state.projected_keys)  # B x S x ...
        if self.state.coverage is not None:
            self.state.coverage = resize(self.state.coverage)  # B x S


def source_length_limits(source_length_cap, attention_mask, prompt_len, rows_per_sentence=1):
    """Each sentence's `max_length` under `source_length_cap=(a, b)`: at most `a * S + b` new tokens for a source
    of S real tokens. An option, not a default: it can cut a translation that would have ended later."""
    if (not isinstance(source_length_cap, (tuple, list)) or len(source_length_cap) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in source_length_cap)
            or source_length_cap[0] <= 0 or source_length_cap[1] < 0):
        raise ValueError(f"`source_length_cap` must be (ratio > 0, offset >= 0), e.g. (1.5, 10): at most "
                         f"ratio x source tokens + offset new tokens; got {source_length_cap!r}.")
    ratio, offset = source_length_cap
    source_lengths = attention_mask[::rows_per_sentence].sum(dim=1)  # B
    return prompt_len + torch.ceil(ratio * source_lengths + offset).long()


@torch.no_grad()
def greedy_search(model, input_ids, stopping_criteria, generation_config, source_length_cap=None,
                  max_active_rows=None, rows_class=ActiveRows, **model_kwargs):
    """transformers' greedy `_sample` loop: argmax until a stopping criterion holds; ended rows hold padding.

    Rows leave as their sentences end. With `max_active_rows` (a one-token decoder prompt, not local-m), at most that
    many sentences decode at once, and those that end are replaced by the next waiting ones: batches of a fixed
    set run as long as their longest translation, the last steps with a few rows, which cost almost as much as
    full ones (the output layer's weights are read either way). Each row's computation is the same whenever it
    joins. The stopping criteria, EOS and max_length only (`lean_decoding_applies`), hold per row, at each row's
    own length. `rows_class`: `ActiveRows`, or an ensemble's (`ensemble.EnsembleRows`).
    """
    pad_token_id = generation_config._pad_token_tensor
    eos = next((criterion.eos_token_id for criterion in stopping_criteria
                if isinstance(criterion, EosTokenCriteria)), None)
    max_length = stopping_criteria.max_length
    batch_size, prompt_len = input_ids.shape
    device = input_ids.device
    sequences = input_ids.new_full((batch_size, max_length), int(pad_token_id) if pad_token_id is not None else 0)
    sequences[:, :prompt_len] = input_ids
    waiting = rows_class(model, model_kwargs)  # every sentence, before its first step
    limits = None
    if source_length_cap is not None:
        limits = source_length_limits(source_length_cap, waiting.mask, prompt_len)
    # Rows joining later would need their whole prompt first, and some states cannot take rows that join later.
    if max_active_rows is None or prompt_len > 1 or not waiting.refillable:
        max_active_rows = batch_size
    lengths = torch.full((batch_size,), prompt_len, device=device)  # tokens in each sequence
    active = torch.zeros(0, dtype=torch.long, device=device)  # sentence of each row
    tokens, rows, next_sentence = input_ids[:0], None, 0  # tokens: A x P, the prompt first, as transformers' prefill
    while True:
        free = max_active_rows - active.numel()
        # Refill in groups: joining rows copies the state, so not for every single sentence that ends.
        if next_sentence < batch_size and (free >= max(1, max_active_rows // 8) or not active.numel()):
            joining = torch.arange(next_sentence, min(batch_size, next_sentence + free), device=device)
            next_sentence += joining.numel()
            new_rows = waiting if joining.numel() == batch_size else waiting.take(joining)
            if rows is None:
                rows = new_rows
            else:
                rows.extend(new_rows)
            active, tokens = torch.cat([active, joining]), torch.cat([tokens, input_ids[joining]])
        if not active.numel():
            return sequences[:, :int(lengths.max())]
        tokens = rows.next_logits(tokens).argmax(dim=-1, keepdim=True)  # A x 1
        positions = lengths[active]
        sequences[active, positions] = tokens[:, 0]
        lengths[active] = positions + 1
        done = positions + 1 >= max_length
        if eos is not None:
            done |= torch.isin(tokens[:, 0], eos.to(device))
        if limits is not None:
            done |= limits[active] <= positions + 1
        if done.any():
            open_rows = (~done).nonzero().squeeze(1)
            rows.keep(open_rows)
            active, tokens = active[open_rows], tokens[open_rows]


@torch.no_grad()
def beam_search(model, input_ids, stopping_criteria, generation_config, source_length_cap=None, rows_class=ActiveRows,
                **model_kwargs):
    """transformers' `_beam_search` loop (no sampling), on the sentences whose result can still change.

    `rows_class` as in `greedy_search`. A coverage penalty (`model._coverage_penalty`, see `beam_penalties.py`)
    is shown each step's coverage; `model._update_finished_beams` applies it."""
    pad_token_id, eos_token_id = generation_config._pad_token_tensor, generation_config._eos_token_tensor
    early_stopping, length_penalty = generation_config.early_stopping, generation_config.length_penalty
    max_length, num_beams = generation_config.max_length, generation_config.num_beams
    num_return_sequences = generation_config.num_return_sequences
    rows_count, cur_len = input_ids.shape
    batch_size, prompt_len, device = rows_count // num_beams, cur_len, input_ids.device
    beams_to_keep = max(2, 1 + (eos_token_id.shape[0] if eos_token_id is not None else 0)) * num_beams
    top_num_beam_mask = torch.arange(beams_to_keep, device=device) < num_beams

    # Full-batch search tensors, as in transformers (B x N x ...); each step reads and writes the active rows.
    fill_value = pad_token_id or eos_token_id[0] if eos_token_id is not None else -1
    running_sequences = input_ids.new_full((batch_size, num_beams, max_length), int(fill_value))
    running_sequences[:, :, :cur_len] = input_ids.view(batch_size, num_beams, cur_len)
    sequences = running_sequences.clone()
    running_scores = torch.zeros((batch_size, num_beams), device=device)
    running_scores[:, 1:] = -1e9
    scores = torch.full((batch_size, num_beams), -1e9, device=device)
    finished = torch.zeros((batch_size, num_beams), dtype=torch.bool, device=device)
    open_sentence = torch.ones((batch_size, 1), dtype=torch.bool, device=device)  # early-stop heuristic unsatisfied
    running_indices = torch.full((batch_size, num_beams, max_length - cur_len), -1, dtype=torch.int32, device=device)
    indices = running_indices.clone()

    coverage = model._coverage_penalty
    rows = rows_class(model, model_kwargs, track_coverage=coverage is not None)
    limits = None
    if source_length_cap is not None:
        limits = source_length_limits(source_length_cap, rows.mask, cur_len, rows_per_sentence=num_beams)
    active = torch.arange(batch_size, device=device)
    tokens = input_ids  # the whole decoder prompt first, as transformers' prefill step
    while True:
        count = active.numel()
        log_probs = rows.next_logits(tokens).log_softmax(dim=-1).view(count, num_beams, -1)
        if coverage is not None:
            coverage.observe(rows.state.coverage, rows.mask)
        log_probs = log_probs + running_scores[active, :, None]
        topk_log_probs, topk_sequences, topk_indices = model._get_top_k_continuations(
            accumulated_log_probs=log_probs.view(count, -1), running_sequences=running_sequences[active],
            running_beam_indices=running_indices[active], cur_len=cur_len, decoder_prompt_len=prompt_len,
            do_sample=False, beams_to_keep=beams_to_keep, num_beams=num_beams, batch_size=count)
        hits_stop = stopping_criteria(topk_sequences[:, :, :cur_len + 1].flatten(0, 1), None).view(count, -1)
        if limits is not None:  # as if each sentence had its own max_length
            hits_stop |= (limits[active] <= cur_len + 1)[:, None]
        new_running = model._get_running_beams_for_next_iteration(
            topk_log_probs=topk_log_probs, topk_running_sequences=topk_sequences,
            topk_running_beam_indices=topk_indices, next_token_hits_stopping_criteria=hits_stop, num_beams=num_beams)
        running_sequences[active], running_scores[active], running_indices[active] = new_running
        new_finished = model._update_finished_beams(
            sequences=sequences[active], topk_running_sequences=topk_sequences, beam_scores=scores[active],
            topk_log_probs=topk_log_probs, beam_indices=indices[active], topk_running_beam_indices=topk_indices,
            is_early_stop_heuristic_unsatisfied=open_sentence[active], is_sent_finished=finished[active],
            next_token_hits_stopping_criteria=hits_stop, top_num_beam_mask=top_num_beam_mask, num_beams=num_beams,
            cur_len=cur_len, decoder_prompt_len=prompt_len, length_penalty=length_penalty,
            early_stopping=early_stopping)
        sequences[active], scores[active], indices[active], finished[active] = new_finished
        beam_rows = new_running[2][..., cur_len - prompt_len].flatten()  # the surviving beams' rows, A x N
        rows.state.reorder_cache(beam_rows)
        cur_len += 1
        open_sentence[active] = model._check_early_stop_heuristic(
            is_early_stop_heuristic_unsatisfied=open_sentence[active], running_beam_scores=running_scores[active],
            beam_scores=scores[active], is_sent_finished=finished[active], cur_len=cur_len, max_length=max_length,
            decoder_prompt_len=prompt_len, early_stopping=early_stopping, length_penalty=length_penalty)
        still_open = open_sentence[active, 0] & ~hits_stop.all(dim=1)
        if early_stopping is True:
            still_open &= ~finished[active].all(dim=1)
        if not still_open.any():
            break
        tokens = running_sequences[active, :, cur_len - 1].flatten()
        if not still_open.all():
            kept = still_open.nonzero().squeeze(1)  # indices into `active`
            kept_rows = (kept[:, None] * num_beams + torch.arange(num_beams, device=device)).flatten()
            rows.keep(kept_rows)
            active, tokens = active[kept], tokens[kept_rows]

    sequences = sequences[:, :num_return_sequences].flatten(0, 1)
    indices = indices[:, :num_return_sequences].flatten(0, 1)
    return sequences[:, :prompt_len + int((indices + 1).bool().sum(dim=1).max())]


class LeanGenerationMixin(CoveragePenaltyMixin):
    """generate()'s greedy `_sample` and `_beam_search` run the lean loops above when they apply (same tokens,
    ended sentences leave the batch), else transformers' loops; beam search takes GNMT's coverage penalty
    (`beam_penalties.py`). For one model and for an ensemble: `_rows_class` holds the rows' decoder inputs, and
    `_coverage_tracking_state(encoder_outputs)` is the first decoder state of transformers' loop when it must sum
    the attention weights."""

    _rows_class = ActiveRows

    def _sample(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                streamer=None, **model_kwargs):
        if lean_decoding_applies(logits_processor, stopping_criteria, generation_config, synced_gpus, streamer,
                                 model_kwargs):
            return greedy_search(self, input_ids, stopping_criteria, generation_config, rows_class=self._rows_class,
                                 **model_kwargs)
        return super()._sample(input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus,
                               streamer, **model_kwargs)

    def _beam_search(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                     coverage_penalty=None, **model_kwargs):
        with self._scoring_coverage(coverage_penalty):
            if lean_decoding_applies(logits_processor, stopping_criteria, generation_config, synced_gpus, None,
                                     model_kwargs):
                return beam_search(self, input_ids, stopping_criteria, generation_config, rows_class=self._rows_class,
                                   **model_kwargs)
            if coverage_penalty is not None:  # the first state, which sums the attention weights from here on
                model_kwargs["past_key_values"] = self._coverage_tracking_state(model_kwargs["encoder_outputs"])
            return super()._beam_search(input_ids, logits_processor, stopping_criteria, generation_config,
                                        synced_gpus, **model_kwargs)
