"""Beam scores recomputed by teacher forcing, to hold generate()'s scores to their formula."""

import torch


def teacher_forced_scores(model, input_ids, attention_mask, sequences, eos_token_id):
    """For each returned sequence (N x T, the decoder start first; N a multiple of the batch), recomputed by a
    teacher-forced pass: the summed log-probabilities of its tokens up to and including its first EOS (as
    generate() normalises the model's logits: `log_softmax`), that length, and the attention each source token
    received over those steps (N x S)."""
    copies = sequences.size(0) // input_ids.size(0)
    input_ids, attention_mask = input_ids.repeat_interleave(copies, 0), attention_mask.repeat_interleave(copies, 0)
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=sequences[:, :-1],
                       output_attentions=True, return_dict=True)
    targets = sequences[:, 1:]  # N x (T - 1)
    log_probs = output.logits.float().log_softmax(dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    is_eos = (targets == eos_token_id).long()
    scored = (is_eos.cumsum(dim=1) - is_eos) == 0  # up to and including the first EOS
    coverage = (output.cross_attentions[0][:, 0] * scored.unsqueeze(-1)).sum(dim=1)  # N x S
    return (log_probs * scored).sum(dim=1), scored.sum(dim=1), coverage, attention_mask
