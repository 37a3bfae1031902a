"""Batched translation of raw texts with a model and its tokenizer: the path every entry point takes."""

from .pipeline_translation import translation_pipeline


def translate_texts(model, tokenizer, texts, batch_size=32, max_source_length=None, **generate_kwargs):
    """Translates `texts` in batches of similar length (`RNNAttnTranslationPipeline`), returning them in input order.

    The same batching as `hf-rnn-attn translate` and `pipeline("translation")`, so that evaluation measures what
    users get. `generate_kwargs` go to `model.generate` (`num_beams`, `max_new_tokens`, ...).
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if max_source_length is not None:
        generate_kwargs.update(truncation=True, max_source_length=max_source_length)
    model.eval()
    translator = translation_pipeline(model, tokenizer, device=model.device)
    return [records[0]["translation_text"].strip() for records in translator(list(texts), batch_size=batch_size,
                                                                            **generate_kwargs)]
