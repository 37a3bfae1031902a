"""Translation on onnxruntime: greedy and beam search over the graphs that `hf_rnn_attn.onnx_export` writes.

    from hf_rnn_attn.onnx import ONNXTranslator
    translator = ONNXTranslator("runs/bigru-bahdanau/onnx")              # int8=True for the quantised graphs
    translator.translate(["En el principio creó Dios los cielos y la tierra."], num_beams=5)
    hf-rnn-attn translate --backend onnx --model runs/bigru-bahdanau/onnx < source.txt

The search is transformers' `generate()` rewritten in numpy (this package imports neither torch nor transformers):
greedy takes the argmax until EOS or `max_length`; beam search keeps `num_beams` hypotheses and applies the same
top-k continuations, finished-hypothesis updates, length penalty, `early_stopping` rules (False, True, "never") and
output padding, so that both return the tokens `generate()` returns. As in `lean_decoding`, a sentence leaves the
batch once its result can no longer change.

Shapes: B sentences, N beams, R rows (B, or B x N in beam search), S source length, V vocabulary, M max_length.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from .export_folder import ExportedTokenizer, GenerationSettings, read_config

# Bumped whenever the graphs' inputs, outputs or meaning change: a runner refuses graphs of another format.
EXPORT_FORMAT = "2"  # 2: the decoder step also gives its top-k tokens (`top_k` input)
GRAPH_FILES = {False: ("encoder.onnx", "decoder.onnx"), True: ("encoder.int8.onnx", "decoder.int8.onnx")}
# The decoder graph's inputs besides the recurrent state (whose names are those of the encoder's other outputs).
MEMORY_NAMES = ("keys", "projected_keys", "attention_mask")
DEFAULT_MAX_NEW_TOKENS = 256  # RNNAttnTranslationPipeline's length limit when nothing else sets one
NEG_INF = np.float32(-1.0e9)  # transformers' "impossible" score for beams


# The config fields the graphs depend on, with their defaults: `RNNAttnConfig`'s arguments but the training-only
# dropout, init_range and use_cache (tests/test_onnx.py checks them against it; this package cannot import it).
ARCHITECTURE_DEFAULTS = {
    "vocab_size": 8000, "embedding_size": 256, "hidden_size": 512, "encoder_hidden_size": None, "rnn_cell": "gru",
    "encoder_layers": 1, "decoder_layers": 1, "bidirectional_encoder": True, "attention_score": "additive",
    "attention_hidden_size": None, "attention_type": "global", "local_window": 10, "input_feeding": True,
    "decoder_state_init": "backward", "decoder_bridge": "auto", "output_layer": "linear",
    "max_source_positions": None, "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1,
    "eos_token_id": 2, "decoder_start_token_id": 1, "is_encoder_decoder": True,
}


def architecture(config):
    """The config fields the graphs depend on, recorded in each graph to catch a graph of another model."""
    return {name: getattr(config, name) for name in ARCHITECTURE_DEFAULTS}


@dataclass
class ONNXGeneration:
    """What `ONNXTranslator.generate` returns.

    Attributes:
        sequences: (B x num_return_sequences) x T token ids, starting with the decoder start token and padded as
            `generate()` pads them.
        scores: one per sequence: beam search's `sequences_scores` (summed log-probabilities divided by
            length ** length_penalty, as `generate(output_scores=True)`), or for greedy search the summed
            log-probabilities of the generated tokens.
    """

    sequences: np.ndarray
    scores: np.ndarray


class ONNXTranslator:
    """Greedy and beam-search translation with the exported encoder and decoder-step graphs.

    Args:
        folder: written by `hf_rnn_attn.onnx_export.export_onnx` (`hf-rnn-attn export`): the graphs, config.json,
            generation_config.json and, when the export had one, the tokenizer (tokenizer.json).
        int8: run the dynamically quantised graphs (`export_onnx(..., int8=True)`).
        threads: onnxruntime's intra-op threads (default: onnxruntime's choice, one per physical core).

    Raises `FileNotFoundError` for a folder without the graphs or config, and `ValueError` for graphs exported
    from another config, by another export format, or an encoder and decoder from two different exports.
    """

    def __init__(self, folder, int8=False, threads=None):
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no config.json, so it is not an ONNX export; write one with "
                                    f"`hf-rnn-attn export --model MODEL_FOLDER --output {folder}`.")
        names = GRAPH_FILES[int8]
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            hint = " --int8" if int8 else ""
            raise FileNotFoundError(f"{folder} has no {' or '.join(missing)}; write the graphs with "
                                    f"`hf-rnn-attn export --model MODEL_FOLDER --output {folder}{hint}`.")
        self.config = read_config(folder, ARCHITECTURE_DEFAULTS)
        self.generation_config = GenerationSettings.from_folder(folder, self.config)
        self.tokenizer = ExportedTokenizer(folder) if (folder / "tokenizer.json").is_file() else None
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.encoder, self.decoder = (onnxruntime.InferenceSession(str(folder / name), options,
                                                                   providers=["CPUExecutionProvider"])
                                      for name in names)
        self._check_graphs(folder, names)
        self.state_names = [node.name for node in self.encoder.get_outputs() if node.name not in MEMORY_NAMES]
        self._new_state_names = [f"new_{name}" for name in self.state_names]  # the decoder's outputs

    def _check_graphs(self, folder, names):
        """The graphs must come from one export of this config, in this runner's format."""
        expected = json.loads(json.dumps(architecture(self.config)))  # as the graphs record it
        recorded = []
        for name, session in zip(names, (self.encoder, self.decoder)):
            metadata = session.get_modelmeta().custom_metadata_map
            if "hf_rnn_attn_format" not in metadata:
                raise ValueError(f"{folder / name} was not written by hf_rnn_attn's export; export the model again "
                                 f"with `hf-rnn-attn export`.")
            if metadata["hf_rnn_attn_format"] != EXPORT_FORMAT:
                raise ValueError(f"{folder / name} has export format {metadata['hf_rnn_attn_format']}, this version "
                                 f"reads format {EXPORT_FORMAT}; export the model again with `hf-rnn-attn export`.")
            # A field added to the config after the export: the graph does what its default does.
            graph_config = {**ARCHITECTURE_DEFAULTS, **json.loads(metadata["hf_rnn_attn_config"])}
            differences = [f"{key}={graph_config[key]!r} in the graph, {value!r} in config.json"
                           for key, value in expected.items() if graph_config[key] != value]
            if differences:
                raise ValueError(f"{folder / name} was exported from a model with another config "
                                 f"({'; '.join(differences[:3])}): it is from an older export. Export the model "
                                 f"again with `hf-rnn-attn export --model MODEL_FOLDER --output {folder}`.")
            recorded.append(metadata["hf_rnn_attn_weights"])
        if recorded[0] != recorded[1]:
            raise ValueError(f"{folder / names[0]} and {folder / names[1]} come from two different exports (other "
                             f"weights); export the model again with `hf-rnn-attn export`.")

    # ----------------------------------------------------------------------------------------------- text

    def translate(self, texts, batch_size=32, **kwargs):
        """The translation of each text (its best sequence), in order; `kwargs` as for `__call__`."""
        return [records[0]["translation_text"] for records in self(list(texts), batch_size=batch_size, **kwargs)]

    def __call__(self, texts, batch_size=32, max_source_length=None, truncation=None, return_attention=False,
                 **generate_kwargs):
        """Records as `RNNAttnTranslationPipeline` returns them for a list: one list of `{"translation_text"}` per
        text (one record per returned sequence). Texts are translated in batches of similar length; blank texts
        give "" without reaching the model. `generate_kwargs` as for `generate`; without a length set there or in
        the generation config, translations stop after 256 new tokens, as the pipeline's do."""
        if self.tokenizer is None:
            raise ValueError("This ONNX export has no tokenizer.json; export with a (fast) tokenizer "
                             "(`export_onnx(..., tokenizer=)`), or call `generate` with token ids.")
        if return_attention:
            raise ValueError("The ONNX backend does not record attention; use the PyTorch model for it.")
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
        # Greedy search takes every text in one call, `batch_size` decoding at a time (refilled as they end).
        greedy = (generate_kwargs.get("num_beams") or self.generation_config.num_beams) == 1
        group = len(todo) if greedy else batch_size
        for start in range(0, len(todo), group):
            batch = todo[start:start + group]
            input_ids = np.full((len(batch), len(ids[batch[0]])), self.config.pad_token_id, dtype=np.int64)
            attention_mask = np.zeros_like(input_ids)
            for row, i in enumerate(batch):
                input_ids[row, :len(ids[i])] = ids[i]
                attention_mask[row, :len(ids[i])] = 1
            output = self.generate(input_ids, attention_mask, max_active_rows=batch_size if greedy else None,
                                   **generate_kwargs)
            texts_out = self.tokenizer.batch_decode(output.sequences)
            for row, i in enumerate(batch):
                results[i] = [{"translation_text": text} for text in texts_out[row * count:(row + 1) * count]]
        return results

    # -------------------------------------------------------------------------------------------- search

    def generate(self, input_ids, attention_mask=None, num_beams=None, max_new_tokens=None, max_length=None,
                 length_penalty=None, early_stopping=None, num_return_sequences=None, max_active_rows=None):
        """Greedy (`num_beams=1`) or beam search from right-padded B x S source ids, as `model.generate()` with the
        same arguments: unset ones come from the export's generation config (`max_length` 20 when nothing sets a
        length). Returns an `ONNXGeneration`.

        `max_active_rows` (greedy search): at most that many sentences decode at once, and each that ends gives its
        row to the next one, as `model.generate(max_active_rows=...)` does: the same tokens and scores.
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
        if num_beams == 1:
            return self._greedy_search(input_ids, attention_mask, max_length, eos,
                                       max_active_rows or input_ids.shape[0])
        rows = {name: np.repeat(value, num_beams, axis=0)
                for name, value in self._encode(input_ids, attention_mask).items()}
        return self._beam_search({name: rows[name] for name in MEMORY_NAMES},
                                 {name: rows[name] for name in self.state_names},
                                 num_beams, max_length, eos, num_return_sequences,
                                 settings.length_penalty if length_penalty is None else length_penalty,
                                 settings.early_stopping if early_stopping is None else early_stopping)

    def _check_source(self, input_ids, attention_mask):
        """The model's own checks (`check_source_mask`): a graph would run on bad input and return garbage."""
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape or input_ids.size == 0:
            raise ValueError(f"`input_ids` {input_ids.shape} and `attention_mask` {attention_mask.shape} must be "
                             f"two non-empty batches (batch, length) of the same shape.")
        if input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size:
            raise ValueError(f"`input_ids` must hold token ids in [0, {self.config.vocab_size}).")
        lengths = attention_mask.sum(axis=1)
        if not np.array_equal(attention_mask, np.arange(input_ids.shape[1]) < lengths[:, None]) or lengths.min() < 1:
            raise ValueError("`attention_mask` must be right-padded (1s then 0s in each row) with a token in every row.")
        limit = self.config.max_source_positions
        if self.config.attention_score == "location" and input_ids.shape[1] > limit:
            raise ValueError(f"Source length {input_ids.shape[1]} exceeds max_source_positions={limit} of the "
                             f"location score; truncate the source (max_source_length={limit}).")

    def _encode(self, input_ids, attention_mask):
        """The decoder's inputs for each source row: its memory (`MEMORY_NAMES`) and its first state."""
        outputs = self.encoder.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        rows = dict(zip((node.name for node in self.encoder.get_outputs()), outputs))
        return {"keys": rows["keys"], "projected_keys": rows["projected_keys"], "attention_mask": attention_mask,
                **{name: rows[name] for name in self.state_names}}

    def _step(self, tokens, memory, state, top_k):
        """One decoder step for R rows: the `top_k` largest log-probabilities of the next token and their tokens
        (R x top_k each, largest first; of equal ones the lower token first, as `torch.topk` and `argmax`), and the
        new state. Only these leave onnxruntime, not the R x V log-probabilities."""
        outputs = self.decoder.run(["top_log_probs", "top_tokens", *self._new_state_names],
                                   {"decoder_input_ids": tokens[:, None], "top_k": np.array([top_k]), **memory,
                                    **state})
        return outputs[0], outputs[1], dict(zip(self.state_names, outputs[2:]))

    def _greedy_search(self, input_ids, attention_mask, max_length, eos, max_active_rows):
        """`generate()`'s greedy search: argmax until EOS or max_length; ended rows are padded.

        At most `max_active_rows` sentences decode at once; a sentence that ends leaves, and the next waiting ones
        take the free rows (encoded `max_active_rows` at a time, when they are needed), as in
        `lean_decoding.greedy_search`: batches of a fixed set would run as long as their longest translation, the
        last steps with a few rows, which cost almost as much as full ones.
        """
        config = self.config
        batch_size = input_ids.shape[0]
        sequences = np.full((batch_size, max_length), config.pad_token_id, dtype=np.int64)
        sequences[:, 0] = config.decoder_start_token_id
        lengths = np.ones(batch_size, dtype=np.int64)  # tokens in each sequence
        scores = np.zeros(batch_size, dtype=np.float32)
        if max_length <= 1:
            return ONNXGeneration(sequences[:, :1], scores)
        active, rows = np.arange(0), None  # the sentence of each row, and the rows' decoder inputs
        waiting, encoded, next_sentence = np.arange(0), None, 0  # encoded sentences yet to join, and their inputs
        while True:
            while active.size < max_active_rows and (waiting.size or next_sentence < batch_size):
                if not waiting.size:
                    waiting = np.arange(next_sentence, min(batch_size, next_sentence + max_active_rows))
                    next_sentence = waiting[-1] + 1
                    width = int(attention_mask[waiting].sum(axis=1).max())
                    encoded = self._encode(input_ids[waiting, :width], attention_mask[waiting, :width])
                joining = min(max_active_rows - active.size, waiting.size)
                rows = _join_rows(rows, {name: value[:joining] for name, value in encoded.items()})
                active = np.concatenate([active, waiting[:joining]])
                waiting, encoded = waiting[joining:], {name: value[joining:] for name, value in encoded.items()}
            if not active.size:
                return ONNXGeneration(sequences[:, :int(lengths.max())], scores)
            memory = {name: rows[name] for name in MEMORY_NAMES}
            top_log_probs, top_tokens, state = self._step(sequences[active, lengths[active] - 1], memory,
                                                          {name: rows[name] for name in self.state_names}, 1)
            rows.update(state)
            tokens = top_tokens[:, 0]
            sequences[active, lengths[active]] = tokens
            scores[active] += top_log_probs[:, 0]
            lengths[active] += 1
            done = np.isin(tokens, eos) | (lengths[active] >= max_length)
            if done.any():
                kept = np.flatnonzero(~done)
                rows, active = _take(rows, kept), active[kept]
                if active.size:  # the sources still read, without the columns only ended ones had
                    rows = _fit_source(rows, int(rows["attention_mask"].sum(axis=1).max()))

    def _beam_search(self, memory, state, num_beams, max_length, eos, num_return_sequences, length_penalty,
                     early_stopping):
        """`generate()`'s beam search (transformers' `_beam_search` and its helpers), on the open sentences.

        `memory` and `state` hold B x N rows, beam n of sentence b in row b x N + n.
        """
        config = self.config
        rows, prompt_len = memory["keys"].shape[0], 1
        batch_size = rows // num_beams
        beams_to_keep = max(2, 1 + eos.size) * num_beams  # enough candidates to keep N beams that have not ended
        top_num_beams = np.arange(beams_to_keep) < num_beams
        pad = config.pad_token_id
        fill = (pad if pad else eos[0]) if eos.size else -1  # transformers' `pad_token_id or eos_token_id[0]`
        running_sequences = np.full((batch_size, num_beams, max_length), fill, dtype=np.int64)
        running_sequences[:, :, 0] = config.decoder_start_token_id
        sequences = running_sequences.copy()
        running_scores = np.zeros((batch_size, num_beams), dtype=np.float32)
        running_scores[:, 1:] = NEG_INF  # all beams start equal: only the first one's continuations count
        scores = np.full((batch_size, num_beams), NEG_INF, dtype=np.float32)
        finished = np.zeros((batch_size, num_beams), dtype=bool)
        open_sentence = np.ones((batch_size, 1), dtype=bool)  # its best running beam may still beat a finished one
        running_lengths = np.zeros((batch_size, num_beams), dtype=np.int64)  # generated tokens per hypothesis
        lengths = running_lengths.copy()

        active = np.arange(batch_size)
        tokens = running_sequences[:, :, 0].reshape(-1)
        cur_len = prompt_len
        while True:
            count = active.size
            # Each of a sentence's 2N best continuations is among the 2N best of its own beam (a beam's running
            # score adds to all its tokens alike), in the order of their index in the N x V log-probabilities.
            top_log_probs, top_tokens, state = self._step(tokens, memory, state, beams_to_keep)
            candidates = (top_log_probs.reshape(count, num_beams, beams_to_keep)
                          + running_scores[active][:, :, None]).reshape(count, -1)  # A x (N x 2N)
            top = _top_k(candidates, beams_to_keep)  # A x 2N
            topk_scores = np.take_along_axis(candidates, top, axis=1)
            beam, token = top // beams_to_keep, np.take_along_axis(top_tokens.reshape(count, -1), top, axis=1)
            topk_sequences = np.take_along_axis(running_sequences[active], beam[:, :, None], axis=1)
            topk_sequences[:, :, cur_len] = token
            topk_lengths = np.take_along_axis(running_lengths[active], beam, axis=1) + 1
            topk_rows = beam + np.arange(count)[:, None] * num_beams  # the row each candidate continues
            hits_stop = np.isin(token, eos) | (cur_len + 1 >= max_length)

            # The N best candidates that have not ended continue.
            running_candidates = topk_scores + hits_stop.astype(np.float32) * NEG_INF
            keep = _top_k(running_candidates, num_beams)
            running_sequences[active] = np.take_along_axis(topk_sequences, keep[:, :, None], axis=1)
            running_scores[active] = np.take_along_axis(running_candidates, keep, axis=1)
            running_lengths[active] = np.take_along_axis(topk_lengths, keep, axis=1)
            beam_rows = np.take_along_axis(topk_rows, keep, axis=1).reshape(-1)

            # Ended candidates among the N best join the finished hypotheses if they beat them. (transformers also
            # bars closed sentences here; those have left the batch.)
            just_finished = hits_stop & top_num_beams[None, :]
            finished_scores = topk_scores / np.float32((cur_len + 1 - prompt_len) ** length_penalty)
            finished_scores = finished_scores + (~just_finished).astype(np.float32) * NEG_INF
            merged_scores = np.concatenate([scores[active], finished_scores], axis=1)
            best = _top_k(merged_scores, num_beams)
            scores[active] = np.take_along_axis(merged_scores, best, axis=1)
            sequences[active] = np.take_along_axis(np.concatenate([sequences[active], topk_sequences], axis=1),
                                                   best[:, :, None], axis=1)
            lengths[active] = np.take_along_axis(np.concatenate([lengths[active], topk_lengths], axis=1), best, axis=1)
            finished[active] = np.take_along_axis(np.concatenate([finished[active], just_finished], axis=1), best,
                                                  axis=1)

            state = _take(state, beam_rows)
            cur_len += 1
            open_sentence[active] = _early_stop_heuristic_unsatisfied(
                open_sentence[active], running_scores[active], scores[active], finished[active], cur_len, max_length,
                prompt_len, early_stopping, length_penalty)
            still_open = open_sentence[active, 0] & ~hits_stop.all(axis=1)
            if early_stopping is True:
                still_open &= ~finished[active].all(axis=1)
            if not still_open.any():
                break
            tokens = running_sequences[active, :, cur_len - 1].reshape(-1)
            if not still_open.all():
                kept = np.flatnonzero(still_open)
                kept_rows = (kept[:, None] * num_beams + np.arange(num_beams)).reshape(-1)
                memory, state = _take(memory, kept_rows), _take(state, kept_rows)
                active, tokens = active[kept], tokens[kept_rows]

        sequences = sequences[:, :num_return_sequences].reshape(batch_size * num_return_sequences, max_length)
        longest = prompt_len + int(lengths[:, :num_return_sequences].max())
        return ONNXGeneration(sequences[:, :longest], scores[:, :num_return_sequences].reshape(-1))


def _take(arrays, rows):
    return {name: value[rows] for name, value in arrays.items()}


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
    part = np.argpartition(-values, k - 1, axis=1)[:, :k] if k < values.shape[1] else \
        np.broadcast_to(np.arange(values.shape[1]), values.shape)
    order = np.lexsort((part, -np.take_along_axis(values, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _early_stop_heuristic_unsatisfied(unsatisfied, running_scores, scores, finished, cur_len, max_length, prompt_len,
                                      early_stopping, length_penalty):
    """transformers' `_check_early_stop_heuristic`: can the best running beam still beat the worst finished one?"""
    if early_stopping == "never" and length_penalty > 0.0:
        best_length = max_length - prompt_len
    else:
        best_length = cur_len - prompt_len
    best_possible = running_scores[:, :1] / np.float32(best_length ** length_penalty)
    worst_finished = np.where(finished, scores.min(axis=1, keepdims=True), NEG_INF)
    return unsatisfied & (best_possible > worst_finished).any(axis=-1, keepdims=True)
