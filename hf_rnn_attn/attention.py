"""Attention: four score functions, Luong's local windows, and one masked softmax-and-sum.

Shapes: B batch, S source length, T target steps scored at once (1 in generation), H decoder hidden size,
K encoder output size, A additive-score hidden size.

Every score module has the same two methods and holds no state between calls:
  `project_keys(keys (B, S, K)) -> projected keys`, computed once per source sentence;
  `forward(query (B, T, H), projected_keys) -> scores (B, T, S)`.
Local attention (`ALIGNMENTS`) works on top of any score: its module gives the aligned position
  `forward(query (B, T, H), steps t (T,), real source lengths (B,)) -> p_t (B, T)`,
and `local_window` turns the scores and `p_t` into the window's scores and mask. As in the paper, target steps
and source positions count from 1.
"""

import torch
from torch import nn

from .workspace import workspace


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

    The tanh is taken through the logistic sigmoid, `tanh(x) = 2 sigmoid(2x) - 1`: PyTorch's CPU tanh costs 4-6x
    its sigmoid (measured on AVX-512 and AVX2), and this B x T x S x A tensor is the largest elementwise work of
    the model. With `s = sigmoid(2 q_t + 2 k_i)`:
        score             = v^T (2s - 1) = 2 v^T s - sum(v),
        d score / d q_t   = d score / d k_i = v * (1 - tanh^2) = 4 v * s (1 - s),
        d score / d v     = 2s - 1,
    so the constants fold into the small tensors and only `s` is ever built (within ~2e-7 of tanh in fp32).

    That tensor would take 8 MB for each step of a 64-sentence batch with S = 128 and A = 256, and autograd
    would keep one per step for the backward pass; this function keeps only the queries and keys and recomputes
    `s` in the backward pass. It is built, a block of query steps at a time, in one reused buffer (`workspace.py`):
    allocated afresh at every decoder step, it left the heap full of holes that small saved tensors had split
    (glibc), and training peaked at three times its live memory.
    """

    @staticmethod
    def forward(ctx, query, keys, v):
        """query B x T x A, keys B x S x A, v A -> scores B x T x S."""
        ctx.save_for_backward(query, keys, v)
        return additive_scores(query, keys, v)

    @staticmethod
    def backward(ctx, grad_scores):
        query, keys, v = ctx.saved_tensors
        grad_keys = torch.empty_like(keys)
        grad_query, grad_v = additive_score_sums(grad_scores, query, keys, v, grad_keys)
        return grad_query.mul_(4 * v), grad_keys.mul_(4 * v), grad_v


def additive_scores(query, keys, v):
    """`2 v^T s - sum(v)` with `s = sigmoid(2 q_t + 2 k_i)` (`AdditiveScoreFunction`): query B x T x A,
    keys B x S x A, v A -> scores B x T x S, without autograd."""
    scores = query.new_empty(query.size(0), query.size(1), keys.size(1))
    for rows, steps, sigmoids in _sigmoid_blocks(query, keys):
        scores[rows, steps] = 2 * (sigmoids @ v) - v.sum()
    return scores


def additive_score_sums(grad_scores, query, keys, v, grad_keys_sum, accumulate=False):
    """The backward pass of `additive_scores` up to the factor `4 v` that both input gradients share.

    With `u = s (1 - s) * grad_scores` (B x T x S x A), returns `sum_i u` (B x T x A; times 4 v: the gradient of
    the query) and the gradient of `v`, and writes `sum_t u` (B x S x A; times 4 v: the gradient of the keys) into
    `grad_keys_sum`, or adds it there with `accumulate`: a decoder that scores one step at a time sums its keys'
    gradient over the steps before it scales once.
    """
    grad_query_sum, grad_v = torch.empty_like(query), torch.zeros_like(v)
    for rows, steps, sigmoids in _sigmoid_blocks(query, keys):
        grad = grad_scores[rows, steps].unsqueeze(-1)  # b x t x S x 1
        # Not addmv_: under autocast the buffer is bf16 while v (and so grad_v) stays fp32.
        grad_v += 2 * (grad.reshape(1, -1) @ sigmoids.reshape(-1, sigmoids.size(-1))).squeeze(0) - grad.sum()
        grad_sum = torch.addcmul(sigmoids, sigmoids, sigmoids, value=-1, out=sigmoids).mul_(grad)  # b x t x S x A: u
        grad_query_sum[rows, steps] = grad_sum.sum(dim=2)
        # A sum over one step is a copy, and PyTorch's sum over a dimension of size 1 is several times slower.
        keys_sum = grad_sum[:, 0] if grad_sum.size(1) == 1 else grad_sum.sum(dim=1)  # b x S x A
        if steps.start == 0 and not accumulate:
            grad_keys_sum[rows] = keys_sum
        else:
            grad_keys_sum[rows] += keys_sum
    return grad_query_sum, grad_v


_WORKSPACE_ELEMENTS = 1 << 22  # 16 MB in fp32: at most this much of `s` at once


def _sigmoid_blocks(query, keys):
    """Yields `(rows, steps, sigmoid(2 q_t + 2 k_i))` over blocks of batch rows and query steps, in one reused
    buffer.

    A block is a b x t x S x A view of the thread's workspace (autograd may run the backward pass on another
    thread), valid until the next block is asked for: all steps of all rows when that fits, else as many
    steps (or rows, one step at a time) as fit.
    """
    batch, length, width = query.shape
    query = 2 * query  # B x T x A, small; the keys' factor 2 is the add's alpha below
    per_step = keys.size(1) * width
    rows_per_block = min(batch, max(1, _WORKSPACE_ELEMENTS // per_step))
    steps_per_block = max(1, _WORKSPACE_ELEMENTS // (batch * per_step)) if rows_per_block == batch else 1
    for row in range(0, batch, rows_per_block):
        rows = slice(row, min(row + rows_per_block, batch))
        for step in range(0, length, steps_per_block):
            steps = slice(step, min(step + steps_per_block, length))
            shape = (rows.stop - row, steps.stop - step, keys.size(1), width)
            block = workspace("additive_sigmoids", shape, query)
            yield rows, steps, torch.add(query[rows, steps].unsqueeze(2), keys[rows].unsqueeze(1), alpha=2,
                                          out=block).sigmoid_()


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


class MonotonicAlignment(nn.Module):
    """Luong et al. 2015, section 3.2, local-m: `p_t = t`, as if source and target were monotonically aligned.

    Once t passes the last real source position S, `p_t = S`: the window keeps real positions to attend to.
    """

    gaussian = False

    def __init__(self, config):
        super().__init__()

    def forward(self, query, steps, lengths):
        return torch.minimum(steps.unsqueeze(0), lengths.unsqueeze(1))  # B x T


class PredictiveAlignment(nn.Module):
    """Luong et al. 2015, eq. 9, local-p: `p_t = S * sigmoid(v_p^T tanh(W_p h_t))`, S the real source length."""

    gaussian = True

    def __init__(self, config):
        super().__init__()
        self.W_p = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_p = nn.Linear(config.hidden_size, 1, bias=False)

    def forward(self, query, steps, lengths):
        return lengths.unsqueeze(1) * torch.sigmoid(self.v_p(torch.tanh(self.W_p(query)))).squeeze(-1)  # B x T


ALIGNMENTS = {"local-m": MonotonicAlignment, "local-p": PredictiveAlignment}


def local_window(scores, positions, window, gaussian):
    """Luong et al. 2015, section 3.2: attention restricted to the source positions s in `[p_t - D, p_t + D]`.

    With `gaussian` (local-p), eq. 10 multiplies the weights by `exp(-(s - p_t)^2 / (2 sigma^2))`, `sigma = D / 2`,
    so that they favour positions near `p_t` and `p_t` learns from the loss. The paper leaves the product
    unnormalised; here its logarithm is added to the scores, `softmax(e + log g) = softmax(e) g / sum(softmax(e) g)`,
    which is the paper's product renormalised to sum to 1. Attention then stays a distribution, as global
    attention's is (alignments, heatmaps and `sequence_attentions` read it as one), and `c_t` a weighted mean of
    the `h_i`, on the scale the rest of the decoder sees with global attention.

    Args:
        scores: B x T x S.
        positions: B x T, the aligned positions `p_t` (source positions count from 1).
        window: D.
        gaussian: whether to apply eq. 10's Gaussian.
    Returns:
        the scores (B x T x S) and the window, B x T x S, True inside; `attend` clips it to the real source.
    """
    source_positions = torch.arange(1, scores.size(-1) + 1, device=scores.device)  # S: s, from 1
    distance = source_positions - positions.unsqueeze(-1)  # B x T x S: s - p_t
    if gaussian:
        sigma = window / 2
        scores = scores - distance.square() / (2 * sigma**2)  # e + log exp(-(s - p_t)^2 / (2 sigma^2))
    return scores, distance.abs() <= window


def attend(scores, attention_mask, values, window=None):
    """`alpha = softmax(scores)` over real source positions (in the window, if given), `c_t = sum_i alpha_i h_i`.

    Args:
        scores: B x T x S.
        attention_mask: B x S, 1 for real tokens, 0 for padding.
        values: B x S x K, the encoder states h_i.
        window: B x T x S, True for the positions of local attention's window (`local_window`); None for global
            attention.
    Returns:
        context B x T x K and weights alpha B x T x S (exactly 0 on padding and outside the window).
    """
    masked = (attention_mask == 0).unsqueeze(1)  # B x 1 x S
    if window is not None:
        masked = masked | ~window  # B x T x S
    # The dtype's minimum rather than -inf keeps a fully masked row finite.
    scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1).masked_fill(masked, 0.0)  # B x T x S
    return torch.bmm(weights, values), weights  # B x T x K
