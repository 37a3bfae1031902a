"""A `translation` pipeline for RNNAttn models that ships with the model as remote code.

transformers 5.x removed the built-in `translation` task, but still resolves tasks named in a checkpoint's
`config.custom_pipelines` (before it checks for removed tasks). `hf_rnn_attn.hub.save_for_hub` copies this file
next to the weights and records it there, so in any process, with or without `hf_rnn_attn` installed:

    from transformers import pipeline
    translator = pipeline("translation", model="path/or/hub-id", trust_remote_code=True)
    translator("Hola mundo.")                     # [{"translation_text": "Hello world."}]
    translator(["Hola.", "Adiós."], batch_size=2, num_beams=4, max_new_tokens=64)
    translator("Hola mundo.", return_attention=True)  # adds the word attention and a Pharaoh alignment

This file and `alignment.py` import only torch and transformers, so they load from a folder on their own.
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig, Pipeline

from .alignment import sequence_attentions, word_attention
from .torch_threads import torch_threads


# Greedy and beam-search translation decode this many batches' worth of sentences per generate() call,
# `batch_size` sentences (and their beams) at a time: each call ends with a tail of steps on the few sentences still
# decoding; the encoder states of a whole call are held at once, one copy per sentence.
BATCHES_PER_CALL = 16


class RNNAttnTranslationPipeline(Pipeline):
    """Source text -> translation with `model.generate()`.

    Returns `[{"translation_text": str}]` for a string (one record per returned sequence, so
    `num_return_sequences=n` gives n records) and a list of those for a list of strings. Generation parameters
    (`num_beams`, `max_new_tokens`, `do_sample`, ...) are taken at construction or per call and passed to
    `generate()` on top of the model's `generation_config`. When neither sets a length limit, translations stop
    after `max_new_tokens=256` (`train_translation_tokenizer`'s default `model_max_length`), not at
    generate()'s 20 tokens.

    `src_lang` / `tgt_lang` are read from the model config when it records them (one model serves one
    direction); passing a different pair to a call raises `ValueError` instead of translating the wrong way.

    A blank source (`""`, `"   "`) translates to `""` without reaching the model, which would invent a sentence
    for it; an empty list gives `[]`.

    `return_attention=True` adds to each record the attention of that translation over its source, merged to
    words (`alignment.word_attention`): `source_tokens`, `target_tokens`, `attention` (a target x source tensor)
    and `alignment` (Pharaoh `i-j` word pairs). Decoding then runs transformers' own loops, which record it.
    """

    _pipeline_calls_generate = True
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True
    _default_generation_config = GenerationConfig(max_new_tokens=256)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tokenizer_lock = threading.Lock()  # searches side by side share the tokenizer
        if self.tokenizer is None:
            raise ValueError("RNNAttnTranslationPipeline needs a tokenizer; pass `tokenizer=`.")

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, str):
            return super().__call__(inputs, **kwargs) if inputs.strip() else self._blank_translation(kwargs)
        if not isinstance(inputs, (list, tuple)):
            return super().__call__(inputs, **kwargs)
        texts = [text for text in inputs if not _is_blank(text)]
        translations = iter(self._translate_longest_first(texts, **kwargs) if texts else [])
        return [self._blank_translation(kwargs) if _is_blank(text) else next(translations) for text in inputs]

    def _translate_longest_first(self, texts, **kwargs):
        """Translates in batches of similar length, returning the results in input order.

        Similar lengths mean less source padding and sentences that end at about the same step; the longest
        batch goes first, so a batch size too large for the memory fails at once.
        """
        if all(isinstance(text, str) for text in texts):  # else `preprocess` says which input is wrong
            lengths = [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]
        else:
            lengths = [0] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
        ordered = [texts[i] for i in order]
        batch_size = kwargs.pop("batch_size", None) or self._batch_size or 1
        num_beams = self._setting(kwargs, "num_beams") or 1
        if self._decodes_with_lean_loop(kwargs) and batch_size > 1:
            rows = batch_size * num_beams
            translate = partial(self._translate_refilling, batch_size=batch_size, max_active_rows=rows, **kwargs)
            searches = self._side_by_side_searches(len(ordered), batch_size)
            if searches == 1:
                results = translate(ordered)
            else:
                results = [None] * len(ordered)
                with torch_threads(1), ThreadPoolExecutor(searches) as pool:
                    shares = [ordered[first::searches] for first in range(searches)]  # similar lengths in each
                    for first, share_results in enumerate(pool.map(translate, shares)):
                        results[first::searches] = share_results
        else:
            results = super().__call__(ordered, batch_size=batch_size, **kwargs)
        translations = [None] * len(texts)
        for index, translation in zip(order, results):
            translations[index] = translation
        return translations

    def _translate_refilling(self, texts, batch_size, max_active_rows, **kwargs):
        """Many batches' worth per generate() call, `batch_size` sentences decoding at a time, each that ends
        replaced by the next (lean_decoding's greedy_search and beam_search): the same translations, no batch waits
        for its longest one. Longest first: once the long sources have ended, the rows drop their padding columns."""
        group, results = BATCHES_PER_CALL * batch_size, []
        for start in range(0, len(texts), group):
            results += super().__call__(texts[start:start + group], batch_size=group, max_active_rows=max_active_rows,
                                        **kwargs)
        return results

    def _side_by_side_searches(self, num_texts, batch_size):
        """How many searches decode a call's texts at once, each in a thread of its own on one torch thread: one
        per torch thread on the CPU, while each gets a batch's worth of texts; else one, on all threads.

        Most of a search step is products of one batch of rows and small elementwise operations, which torch does
        not split well over threads (most run on one); two searches side by side on 2 cores each run their own
        operations whole, in threads (torch releases the GIL while it computes)."""
        if self.device.type != "cpu":
            return 1
        return max(1, min(torch.get_num_threads(), num_texts // batch_size))

    def _setting(self, call_kwargs, name):
        """A generation setting: the call's, else the pipeline's, else the model's."""
        model_setting = getattr(self.model.generation_config, name, None)
        return call_kwargs.get(name, self._forward_params.get(name, model_setting))

    def _decodes_with_lean_loop(self, call_kwargs):
        """Whether generate() will run a refilling lean loop (greedy or beam search): no sampling and no attention
        recorded, which take transformers' loops, where a whole group would decode at once."""
        return not self._setting(call_kwargs, "do_sample") and not self._setting(call_kwargs, "return_attention")

    def _blank_translation(self, call_kwargs):
        """As many empty records as the call would return sequences."""
        count = call_kwargs.get("num_return_sequences", self._forward_params.get(
            "num_return_sequences", self.model.generation_config.num_return_sequences))
        records = [{"translation_text": ""} for _ in range(count or 1)]
        if call_kwargs.get("return_attention", self._forward_params.get("return_attention")):
            for record in records:
                record.update(word_attention(self.tokenizer, [], [], torch.zeros(0, 0)))
        return records

    def _sanitize_parameters(self, src_lang=None, tgt_lang=None, truncation=None, max_source_length=None,
                             clean_up_tokenization_spaces=None, return_attention=None, **generate_kwargs):
        self._check_language("src_lang", src_lang, getattr(self.model.config, "src_lang", None))
        self._check_language("tgt_lang", tgt_lang, getattr(self.model.config, "tgt_lang", None))
        preprocess_params = {}
        if truncation is not None:
            preprocess_params["truncation"] = truncation
        if max_source_length is not None:
            preprocess_params["max_source_length"] = max_source_length
        postprocess_params = {}
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        if return_attention is not None:
            generate_kwargs["return_attention"] = return_attention
        return preprocess_params, generate_kwargs, postprocess_params

    @staticmethod
    def _check_language(name, requested, recorded):
        if requested is not None and recorded is not None and requested != recorded:
            raise ValueError(f"This model translates with {name}={recorded!r}; got {name}={requested!r}.")

    def preprocess(self, text, truncation=None, max_source_length=None):
        if not isinstance(text, str):
            raise ValueError(f"Translation inputs must be strings (or a list of strings), got {type(text).__name__}.")
        with self._tokenizer_lock:  # a fast tokenizer sets its truncation per call: one call at a time
            encoded = self.tokenizer(text, truncation=truncation, max_length=max_source_length, return_tensors="pt")
        # Only what the encoder reads: fast tokenizers may add token_type_ids, which generate() would carry along.
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _forward(self, model_inputs, return_attention=False, **generate_kwargs):
        batch_size = model_inputs["input_ids"].shape[0]
        overrides = {"return_dict_in_generate": True, "output_attentions": True} if return_attention else {
            "return_dict_in_generate": False}
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs, **overrides)
        outputs = self.model.generate(**model_inputs, **generate_kwargs)
        output_ids = outputs.sequences if return_attention else outputs  # (B x n) x T
        # Group the n returned sequences per input so that the pipeline's unbatching keeps them together.
        grouped = {"output_ids": output_ids.reshape(batch_size, -1, output_ids.shape[-1])}  # B x n x T
        if return_attention:
            eos_token_id = generate_kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
            attention = sequence_attentions(outputs, eos_token_id)  # (B x n) x T x S
            grouped.update(attention=attention.reshape(batch_size, -1, *attention.shape[1:]),  # B x n x T x S
                           input_ids=model_inputs["input_ids"], attention_mask=model_inputs["attention_mask"])
        return grouped

    def postprocess(self, model_outputs, clean_up_tokenization_spaces=False):
        with self._tokenizer_lock:
            records = [
                {"translation_text": self.tokenizer.decode(ids, skip_special_tokens=True,
                                                           clean_up_tokenization_spaces=clean_up_tokenization_spaces)}
                for ids in model_outputs["output_ids"][0]  # n x T
            ]
        if "attention" in model_outputs:
            source_ids = model_outputs["input_ids"][0][model_outputs["attention_mask"][0].bool()]  # S
            for record, ids, weights in zip(records, model_outputs["output_ids"][0], model_outputs["attention"][0]):
                length = int((weights.sum(dim=-1) > 0).sum())  # rows after the sequence's EOS are zero
                target_ids = ids[ids.shape[0] - weights.shape[0]:][:length]
                record.update(word_attention(self.tokenizer, source_ids, target_ids,
                                             weights[:length, :source_ids.shape[0]]))
        return records


def _is_blank(text):
    return isinstance(text, str) and not text.strip()


def translation_pipeline(model, tokenizer=None, **kwargs):
    """Build an `RNNAttnTranslationPipeline` from a model object and its tokenizer, or from a saved folder.

    Args:
        model (`PreTrainedModel`, `str` or `os.PathLike`): a loaded model, or a folder / Hub id to load the model
            (and, when `tokenizer` is None, the tokenizer) from.
        tokenizer (*optional*): the tokenizer, or a folder / Hub id to load it from. Required with a model object.
        kwargs: pipeline arguments (`device`, `batch_size`, generation parameters such as `num_beams`), plus
            `trust_remote_code`, passed to `from_pretrained` when loading from a folder.
    """
    trust_remote_code = kwargs.pop("trust_remote_code", None)
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        location = str(model)
        model = AutoModelForSeq2SeqLM.from_pretrained(location, trust_remote_code=trust_remote_code)
        if tokenizer is None:
            tokenizer = location
    if tokenizer is None:
        raise ValueError("Pass the model's `tokenizer` along with a model object (or give a folder instead).")
    if isinstance(tokenizer, str) or hasattr(tokenizer, "__fspath__"):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=trust_remote_code)
    return RNNAttnTranslationPipeline(model=model, tokenizer=tokenizer, task="translation", **kwargs)
