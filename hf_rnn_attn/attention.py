"""Attention: four score functions and one masked softmax-and-sum.

Shapes: B batch, S source length, T target steps scored at once (1 in generation), H decoder hidden size,
K encoder output size, A additive-score hidden size.

Every score module has the same two methods and holds no state between calls:
  `project_keys(keys (B, S, K)) -> projected keys`, computed once per source sentence;
  `forward(query (B, T, H), projected_keys) -> scores (B, T, S)`.
"""

import torch
from torch import nn


class AdditiveScore(nn.Module):
    """Bahdanau et al. 2015, eq. 6: `score(h_t, h_i) = v^T tanh(W1 h_t + W2 h_i)`."""

    def __init__(self, config):
        super().__init__()
        self.W1 = nn.Linear(config.hidden_size, config.attention_hidden_size, bias=False)
        self.W2 = nn.Linear(config.encoder_output_size, config.attention_hidden_size, bias=False)
        self.v = nn.Linear(config.attention_hidden_size, 1, bias=False)

    def project_keys(self, keys):
        return self.W2(keys)  # B x S x A

    def forward(self, query, projected_keys):
        return AdditiveScoreFunction.apply(self.W1(query), projected_keys, self.v.weight.squeeze(0))  # B x T x S


class AdditiveScoreFunction(torch.autograd.Function):
    """`v^T tanh(q_t + k_i)` for every query t and key i, with `q_t = W1 h_t` and `k_i = W2 h_i` given.

    Autograd would keep the B x T x S x A tanh for the backward pass: 7 MB per step of a 64-sentence batch with
    S = 110 and A = 256, so most of the training memory. The backward pass recomputes it instead, from the
    B x T x A queries and B x S x A keys, and works on that one buffer in place.
    """

    @staticmethod
    def forward(ctx, query, keys, v):
        """query B x T x A, keys B x S x A, v A -> scores B x T x S."""
        ctx.save_for_backward(query, keys, v)
        return torch.tanh(query.unsqueeze(2) + keys.unsqueeze(1)) @ v

    @staticmethod
    def backward(ctx, grad_scores):
        query, keys, v = ctx.saved_tensors
        hidden = torch.tanh(query.unsqueeze(2) + keys.unsqueeze(1))  # B x T x S x A
        grad_v = grad_scores.reshape(1, -1) @ hidden.reshape(-1, hidden.size(-1))  # 1 x A
        # d score / d (q_t + k_i) = v * (1 - tanh^2), in place in `hidden`.
        grad_sum = hidden.square_().neg_().add_(1).mul_(v).mul_(grad_scores.unsqueeze(-1))  # B x T x S x A
        return grad_sum.sum(dim=2), grad_sum.sum(dim=1), grad_v.squeeze(0)


class DotScore(nn.Module):
    """Luong et al. 2015, eq. 8 "dot": `score(h_t, h_i) = h_t . h_i` (needs H == K)."""

    def __init__(self, config):
        super().__init__()

    def project_keys(self, keys):
        return keys

    def forward(self, query, projected_keys):
        return torch.bmm(query, projected_keys.transpose(1, 2))  # B x T x S


class GeneralScore(nn.Module):
    """Luong et al. 2015, eq. 8 "general": `score(h_t, h_i) = h_t^T W h_i`; `W h_i` is computed once."""

    def __init__(self, config):
        super().__init__()
        self.W = nn.Linear(config.encoder_output_size, config.hidden_size, bias=False)

    def project_keys(self, keys):
        return self.W(keys)  # B x S x H

    def forward(self, query, projected_keys):
        return torch.bmm(query, projected_keys.transpose(1, 2))  # B x T x S


class LocationScore(nn.Module):
    """Luong et al. 2015, eq. 9 "location": `a_t = softmax(W h_t)`, one score per source position.

    It never looks at the keys' content, only at their count S, which must not exceed
    `max_source_positions`.
    """

    def __init__(self, config):
        super().__init__()
        self.W = nn.Linear(config.hidden_size, config.max_source_positions, bias=False)

    def project_keys(self, keys):
        return keys

    def forward(self, query, projected_keys):
        return self.W(query)[..., : projected_keys.size(1)]  # B x T x S


SCORES = {"additive": AdditiveScore, "dot": DotScore, "general": GeneralScore, "location": LocationScore}


def attend(scores, attention_mask, values):
    """`alpha = softmax(scores)` over real source positions, `c_t = sum_i alpha_i h_i`.

    Args:
        scores: B x T x S.
        attention_mask: B x S, 1 for real tokens, 0 for padding.
        values: B x S x K, the encoder states h_i.
    Returns:
        context B x T x K and weights alpha B x T x S (exactly 0 on padding).
    """
    padding = (attention_mask == 0).unsqueeze(1)  # B x 1 x S
    # The dtype's minimum rather than -inf keeps a fully masked row finite.
    scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1).masked_fill(padding, 0.0)  # B x T x S
    return torch.bmm(weights, values), weights  # B x T x K
