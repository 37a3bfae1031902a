"""generate()'s greedy and beam-search loops, lean: finished sentences leave the batch, waiting ones join it.

transformers' loops keep every sentence of a batch in every step until the last one ends, and call the full
`forward` (input checks, output classes) each step. A recurrent state can simply drop the rows of finished
sentences, so here each step runs the decoder and the output layer on the unfinished rows only, and with
`max_active_rows` the rows of sentences that end are given to sentences still waiting. The search is
transformers' own: the same stopping criteria and, for beam search, the same step (top-k continuations,
finished-hypothesis updates, the early-stop heuristic; written out for sentences of different lengths), applied
to the sentences still open. A sentence leaves once transformers' loop could no longer change its result (greedy:
it hit a stopping criterion; beam search: its early-stop heuristic is satisfied, or with `early_stopping=True`
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
from .onednn_products import output_logits


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
    """The decoder inputs of the rows still decoding: state, keys and source mask, shrunk as sentences end.

    `model_kwargs` hold one source per sentence (`LeanGenerationMixin` does not repeat them for beams), and
    `rows_per_source` decoder rows decode each. With `share_sources` (one-token steps, global attention) those rows,
    a sentence's beams, share one copy of its source: keys, mask and projected keys hold one row per sentence,
    copied, shrunk and attended over once for all its beams; else each row gets its own copy.
    """

    def __init__(self, model, model_kwargs, track_coverage=False, rows_per_source=1, share_sources=True):
        encoder_outputs = model_kwargs["encoder_outputs"]
        self.model = model
        self.keys = encoder_outputs.last_hidden_state  # B x S x K
        self.mask = model_kwargs.get("attention_mask")
        if self.mask is None:
            self.mask = self.keys.new_ones(self.keys.shape[:2], dtype=torch.long)
        shared = share_sources and model.config.attention_type == "global"
        if rows_per_source > 1 and not shared:
            encoder_outputs = repeat_rows(encoder_outputs, rows_per_source)
            self.keys, self.mask = encoder_outputs.last_hidden_state, self.mask.repeat_interleave(rows_per_source, 0)
        self.rows_per_source = rows_per_source if shared else 1
        self.state = model.model.decoder.initial_state(encoder_outputs, track_coverage=track_coverage)
        if self.rows_per_source > 1:
            for name, tensor in self.state.tensors().items():
                if name != "projected_keys":
                    setattr(self.state, name, tensor.repeat_interleave(self.rows_per_source, dim=0))
        # Under local-m (`p_t = t`) a row joining later would take the step count of the rows already decoding,
        # which the state holds once for all rows (`seen_tokens`).
        self.refillable = model.config.attention_type != "local-m"

    def row_mask(self):
        """The source mask of each row (R x S)."""
        return self.mask if self.rows_per_source == 1 else self.mask.repeat_interleave(self.rows_per_source, dim=0)

    def next_logits(self, tokens):
        """Logits of the next token (R x V, float32) after feeding `tokens`: R x P (the prompt) or R (one step)."""
        tokens = tokens if tokens.dim() == 2 else tokens[:, None]
        features, _, self.state = self.model.model.decoder(tokens, self.state, self.keys, self.mask,
                                                           rows_per_source=self.rows_per_source)
        return output_logits(self.model.lm_head, features[:, -1]).float()  # R x V

    def keep(self, rows):
        """Keeps (and reorders to) `rows` of the current rows, on the source columns that they still read. With
        shared sources, `rows` keeps or drops whole groups of `rows_per_source`."""
        sources = rows[::self.rows_per_source] // self.rows_per_source
        self.state.select_rows(rows, source_rows=sources)
        self.keys = self.keys.index_select(0, sources)
        self.mask = self.mask.index_select(0, sources)
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


def repeat_rows(outputs, repeats):
    """A `ModelOutput` (an encoder's) with each row of its tensors `repeats` times, as generate() repeats them."""
    return type(outputs)(**{name: value.repeat_interleave(repeats, dim=0) if isinstance(value, torch.Tensor) else value
                            for name, value in outputs.items()})


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


def join_waiting(waiting, rows, active, tokens, input_ids, next_sentence, max_sentences, rows_per_sentence=1):
    """Moves the next waiting sentences into the batch (`rows`, None before the first) once an eighth of its
    `max_sentences` places are free, or it is empty: joining copies rows of the state, so not for every single
    sentence that ends. `rows_per_sentence` rows (beams) decode each sentence, from its rows of `input_ids`.
    Returns the rows, the active sentences, their tokens (the prompt for those joining) and the next waiting one."""
    sentences = input_ids.shape[0] // rows_per_sentence
    free = max_sentences - active.numel()
    if next_sentence >= sentences or (free < max(1, max_sentences // 8) and active.numel()):
        return rows, active, tokens, next_sentence
    joining = torch.arange(next_sentence, min(sentences, next_sentence + free), device=input_ids.device)
    joining_rows = (joining[:, None] * rows_per_sentence
                    + torch.arange(rows_per_sentence, device=input_ids.device)).flatten()
    new_rows = waiting if joining.numel() == sentences else waiting.take(joining_rows)
    if rows is None:
        rows = new_rows
    else:
        rows.extend(new_rows)
    return (rows, torch.cat([active, joining]), torch.cat([tokens, input_ids[joining_rows]]),
            next_sentence + joining.numel())


def stopping_eos(stopping_criteria):
    """The end-of-sequence ids (a tensor) of generate()'s stopping criteria, None without an EOS criterion."""
    return next((criterion.eos_token_id for criterion in stopping_criteria
                 if isinstance(criterion, EosTokenCriteria)), None)


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
    eos = stopping_eos(stopping_criteria)
    max_length = stopping_criteria.max_length
    batch_size, prompt_len = input_ids.shape
    device = input_ids.device
    sequences = input_ids.new_full((batch_size, max_length), int(pad_token_id) if pad_token_id is not None else 0)
    sequences[:, :prompt_len] = input_ids
    waiting = rows_class(model, model_kwargs)  # every sentence, before its first step
    limits = None
    if source_length_cap is not None:
        limits = source_length_limits(source_length_cap, waiting.row_mask(), prompt_len)
    # Rows joining later would need their whole prompt first, and some states cannot take rows that join later.
    if max_active_rows is None or prompt_len > 1 or not waiting.refillable:
        max_active_rows = batch_size
    lengths = torch.full((batch_size,), prompt_len, device=device)  # tokens in each sequence
    active = torch.zeros(0, dtype=torch.long, device=device)  # sentence of each row
    tokens, rows, next_sentence = input_ids[:0], None, 0  # tokens: A x P, the prompt first, as transformers' prefill
    while True:
        rows, active, tokens, next_sentence = join_waiting(waiting, rows, active, tokens, input_ids, next_sentence,
                                                           max_active_rows)
        if not active.numel():
            return sequences[:, :int(lengths.max())]
        # The first largest logit, as argmax (which takes ~3x as long on the CPU).
        tokens = rows.next_logits(tokens).max(dim=-1, keepdim=True).indices  # A x 1
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
def beam_search(model, input_ids, stopping_criteria, generation_config, source_length_cap=None, max_active_rows=None,
                rows_class=ActiveRows, **model_kwargs):
    """transformers' `_beam_search` (no sampling), on the sentences whose result can still change.

    Each step is that of transformers' loop, written out for sentences of different lengths (transformers' helper
    methods take one length for the whole batch): the top 2N continuations of each sentence's N beams, the N best
    that do not end continue, those that end among the top N enter the sentence's finished hypotheses (scored
    `sum log p / new_tokens ** length_penalty`), and the early-stop heuristic closes a sentence. With
    `max_active_rows` (a one-token decoder prompt, not local-m), at most that many rows (`max_active_rows // N`
    sentences, at least one) decode at once, and sentences that end are replaced by waiting ones, as in
    `greedy_search`: the same translations, without the long tail of steps on a few unfinished sentences.

    `rows_class` as in `greedy_search`. A coverage penalty (`model._coverage_penalty`, see `beam_penalties.py`)
    is shown each step's coverage and adds to the finished hypotheses' scores.
    """
    pad_token_id, eos_token_id = generation_config._pad_token_tensor, generation_config._eos_token_tensor
    early_stopping, length_penalty = generation_config.early_stopping, generation_config.length_penalty
    num_beams, num_return_sequences = generation_config.num_beams, generation_config.num_return_sequences
    max_length = stopping_criteria.max_length
    eos = stopping_eos(stopping_criteria)
    rows_count, prompt_len = input_ids.shape
    batch_size, device = rows_count // num_beams, input_ids.device
    beams_to_keep = max(2, 1 + (eos_token_id.shape[0] if eos_token_id is not None else 0)) * num_beams
    top_num_beam_mask = torch.arange(beams_to_keep, device=device) < num_beams
    # n ** length_penalty for n new tokens, as transformers computes it (a Python float, used in float32).
    penalties = torch.tensor([1.0] + [n ** length_penalty for n in range(1, max_length + 1)], device=device)

    # Per sentence: its N running beams and N best finished hypotheses (B x N x ...), and its length (B).
    fill_value = pad_token_id or eos_token_id[0] if eos_token_id is not None else -1
    running_sequences = input_ids.new_full((batch_size, num_beams, max_length), int(fill_value))
    running_sequences[:, :, :prompt_len] = input_ids.view(batch_size, num_beams, prompt_len)
    sequences = running_sequences.clone()
    running_scores = torch.zeros((batch_size, num_beams), device=device)
    running_scores[:, 1:] = -1e9
    scores = torch.full((batch_size, num_beams), -1e9, device=device)
    finished = torch.zeros((batch_size, num_beams), dtype=torch.bool, device=device)
    finished_lengths = torch.full((batch_size, num_beams), prompt_len, device=device)
    open_sentence = torch.ones((batch_size, 1), dtype=torch.bool, device=device)  # early-stop heuristic unsatisfied
    lengths = torch.full((batch_size,), prompt_len, device=device)

    coverage = model._coverage_penalty
    # Every row, before its first step; the beams of a sentence share its source when they step one token at a time.
    waiting = rows_class(model, model_kwargs, track_coverage=coverage is not None, rows_per_source=num_beams,
                         share_sources=prompt_len == 1)
    limits = None
    if source_length_cap is not None:
        limits = source_length_limits(source_length_cap, waiting.row_mask(), prompt_len,
                                      rows_per_sentence=num_beams)
    max_sentences = batch_size
    if max_active_rows is not None and prompt_len == 1 and waiting.refillable:
        max_sentences = max(1, max_active_rows // num_beams)
    beam_offsets = torch.arange(num_beams, device=device)
    active = torch.zeros(0, dtype=torch.long, device=device)  # sentence of each group of N rows
    tokens, rows, next_sentence = input_ids[:0], None, 0  # tokens: A N x P, the prompt first
    while True:
        rows, active, tokens, next_sentence = join_waiting(waiting, rows, active, tokens, input_ids, next_sentence,
                                                           max_sentences, rows_per_sentence=num_beams)
        if not active.numel():
            break
        count, length = active.numel(), lengths[active]  # A, A
        log_probs = rows.next_logits(tokens).log_softmax(dim=-1).view(count, num_beams, -1)
        if coverage is not None:
            coverage.observe(rows.state.coverage, rows.row_mask())
        vocab_size = log_probs.shape[-1]
        log_probs.add_(running_scores[active, :, None])  # in place: a fresh R x V tensor costs ~2% of the search
        # The top 2N continuations: beam `parents` plus one token each, written at the sentence's own length.
        topk_log_probs, topk_indices = torch.topk(log_probs.view(count, -1), k=beams_to_keep)  # A x K
        parents, topk_tokens = topk_indices // vocab_size, topk_indices % vocab_size
        width = int(length.max()) + 1  # the positions any active sentence has written, and the new one
        candidates = running_sequences[active, :, :width].gather(1, parents[..., None].expand(-1, -1, width))
        candidates.scatter_(2, length[:, None, None].expand(-1, beams_to_keep, 1), topk_tokens[..., None])
        hits_stop = (length + 1 >= max_length)[:, None].expand(-1, beams_to_keep)
        if eos is not None:
            hits_stop = hits_stop | torch.isin(topk_tokens, eos.to(device))
        if limits is not None:  # as if each sentence had its own max_length
            hits_stop = hits_stop | (limits[active] <= length + 1)[:, None]
        # The N best continuations that do not end run on (`_get_running_beams_for_next_iteration`).
        running_log_probs = topk_log_probs + hits_stop.to(torch.float32) * -1.0e9
        next_beams = torch.topk(running_log_probs, k=num_beams)[1]  # A x N, indices into the K
        running_sequences[active, :, :width] = candidates.gather(1, next_beams[..., None].expand(-1, -1, width))
        new_running_scores = running_log_probs.gather(1, next_beams)  # A x N
        running_scores[active] = new_running_scores
        # Those that end among the top N join the finished hypotheses (`_update_finished_beams`).
        just_finished = hits_stop & top_num_beam_mask[None, :]
        penalty = penalties[length + 1 - prompt_len][:, None]  # A x 1: new tokens ** length_penalty
        first_rows = torch.arange(count, device=device)[:, None] * num_beams  # A x 1: each sentence's first row
        if coverage is not None:
            topk_log_probs = topk_log_probs + coverage.row_penalty[first_rows + parents] * penalty
        finished_scores = topk_log_probs / penalty
        was_finished, was_open = finished[active], open_sentence[active]  # A x N, A x 1
        all_finished = was_finished.all(dim=-1, keepdim=True) & (early_stopping is True)
        finished_scores += all_finished.to(torch.float32) * -1.0e9
        finished_scores += (~was_open).to(torch.float32) * -1.0e9
        finished_scores += (~just_finished) * -1.0e9
        merged_scores = torch.cat([scores[active], finished_scores], dim=1)  # A x (N + K)
        best = torch.topk(merged_scores, k=num_beams)[1]  # A x N
        merged_sequences = torch.cat([sequences[active, :, :width], candidates], dim=1)
        sequences[active, :, :width] = merged_sequences.gather(1, best[..., None].expand(-1, -1, width))
        new_scores = merged_scores.gather(1, best)
        new_finished = torch.cat([was_finished, just_finished], dim=1).gather(1, best)
        scores[active], finished[active] = new_scores, new_finished
        merged_lengths = torch.cat([finished_lengths[active], (length + 1)[:, None].expand(-1, beams_to_keep)], dim=1)
        finished_lengths[active] = merged_lengths.gather(1, best)
        # The rows of the surviving beams, and the early-stop heuristic (`_check_early_stop_heuristic`).
        rows.state.reorder_cache((first_rows + parents.gather(1, next_beams)).flatten())
        length = length + 1
        lengths[active] = length
        if early_stopping == "never" and length_penalty > 0.0:
            best_running = new_running_scores[:, :1] / penalties[max_length - prompt_len]
        else:
            best_running = new_running_scores[:, :1] / penalties[length - prompt_len][:, None]
        worst_finished = torch.where(new_finished, new_scores.min(dim=1, keepdim=True)[0], -1.0e9)
        new_open = was_open & (best_running > worst_finished).any(dim=-1, keepdim=True)
        open_sentence[active] = new_open
        still_open = new_open[:, 0] & ~hits_stop.all(dim=1)
        if early_stopping is True:
            still_open &= ~new_finished.all(dim=1)
        tokens = topk_tokens.gather(1, next_beams).reshape(-1, 1)  # A N x 1
        if not still_open.all():
            kept = still_open.nonzero().squeeze(1)  # indices into `active`
            kept_rows = (kept[:, None] * num_beams + beam_offsets).flatten()
            rows.keep(kept_rows)
            active, tokens = active[kept], tokens[kept_rows]

    returned = slice(None, num_return_sequences)
    sequences, finished_lengths = sequences[:, returned].flatten(0, 1), finished_lengths[:, returned]
    return sequences[:, :int(finished_lengths.max())]


class LeanGenerationMixin(CoveragePenaltyMixin):
    """generate()'s greedy `_sample` and `_beam_search` run the lean loops above when they apply (same tokens,
    ended sentences leave the batch), else transformers' loops; beam search takes GNMT's coverage penalty
    (`beam_penalties.py`). For one model and for an ensemble: `_rows_class` holds the rows' decoder inputs, and
    `_coverage_tracking_state(encoder_outputs)` is the first decoder state of transformers' loop when it must sum
    the attention weights."""

    _rows_class = ActiveRows

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """generate()'s copies for beams and returned sequences, except of the source (encoder outputs and mask):
        the lean loops keep one per sentence (`ActiveRows`), `_repeat_sources` makes them for transformers' loops."""
        sources = {name: model_kwargs.pop(name) for name in ("encoder_outputs", "attention_mask")
                   if name in model_kwargs}
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, False, input_ids, **model_kwargs)
        return input_ids, {**model_kwargs, **sources}

    def _repeat_sources(self, generation_config, model_kwargs):
        """`model_kwargs` with the source repeated as generate() would have: for each beam or returned sequence."""
        repeats = max(generation_config.num_beams or 1, generation_config.num_return_sequences or 1)
        if repeats == 1:
            return model_kwargs
        repeated = {"encoder_outputs": self._repeat_encoder_outputs(model_kwargs["encoder_outputs"], repeats)}
        if model_kwargs.get("attention_mask") is not None:
            repeated["attention_mask"] = model_kwargs["attention_mask"].repeat_interleave(repeats, dim=0)
        return {**model_kwargs, **repeated}

    @staticmethod
    def _repeat_encoder_outputs(encoder_outputs, repeats):
        return repeat_rows(encoder_outputs, repeats)

    def _sample(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                streamer=None, **model_kwargs):
        if lean_decoding_applies(logits_processor, stopping_criteria, generation_config, synced_gpus, streamer,
                                 model_kwargs):
            return greedy_search(self, input_ids, stopping_criteria, generation_config, rows_class=self._rows_class,
                                 **model_kwargs)
        return super()._sample(input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus,
                               streamer, **self._repeat_sources(generation_config, model_kwargs))

    def _beam_search(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                     coverage_penalty=None, **model_kwargs):
        with self._scoring_coverage(coverage_penalty):
            if lean_decoding_applies(logits_processor, stopping_criteria, generation_config, synced_gpus, None,
                                     model_kwargs):
                return beam_search(self, input_ids, stopping_criteria, generation_config, rows_class=self._rows_class,
                                   **model_kwargs)
            model_kwargs = self._repeat_sources(generation_config, model_kwargs)
            if coverage_penalty is not None:  # the first state, which sums the attention weights from here on
                model_kwargs["past_key_values"] = self._coverage_tracking_state(model_kwargs["encoder_outputs"])
            return super()._beam_search(input_ids, logits_processor, stopping_criteria, generation_config,
                                        synced_gpus, **model_kwargs)
