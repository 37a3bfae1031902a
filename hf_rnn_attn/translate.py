"""Batched translation of raw texts with any seq2seq model and its tokenizer."""

import torch


def translate_texts(model, tokenizer, texts, batch_size=32, max_source_length=None, **generate_kwargs):
    """Translates `texts` in batches of similar length (less padding), returning them in input order.

    `generate_kwargs` go to `model.generate` (`num_beams`, `max_new_tokens`, ...).
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    texts = list(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    translations = [None] * len(texts)
    model.eval()
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in indices], padding=True, truncation=max_source_length is not None,
                          max_length=max_source_length, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       **generate_kwargs)
        for i, text in zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            translations[i] = text.strip()
    return translations
