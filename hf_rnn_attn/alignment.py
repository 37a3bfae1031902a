"""Attention of the sequences that generate() returns, merged from subwords to words, and hard alignments.

`generate(..., output_attentions=True, return_dict_in_generate=True)` records, at each step, the attention of the
rows searched at that step. Beam search reorders, drops and copies those rows from step to step, so row n of
step t is in general not the t-th token of returned sequence n: `beam_indices` names the row that chose each
token, and `sequence_attentions` follows it back.

Shapes: N returned sequences, R rows searched per step, T generated tokens, S source tokens.

This file imports only torch: it ships next to the model with `pipeline_translation.py` (remote code).
"""

import torch


class NoAttentionError(ValueError):
    """A generate() output without attention weights."""


def sequence_attentions(outputs, eos_token_id):
    """The attention of every returned sequence over its source, N x T x S (float32).

    Row t of sequence n is the attention of the step that chose its t-th generated token (the last query
    position of the last layer, averaged over heads; RNNAttn models have one of each), which is what a
    teacher-forced pass over that sequence gives (`model(..., decoder_input_ids=sequences[:, :-1],
    output_attentions=True).cross_attentions`). Source padding has weight 0; rows after a sequence's first EOS
    (padding of a shorter sequence) are 0, so each other row sums to 1.

    Args:
        outputs: what `generate(..., output_attentions=True, return_dict_in_generate=True)` returned, from greedy
            search, sampling or beam search, with any `num_return_sequences`.
        eos_token_id (`int`, `list[int]` or None): the EOS id(s) generation stopped at
            (`model.generation_config.eos_token_id`).
    Raises:
        `NoAttentionError`: `outputs` holds no attention weights.
    """
    steps = getattr(outputs, "cross_attentions", None)
    if not steps or steps[0] is None:
        raise NoAttentionError(
            "This generate() output has no attention weights: call generate(..., output_attentions=True, "
            "return_dict_in_generate=True) on a model that returns cross-attentions.")
    weights = torch.stack([step[-1][:, :, -1].float().mean(dim=1) for step in steps], dim=1)  # R x steps x S
    beam_indices = getattr(outputs, "beam_indices", None)
    if beam_indices is not None:
        # Beam search may search more steps than its returned sequences have tokens; -1 marks a finished one.
        length = beam_indices.shape[1]
        positions = torch.arange(length, device=weights.device)
        weights = weights[beam_indices.clamp(min=0).long(), positions]  # N x T x S
    if eos_token_id is None:
        return weights
    generated = outputs.sequences[:, outputs.sequences.shape[1] - weights.shape[1]:]  # N x T
    is_eos = torch.isin(generated, torch.as_tensor(eos_token_id, device=generated.device)).long()
    ended = is_eos.cumsum(dim=1) - is_eos > 0  # after the first EOS
    return weights.masked_fill(ended.unsqueeze(-1), 0.0)


def token_units(tokenizer, ids):
    """Groups token ids into the words they spell: `(labels, unit index of each token, which units are words)`.

    A word is a space-separated piece of the decoded text, so source words are the words the user typed and
    target words the words of the translation. Which word a subword belongs to comes from decoding each prefix,
    which works whatever marks word starts (`▁`, `Ġ`, `##`). Special tokens (`</s>`) and tokens that spell no
    word of their own stay single units labelled with the token.
    """
    ids = [int(token) for token in ids]
    special = set(tokenizer.all_special_ids)
    words = tokenizer.decode(ids, skip_special_tokens=True).split()
    keys, labels, is_word, unit_of_token = {}, [], [], []
    for position, token in enumerate(ids):
        word = None
        if token not in special and words:
            prefix = tokenizer.decode(ids[:position + 1], skip_special_tokens=True)
            # The prefix's last word, or the next one when this token ends in a space (a lone "▁").
            word = min(max(len(prefix.split()) - (not prefix[-1:].isspace()), 0), len(words) - 1)
        key = ("word", word) if word is not None else ("token", position)
        if key not in keys:
            keys[key] = len(labels)
            labels.append(words[word] if word is not None else tokenizer.convert_ids_to_tokens(token))
            is_word.append(word is not None)
        unit_of_token.append(keys[key])
    return labels, unit_of_token, is_word


def merge_units(weights, target_units, source_units):
    """T x S token attention -> U_t x U_s unit attention: a source word gets the sum of its subwords' weights,
    a target word the mean of its subwords' rows, so each row still sums to 1."""
    source = torch.zeros(len(source_units), max(source_units, default=-1) + 1, dtype=weights.dtype)
    source[torch.arange(len(source_units)), source_units] = 1.0  # S x U_s
    target = torch.zeros(max(target_units, default=-1) + 1, len(target_units), dtype=weights.dtype)
    target[target_units, torch.arange(len(target_units))] = 1.0  # U_t x T
    target = target / target.sum(dim=1, keepdim=True)
    return target @ weights @ source  # U_t x U_s


def hard_alignment(weights, source_is_word, target_is_word):
    """Pharaoh `i-j` pairs (source word i, target word j, from 0, special tokens not counted): each target word
    aligned to the source word it attends to most. `weights` is U_t x U_s unit attention (`merge_units`)."""
    source_words = [unit for unit, is_word in enumerate(source_is_word) if is_word]
    target_words = [unit for unit, is_word in enumerate(target_is_word) if is_word]
    if not source_words or not target_words:
        return ""
    best = weights[target_words][:, source_words].argmax(dim=1)  # U_t words
    return " ".join(f"{int(i)}-{j}" for j, i in enumerate(best))


def word_attention(tokenizer, source_ids, target_ids, weights):
    """One sentence's attention over words, as the pipeline's `return_attention=True` gives it.

    Args:
        source_ids: the S source token ids, without padding.
        target_ids: the T generated token ids, up to and including EOS.
        weights: T x S token attention (a slice of `sequence_attentions`).
    Returns:
        `dict` with `source_tokens` and `target_tokens` (words, with special tokens such as `</s>` as their own
        entries), `attention` (target x source float tensor, rows summing to 1) and `alignment` (Pharaoh text).
    """
    source_labels, source_units, source_is_word = token_units(tokenizer, source_ids)
    target_labels, target_units, target_is_word = token_units(tokenizer, target_ids)
    merged = merge_units(weights.float().cpu(), target_units, source_units)
    return {"source_tokens": source_labels, "target_tokens": target_labels, "attention": merged,
            "alignment": hard_alignment(merged, source_is_word, target_is_word)}
