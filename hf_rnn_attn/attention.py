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
        hidden = torch.tanh(self.W1(query).unsqueeze(2) + projected_keys.unsqueeze(1))  # B x T x S x A
        return self.v(hidden).squeeze(-1)  # B x T x S


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
