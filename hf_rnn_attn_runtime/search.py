"""Greedy and beam search in numpy over a model's encoder and decoder step, whichever runs them: the ONNX graphs
(`onnx.ONNXTranslator`) or the PyTorch layers without transformers (`torch_backend.TorchTranslator`).

The search is transformers' `generate()` rewritten in numpy (this module imports neither torch nor transformers):
greedy takes the argmax until EOS or `max_length`; beam search keeps `num_beams` hypotheses and applies the same
top-k continuations, finished-hypothesis updates, length penalty, `early_stopping` rules (False, True, "never") and
output padding, so that both return the tokens `generate()` returns. As in `lean_decoding`, a sentence leaves the
batch once its result can no longer change. The decoder step hands back only each row's top-k log-probabilities.

Shapes: B sentences, N beams, R rows (B, or B x N in beam search), S source length, V vocabulary, M max_length.
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import numpy as np

# The decoder step's inputs besides the recurrent state (whose names are those of the encoder's other outputs).
MEMORY_NAMES = ("keys", "projected_keys", "attention_mask")
DEFAULT_MAX_NEW_TOKENS = 256  # RNNAttnTranslationPipeline's length limit when nothing else sets one
NEG_INF = np.float32(-1.0e9)  # transformers' "impossible" score for beams


def shares_sources(config):
    """Whether the decoder step takes one memory row per source for the N rows decoding it (N = rows / sources,
    the beams of a sentence), as `lean_decoding.ActiveRows` shares them: all but local-p attention, whose window
    the decoder places per row."""
    return config.attention_type == "global"


@dataclass
class Generation:
    """What `StepwiseTranslator.generate` returns.

    Attributes:
        sequences: (B x num_return_sequences) x T token ids, starting with the decoder start token and padded as
            `generate()` pads them.
        scores: one per sequence: beam search's `sequences_scores` (summed log-probabilities divided by
            length ** length_penalty, as `generate(output_scores=True)`), or for greedy search the summed
            log-probabilities of the generated tokens.
    """

    sequences: np.ndarray
    scores: np.ndarray


class StepwiseTranslator:
    """Translation of texts and token ids by greedy and beam search, over the `_encode` and `_step` of a subclass.

    A subclass sets `config` (the model's config fields), `generation_config` (`GenerationSettings`), `tokenizer`
    (`ExportedTokenizer`, or None, for which `tokenizer_hint` says what to do), `state_names` (the decoder state's
    arrays) and `threads`: how many searches run at once, each on one thread (`generate` shares a call's sentences
    out among them; no thread waits for another at each step).
    """

    # Whether `__call__`'s `batch_size` sentences decode in each search side by side (the PyTorch backend, as the
    # pipeline's searches do) or in all of them together (the ONNX backend's).
    batch_per_search = False

    # ----------------------------------------------------------------------------------------------- text

    def translate(self, texts, batch_size=32, **kwargs):
        """The translation of each text (its best sequence), in order; `kwargs` as for `__call__`."""
        return [records[0]["translation_text"] for records in self(list(texts), batch_size=batch_size, **kwargs)]

    def __call__(self, texts, batch_size=32, max_source_length=None, truncation=None, return_attention=False,
                 **generate_kwargs):
        """Records as `RNNAttnTranslationPipeline` returns them for a list: one list of `{"translation_text"}` per
        text (one record per returned sequence). Texts are translated longest first, `batch_size` at a time; blank
        texts give "" without reaching the model. `generate_kwargs` as for `generate`; without a length set there or
        in the generation config, translations stop after 256 new tokens, as the pipeline's do."""
        if self.tokenizer is None:
            raise ValueError(f"This folder has no tokenizer.json; {self.tokenizer_hint}, or call `generate` with "
                             f"token ids.")
        if return_attention:
            raise ValueError(f"{type(self).__name__} does not record attention; use the model class "
                             f"(`translation_pipeline`) for it.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        if not self.generation_config.sets_length and generate_kwargs.keys().isdisjoint({"max_new_tokens",
                                                                                         "max_length"}):
            generate_kwargs["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
        count = generate_kwargs.get("num_return_sequences") or 1
        results = [[{"translation_text": ""}] * count for _ in texts]
        todo = [i for i, text in enumerate(texts) if text.strip()]
        if not todo:
            return results
        encoded = self.tokenizer([texts[i] for i in todo], truncation=truncation, max_length=max_source_length)
        ids = dict(zip(todo, encoded["input_ids"]))
        todo.sort(key=lambda i: len(ids[i]), reverse=True)  # similar lengths: little padding, similar ends
        # Every text in one call, longest first, `batch_size` decoding at a time (in each search with
        # `batch_per_search`), refilled as they end.
        num_beams = generate_kwargs.get("num_beams") or self.generation_config.num_beams
        input_ids = np.full((len(todo), len(ids[todo[0]])), self.config.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros_like(input_ids)
        for row, i in enumerate(todo):
            input_ids[row, :len(ids[i])] = ids[i]
            attention_mask[row, :len(ids[i])] = 1
        rows = batch_size * num_beams * (self.threads if self.batch_per_search else 1)
        output = self.generate(input_ids, attention_mask, max_active_rows=rows, **generate_kwargs)
        texts_out = self.tokenizer.batch_decode(output.sequences)
        for row, i in enumerate(todo):
            results[i] = [{"translation_text": text} for text in texts_out[row * count:(row + 1) * count]]
        return results

    # -------------------------------------------------------------------------------------------- search

    def generate(self, input_ids, attention_mask=None, num_beams=None, max_new_tokens=None, max_length=None,
                 length_penalty=None, early_stopping=None, num_return_sequences=None, max_active_rows=None):
        """Greedy (`num_beams=1`) or beam search from right-padded B x S source ids, as `model.generate()` with the
        same arguments: unset ones come from the export's generation config (`max_length` 20 when nothing sets a
        length). Returns an `Generation`.

        `max_active_rows`: at most that many rows decode at once (beam search: `max_active_rows // num_beams`
        sentences, at least one); sentences that end give their rows to waiting ones, as
        `model.generate(max_active_rows=...)` does. The same tokens and scores whatever it is.

        Up to `threads` searches run side by side, each with its share of `max_active_rows`, each taking the next
        sentences in order whenever it has room (`_SentenceQueue`). Rows never interact: the results are one
        search's.
        """
        settings = self.generation_config
        input_ids = np.asarray(input_ids, dtype=np.int64)
        attention_mask = (np.ones_like(input_ids) if attention_mask is None
                          else np.asarray(attention_mask, dtype=np.int64))
        self._check_source(input_ids, attention_mask)
        if max_active_rows is not None and (not isinstance(max_active_rows, int) or max_active_rows < 1):
            raise ValueError(f"`max_active_rows` must be a positive integer or None, got {max_active_rows!r}.")
        num_beams = num_beams or settings.num_beams
        num_return_sequences = num_return_sequences or settings.num_return_sequences
        if num_return_sequences > num_beams:
            raise ValueError(f"`num_return_sequences` ({num_return_sequences}) must be at most `num_beams` "
                             f"({num_beams}).")
        if max_new_tokens is None and max_length is None:
            max_new_tokens, max_length = settings.max_new_tokens, settings.max_length
        max_length = 1 + max_new_tokens if max_new_tokens is not None else max_length
        eos = settings.eos_token_id
        eos = np.array([] if eos is None else np.atleast_1d(eos), dtype=np.int64)
        max_active_rows = max_active_rows or input_ids.shape[0] * num_beams
        if num_beams == 1 and max_length <= 1:  # nothing to generate: the start token alone
            return Generation(np.full((input_ids.shape[0], 1), self.config.decoder_start_token_id),
                                  np.zeros(input_ids.shape[0], dtype=np.float32))
        if num_beams == 1:
            search, fill = partial(self._greedy_search, max_length=max_length, eos=eos), self.config.pad_token_id
        else:
            search = partial(self._beam_search, num_beams=num_beams, max_length=max_length, eos=eos,
                             num_return_sequences=num_return_sequences,
                             length_penalty=settings.length_penalty if length_penalty is None else length_penalty,
                             early_stopping=settings.early_stopping if early_stopping is None else early_stopping)
            fill = _beam_fill(self.config.pad_token_id, eos)
        queue = _SentenceQueue(input_ids, attention_mask)
        count = min(self.threads, input_ids.shape[0], max(1, max_active_rows // num_beams))  # searches
        if count == 1:
            return search(queue, max_active_rows=max_active_rows)[0]
        with self._searches_side_by_side(count), ThreadPoolExecutor(count) as pool:  # the steps let go of the GIL
            parts = list(pool.map(lambda _: search(queue, max_active_rows=max_active_rows // count), range(count)))
        return _merge(parts, num_return_sequences if num_beams > 1 else 1, fill)

    def _check_source(self, input_ids, attention_mask):
        """The model's own checks (`check_source_mask`): a graph would run on bad input and return garbage."""
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape or input_ids.size == 0:
            raise ValueError(f"`input_ids` {input_ids.shape} and `attention_mask` {attention_mask.shape} must be "
                             f"two non-empty batches (batch, length) of the same shape.")
        if input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size:
            raise ValueError(f"`input_ids` must hold token ids in [0, {self.config.vocab_size}).")
        lengths = attention_mask.sum(axis=1)
        if not np.array_equal(attention_mask, np.arange(input_ids.shape[1]) < lengths[:, None]) or lengths.min() < 1:
            raise ValueError("`attention_mask` must be right-padded (1s then 0s in each row) with a token in every "
                             "row.")
        limit = self.config.max_source_positions
        if self.config.attention_score == "location" and input_ids.shape[1] > limit:
            raise ValueError(f"Source length {input_ids.shape[1]} exceeds max_source_positions={limit} of the "
                             f"location score; truncate the source (max_source_length={limit}).")

    def _encode(self, input_ids, attention_mask):
        """The decoder's inputs for each source row (numpy, B x S ids and mask): its memory (`MEMORY_NAMES`) and
        its first state (the arrays named in `state_names`)."""
        raise NotImplementedError

    def _step(self, tokens, memory, state, top_k):
        """One decoder step for R rows: the `top_k` largest log-probabilities of the next token and their tokens
        (R x top_k each, largest first; of equal ones the lower token first, as `torch.topk` and `argmax`), and the
        new state."""
        raise NotImplementedError

    def _searches_side_by_side(self, count):
        """A context in which `count` searches run side by side (in threads)."""
        return nullcontext()

    def _keep_sentences(self, rows, kept, num_beams):
        """The decoder inputs of the sentences `kept` (their indices among those decoding): N rows of state each,
        and one row of memory where the graph shares it among them (`shares_sources`), else N."""
        beams = (kept[:, None] * num_beams + np.arange(num_beams)).reshape(-1)
        memory_rows = kept if shares_sources(self.config) else beams
        return {name: value[memory_rows if name in MEMORY_NAMES else beams] for name, value in rows.items()}

    def _greedy_search(self, queue, max_length, eos, max_active_rows):
        """`generate()`'s greedy search: argmax until EOS or max_length; ended rows are padded. Returns the
        generation of every sentence of `queue` (filled for those it took) and the sentences it took.

        At most `max_active_rows` sentences decode at once; a sentence that ends leaves, and once half the rows are
        free the next waiting sentences take them (`_WaitingSentences`), as in `lean_decoding.greedy_search`:
        batches of a fixed set would run as long as their longest translation, the last steps with a few rows,
        which cost almost as much as full ones.
        """
        config = self.config
        batch_size = len(queue.input_ids)
        sequences = np.full((batch_size, max_length), config.pad_token_id, dtype=np.int64)
        sequences[:, 0] = config.decoder_start_token_id
        lengths = np.ones(batch_size, dtype=np.int64)  # tokens in each sequence
        scores = np.zeros(batch_size, dtype=np.float32)
        waiting = _WaitingSentences(self, queue, max_active_rows)
        active, rows = np.arange(0), None  # the sentence of each row, and the rows' decoder inputs
        while True:
            active, rows = waiting.join(active, rows)
            if not active.size:
                return Generation(sequences[:, :int(lengths.max())], scores), waiting.taken()
            top_log_probs, top_tokens, state = self._step(sequences[active, lengths[active] - 1],
                                                          _pick(rows, MEMORY_NAMES), _pick(rows, self.state_names), 1)
            rows.update(state)
            tokens = top_tokens[:, 0]
            sequences[active, lengths[active]] = tokens
            scores[active] += top_log_probs[:, 0]
            lengths[active] += 1
            done = _ends(tokens, eos) | (lengths[active] >= max_length)
            if done.any():
                kept = np.flatnonzero(~done)
                rows, active = self._keep_sentences(rows, kept, 1), active[kept]
                if active.size:  # the sources still read, without the columns only ended ones had
                    rows = _fit_source(rows, int(rows["attention_mask"].sum(axis=1).max()))

    def _beam_search(self, queue, num_beams, max_length, eos, num_return_sequences, length_penalty, early_stopping,
                     max_active_rows):
        """`generate()`'s beam search (transformers' `_beam_search` and its helpers), on the open sentences.
        Returns the generation of every sentence of `queue` (filled for those it took) and the sentences it took.

        Each sentence has N rows, beam n in its n-th; at most `max_active_rows // N` sentences (at least one)
        decode at once, a sentence whose result can no longer change leaves, and once half of them have left the
        next waiting ones join (`_WaitingSentences`). Every step is written per sentence, each at its own length
        (`lean_decoding.beam_search`, in numpy).
        """
        config = self.config
        batch_size, prompt_len = len(queue.input_ids), 1
        beams_to_keep = max(2, 1 + eos.size) * num_beams  # enough candidates to keep N beams that have not ended
        top_num_beams = np.arange(beams_to_keep) < num_beams
        # n ** length_penalty for n new tokens, as transformers computes it (a Python float, used in float32).
        penalties = np.array([1.0] + [n ** length_penalty for n in range(1, max_length + 1)], dtype=np.float32)
        fill = _beam_fill(config.pad_token_id, eos)
        # Per sentence: its N running beams and N best finished hypotheses (B x N x ...), and its length (B).
        running_sequences = np.full((batch_size, num_beams, max_length), fill, dtype=np.int64)
        running_sequences[:, :, 0] = config.decoder_start_token_id
        sequences = running_sequences.copy()
        running_scores = np.zeros((batch_size, num_beams), dtype=np.float32)
        running_scores[:, 1:] = NEG_INF  # all beams start equal: only the first one's continuations count
        scores = np.full((batch_size, num_beams), NEG_INF, dtype=np.float32)
        finished = np.zeros((batch_size, num_beams), dtype=bool)
        finished_lengths = np.full((batch_size, num_beams), prompt_len)
        lengths = np.full(batch_size, prompt_len)

        max_sentences = max(1, max_active_rows // num_beams)
        waiting = _WaitingSentences(self, queue, max_sentences, rows_per_sentence=num_beams)
        active, rows = np.arange(0), None  # the sentence of each group of N rows, and the rows' decoder inputs
        while True:
            active, rows = waiting.join(active, rows)
            if not active.size:
                break
            count, length = active.size, lengths[active]
            tokens = running_sequences[active[:, None], np.arange(num_beams), (length - 1)[:, None]].reshape(-1)
            # Each of a sentence's 2N best continuations is among the 2N best of its own beam (a beam's running
            # score adds to all its tokens alike), in the order of their index in the N x V log-probabilities.
            top_log_probs, top_tokens, state = self._step(tokens, _pick(rows, MEMORY_NAMES),
                                                          _pick(rows, self.state_names), beams_to_keep)
            rows.update(state)
            candidates = (top_log_probs.reshape(count, num_beams, beams_to_keep)
                          + running_scores[active][:, :, None]).reshape(count, -1)  # A x (N x 2N)
            top = _top_k(candidates, beams_to_keep)  # A x 2N
            topk_scores = _gather_rows(candidates, top)
            parents = top // beams_to_keep
            topk_tokens = _gather_rows(top_tokens.reshape(count, -1), top)
            width = int(length.max()) + 1  # the positions any active sentence has written, and the new one
            topk_sequences = _gather_rows(running_sequences[active, :, :width], parents)
            np.put_along_axis(topk_sequences, np.broadcast_to(length[:, None, None], (count, beams_to_keep, 1)),
                              topk_tokens[:, :, None], axis=2)
            hits_stop = _ends(topk_tokens, eos) | (length + 1 >= max_length)[:, None]

            # The N best candidates that have not ended continue.
            running_candidates = topk_scores + hits_stop.astype(np.float32) * NEG_INF
            keep = _top_k(running_candidates, num_beams)
            running_sequences[active, :, :width] = _gather_rows(topk_sequences, keep)
            new_running_scores = _gather_rows(running_candidates, keep)
            running_scores[active] = new_running_scores

            # Ended candidates among the N best join the finished hypotheses if they beat them. (transformers also
            # bars closed sentences here; those have left.)
            just_finished = hits_stop & top_num_beams[None, :]
            finished_scores = topk_scores / penalties[length + 1 - prompt_len][:, None]
            finished_scores = finished_scores + (~just_finished).astype(np.float32) * NEG_INF
            merged_scores = np.concatenate([scores[active], finished_scores], axis=1)
            best = _top_k(merged_scores, num_beams)
            new_scores = _gather_rows(merged_scores, best)
            new_finished = _gather_rows(np.concatenate([finished[active], just_finished], axis=1), best)
            sequences[active, :, :width] = _gather_rows(
                np.concatenate([sequences[active, :, :width], topk_sequences], axis=1), best)
            finished_lengths[active] = _gather_rows(
                np.concatenate([finished_lengths[active], np.broadcast_to((length + 1)[:, None], hits_stop.shape)],
                               axis=1), best)
            scores[active], finished[active] = new_scores, new_finished

            # The surviving beams' states (a sentence's rows read one memory: it needs no reordering).
            first_rows = np.arange(count)[:, None] * num_beams  # each sentence's first row
            rows.update(_take(_pick(rows, self.state_names),
                              (first_rows + _gather_rows(parents, keep)).reshape(-1)))
            length = length + 1
            lengths[active] = length
            # transformers' `_check_early_stop_heuristic`: can the best running beam still beat the worst finished?
            if early_stopping == "never" and length_penalty > 0.0:
                best_running = new_running_scores[:, :1] / penalties[max_length - prompt_len]
            else:
                best_running = new_running_scores[:, :1] / penalties[length - prompt_len][:, None]
            worst_finished = np.where(new_finished, new_scores.min(axis=1, keepdims=True), NEG_INF)
            still_open = (best_running > worst_finished).any(axis=1) & ~hits_stop.all(axis=1)
            if early_stopping is True:
                still_open &= ~new_finished.all(axis=1)
            if not still_open.all():
                kept = np.flatnonzero(still_open)
                rows = self._keep_sentences(rows, kept, num_beams)
                active = active[kept]
                if active.size:  # the sources still read, without the columns only closed sentences had
                    rows = _fit_source(rows, int(rows["attention_mask"].sum(axis=1).max()))

        sequences = sequences[:, :num_return_sequences].reshape(batch_size * num_return_sequences, max_length)
        longest = int(finished_lengths[:, :num_return_sequences].max())
        return Generation(sequences[:, :longest], scores[:, :num_return_sequences].reshape(-1)), waiting.taken()


class _SentenceQueue:
    """The source sentences of a `generate` call that no search has taken yet. Searches side by side take the next
    ones in order whenever they have room, so that they end together: fixed shares (sentence b to search b mod 2)
    ended 0.9 s apart in 13 s of beam search on the benchmark's 1,000 verses, one core idle meanwhile."""

    def __init__(self, input_ids, attention_mask):
        self.input_ids, self.attention_mask = input_ids, attention_mask
        self._next, self._lock = 0, threading.Lock()

    def take(self, count):
        """The indices of the next `count` sentences (fewer, or none, at the end)."""
        with self._lock:
            first, self._next = self._next, min(len(self.input_ids), self._next + count)
            return np.arange(first, self._next)


class _WaitingSentences:
    """How a search takes its sentences from the `_SentenceQueue`: once at most half of its `max_sentences` are
    still decoding, it takes enough to fill them, encodes them and adds their rows (`rows_per_sentence` each, its
    beams) to the decoder's inputs.

    Not at every free row as in `lean_decoding`: numpy copies the rows of every input to add rows, and a joining
    sentence decodes at the source width of the longest one still decoding. On the 1,000 test verses of the
    benchmark (64 sentences at a time, two searches side by side, 2-core Xeon, in-process, 2-3 runs each): greedy
    2.7-2.8 s joining at half (the same at a quarter or three quarters), 2.9-3.0 s at every free row, 3.8-3.9 s in
    blocks one after the other; beam 5 12.5-12.8 s at half (12.3-13.0 s at a quarter or three quarters), 13.2-13.6 s
    at every free row, 13.0-13.3 s in blocks.
    """

    def __init__(self, translator, queue, max_sentences, rows_per_sentence=1):
        self.translator, self.queue = translator, queue
        self.max_sentences, self.rows_per_sentence = max_sentences, rows_per_sentence
        self._taken = []

    def join(self, active, rows):
        """`active` (the sentence of each group of rows) and `rows`, with the next sentences of the queue added up
        to `max_sentences` once at most half that many are decoding, their rows after the others, on the wider
        source."""
        if active.size > self.max_sentences // 2:
            return active, rows
        sentences = self.queue.take(self.max_sentences - active.size)
        if not sentences.size:
            return active, rows
        self._taken.append(sentences)
        width = int(self.queue.attention_mask[sentences].sum(axis=1).max())
        encoded = self.translator._encode(self.queue.input_ids[sentences, :width],
                                          self.queue.attention_mask[sentences, :width])
        shared = shares_sources(self.translator.config)
        joining = {name: value if shared and name in MEMORY_NAMES else
                   np.repeat(value, self.rows_per_sentence, axis=0) for name, value in encoded.items()}
        return np.concatenate([active, sentences]), _join_rows(rows, joining)

    def taken(self):
        """The sentences this search has taken."""
        return np.concatenate(self._taken) if self._taken else np.arange(0)


def _beam_fill(pad, eos):
    """What beam search pads its sequences with: transformers' `pad_token_id or eos_token_id[0]`."""
    return (pad if pad else eos[0]) if eos.size else -1


def _merge(parts, rows_per_sentence, fill):
    """One `Generation` from the (generation, sentences taken) of searches side by side: each sentence's rows
    from the search that took it, padded with `fill` to the longest."""
    first, _ = parts[0]
    sequences = np.full((first.sequences.shape[0], max(part.sequences.shape[1] for part, _ in parts)), fill,
                        dtype=np.int64)
    scores = np.zeros_like(first.scores)
    for part, sentences in parts:
        rows = (sentences[:, None] * rows_per_sentence + np.arange(rows_per_sentence)).reshape(-1)
        sequences[rows, :part.sequences.shape[1]] = part.sequences[rows]
        scores[rows] = part.scores[rows]
    return Generation(sequences, scores)


def _take(arrays, rows):
    return {name: value[rows] for name, value in arrays.items()}


def _pick(arrays, names):
    return {name: arrays[name] for name in names}


def _fit_source(rows, width):
    """The memory's source columns (axis 1) cut or padded to `width`. Attention gives padding exactly 0, so this
    changes only the work (`lean_decoding.ActiveRows._resize_source`)."""
    def fit(value):
        extra = width - value.shape[1]
        if extra <= 0:
            return value[:, :width]
        return np.pad(value, [(0, 0), (0, extra)] + [(0, 0)] * (value.ndim - 2))
    return {name: fit(value) if name in MEMORY_NAMES else value for name, value in rows.items()}


def _join_rows(rows, joining):
    """`rows` followed by `joining`, both on the wider source."""
    if rows is None:
        return joining
    width = max(rows["attention_mask"].shape[1], joining["attention_mask"].shape[1])
    rows, joining = _fit_source(rows, width), _fit_source(joining, width)
    return {name: np.concatenate([value, joining[name]]) for name, value in rows.items()}


def _top_k(values, k):
    """Indices of the k largest values of each row, largest first (`torch.topk`); ties go to the lower index."""
    return np.argsort(-values, axis=1, kind="stable")[:, :k]


def _ends(tokens, eos):
    """Whether each token is one of the `eos` ids (`np.isin`, which costs more than this at these sizes)."""
    return (tokens[..., None] == eos).any(axis=-1)


def _gather_rows(values, indices):
    """`values[b, indices[b, j]]` (B x k, or B x k x ... for B x M x ... values): `np.take_along_axis` on axis 1
    without its checks, which cost more than the gather at these sizes."""
    return values[np.arange(len(values))[:, None], indices]
