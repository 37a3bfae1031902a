"""The `bigru-bahdanau` decoder over T teacher-forced tokens as one autograd Function, with a hand-written backward.

Shapes: B batch, T target steps, S source length, H decoder hidden size, K encoder output size, A additive-score
hidden size. `G = 3H`, the GRU's gates (reset r, update z, candidate n, in `nn.GRU`'s order).

With input feeding the recurrence is sequential (step t's input needs `c_{t-1}`), so autograd records some 60
small operations per step and, in the backward pass, multiplies each weight's gradient step by step: 30 products
of 64 rows for each weight of a 30-token batch, at a fraction of the speed of one product of 30 x 64 rows. Here
the forward pass runs without autograd and keeps what the backward pass needs; the backward pass runs the steps
in reverse for the gradients that flow through time (`h_t`, `c_t`), then takes every weight's gradient as one
product over all steps (`_GRUAttentionUnroll.backward`). On the CPU the steps run in blocks of rows side by side,
one per torch thread (`torch_threads.in_row_blocks`): a sentence's recurrence does not touch another's.

It computes exactly what `RNNAttnDecoder.step` computes one token at a time, for a one-layer GRU decoder with input
feeding and global additive attention (the `bigru-bahdanau` preset); `fuses(config)` says when it applies, and
tests/test_fast_paths.py holds it to the plain step (outputs, state and gradients).
"""

import torch

from .attention import additive_score_sums, additive_scores, attend
from .fused_gru import gru_step, gru_step_backward
from .torch_threads import in_row_blocks


def fuses(config):
    """Whether `unroll_gru_attention` computes this config's decoder over teacher-forced tokens."""
    return (config.rnn_cell == "gru" and config.decoder_layers == 1 and config.input_feeding
            and config.attention_score == "additive" and config.attention_type == "global")


def unroll_gru_attention(embedded_gates, hidden, context, keys, projected_keys, attention_mask, rnn, score):
    """Runs the decoder over T tokens.

    Args:
        embedded_gates: B x T x G, `W_ih[:, :E] emb(y_{t-1}) + b_ih`, the input gates' part that needs no context.
        hidden: B x H, `h_0`; context: B x K, `c_0`.
        keys: B x S x K, the encoder states `h_i`; projected_keys: B x S x A, `W2 h_i`.
        attention_mask: B x S, 1 for real source tokens.
        rnn: the decoder's one-layer `nn.GRU` (its `[emb ; c]` input weights and hidden weights).
        score: the decoder's `AdditiveScore` (`W1`, `v`).
    Returns:
        `h_t` (B x T x H), `c_t` (B x T x K) and the attention weights (B x T x S).
    """
    embedding_size = rnn.input_size - keys.size(-1)
    return _GRUAttentionUnroll.apply(
        embedded_gates, hidden, context, keys, projected_keys, attention_mask,
        rnn.weight_ih_l0[:, embedding_size:], rnn.weight_hh_l0, rnn.bias_hh_l0, score.W1.weight,
        score.v.weight.squeeze(0))


class _GRUAttentionUnroll(torch.autograd.Function):
    """Per step t, as `nn.GRU` and `attend` compute them (time-major buffers: step t is a contiguous B x ... block):

        gi = gates_t + W_c c_{t-1},  gh = W_hh h_{t-1} + b_hh           (B x G each; W_c = W_ih[:, E:])
        [r ; z] = sigmoid(gi[:2H] + gh[:2H]),  n = tanh(gi[2H:] + r * gh[2H:])
        h_t = (1 - z) * n + z * h_{t-1}
        alpha_t = softmax over real positions of v^T tanh(W1 h_t + k_i),  c_t = sum_i alpha_ti h_i
    """

    @staticmethod
    def forward(ctx, embedded_gates, hidden, context, keys, projected_keys, attention_mask, weight_context,
                weight_hh, bias_hh, weight_query, v):
        ctx.set_materialize_grads(False)
        size = hidden.size(-1)
        gates = embedded_gates.transpose(0, 1).contiguous()  # T x B x G
        steps = gates.size(0)
        hiddens = hidden.new_empty(steps + 1, *hidden.shape)  # T+1 x B x H: h_0 ... h_T
        contexts = context.new_empty(steps + 1, *context.shape)  # T+1 x B x K: c_0 ... c_T
        reset_update = hidden.new_empty(steps, hidden.size(0), 2 * size)  # T x B x 2H: [r ; z]
        candidates, hidden_candidates = torch.empty_like(hiddens[1:]), torch.empty_like(hiddens[1:])  # n, gh[2H:]
        queries = hidden.new_empty(steps, hidden.size(0), weight_query.size(0))  # T x B x A: W1 h_t
        weights = keys.new_empty(steps, keys.size(0), keys.size(1))  # T x B x S: alpha_t
        hiddens[0], contexts[0] = hidden, context

        def run_rows(rows):
            row_keys, row_projected_keys, row_mask = keys[rows], projected_keys[rows], attention_mask[rows]
            for t in range(steps):
                input_gates = torch.addmm(gates[t, rows], contexts[t, rows], weight_context.t())  # b x G
                hidden_gates = torch.addmm(bias_hh, hiddens[t, rows], weight_hh.t())  # b x G
                gru_step(input_gates, hidden_gates, hiddens[t, rows], reset_update[t, rows], candidates[t, rows],
                         hidden_candidates[t, rows], hiddens[t + 1, rows])
                torch.mm(hiddens[t + 1, rows], weight_query.t(), out=queries[t, rows])
                scores = additive_scores(queries[t, rows].unsqueeze(1), row_projected_keys, v)  # b x 1 x S
                step_context, step_weights = attend(scores, row_mask, row_keys)  # b x 1 x K, b x 1 x S
                contexts[t + 1, rows], weights[t, rows] = step_context.squeeze(1), step_weights.squeeze(1)

        in_row_blocks(run_rows, hidden.size(0), hidden.device)
        ctx.save_for_backward(keys, projected_keys, weight_context, weight_hh, weight_query, v, hiddens, contexts,
                              reset_update, candidates, hidden_candidates, queries, weights)
        return hiddens[1:].transpose(0, 1), contexts[1:].transpose(0, 1), weights.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_hiddens, grad_contexts, grad_weights):
        """Back through time for `dh_t` and `dc_t`; then each weight's gradient as one product over all steps."""
        (keys, projected_keys, weight_context, weight_hh, weight_query, v, hiddens, contexts, reset_update,
         candidates, hidden_candidates, queries, weights) = ctx.saved_tensors
        steps, size = weights.size(0), hiddens.size(-1)
        time_major = [None if grad is None else grad.transpose(0, 1) for grad in (grad_hiddens, grad_contexts,
                                                                                  grad_weights)]
        grad_hiddens, grad_contexts, grad_weights = time_major
        grad_input_gates = hiddens.new_empty(steps, hiddens.size(1), 3 * size)  # T x B x G: d gi
        grad_hidden_gates = torch.empty_like(grad_input_gates)  # d gh
        grad_queries = torch.empty_like(queries)  # T x B x A, up to the factor 4 v
        grad_step_contexts = torch.empty_like(contexts[1:])  # T x B x K: d c_t, through both its uses
        grad_projected_keys = torch.zeros_like(projected_keys)  # up to the factor 4 v

        def run_rows(rows):
            """Back through time for these rows: returns their `d h_0`, `d c_0` and their part of `d v`."""
            row_keys, row_projected_keys = keys[rows], projected_keys[rows]
            row_grad_projected_keys = grad_projected_keys[rows]
            grad_v = torch.zeros_like(v)
            grad_hidden = hiddens.new_zeros(hiddens[0, rows].shape)  # d h_t from step t + 1
            grad_context = contexts.new_zeros(contexts[0, rows].shape)  # d c_t from step t + 1
            for t in reversed(range(steps)):
                if grad_contexts is not None:
                    grad_context = grad_context + grad_contexts[t, rows]
                grad_step_contexts[t, rows] = grad_context
                # c_t = alpha_t h: d alpha_t, then the softmax's backward (padding has alpha = 0 and gets 0).
                # As a row times keys^T: the same product as keys times a column, ~9x faster on the CPU.
                grad_alpha = torch.bmm(grad_context.unsqueeze(1), row_keys.transpose(1, 2)).squeeze(1)  # b x S
                if grad_weights is not None:
                    grad_alpha = grad_alpha + grad_weights[t, rows]
                alpha = weights[t, rows]
                grad_scores = alpha * (grad_alpha - (alpha * grad_alpha).sum(dim=-1, keepdim=True))  # b x S
                grad_query, step_grad_v = additive_score_sums(
                    grad_scores.unsqueeze(1), queries[t, rows].unsqueeze(1), row_projected_keys, v,
                    row_grad_projected_keys, accumulate=True)
                grad_v += step_grad_v
                grad_queries[t, rows] = grad_query.squeeze(1).mul_(4 * v)
                grad_hidden = torch.addmm(grad_hidden, grad_queries[t, rows], weight_query)  # b x H: d h_t
                if grad_hiddens is not None:
                    grad_hidden += grad_hiddens[t, rows]
                grad_previous = gru_step_backward(grad_hidden, hiddens[t, rows], reset_update[t, rows],
                                                  candidates[t, rows], hidden_candidates[t, rows],
                                                  grad_input_gates[t, rows], grad_hidden_gates[t, rows])
                grad_hidden = torch.addmm(grad_previous, grad_hidden_gates[t, rows], weight_hh)  # d h_{t-1}
                grad_context = grad_input_gates[t, rows] @ weight_context  # d c_{t-1}, through the input gates
            return grad_hidden, grad_context, grad_v

        hidden_parts, context_parts, v_parts = zip(*in_row_blocks(run_rows, hiddens.size(1), hiddens.device))
        grad_hidden, grad_context, grad_v = torch.cat(hidden_parts), torch.cat(context_parts), sum(v_parts)
        grad_weight_context = _all_steps(grad_input_gates).t() @ _all_steps(contexts[:-1])  # G x K
        grad_weight_hh = _all_steps(grad_hidden_gates).t() @ _all_steps(hiddens[:-1])  # G x H
        grad_bias_hh = _all_steps(grad_hidden_gates).sum(dim=0)
        grad_weight_query = _all_steps(grad_queries).t() @ _all_steps(hiddens[1:])  # A x H
        grad_keys = torch.bmm(weights.permute(1, 2, 0), grad_step_contexts.transpose(0, 1))  # B x S x K
        return (grad_input_gates.transpose(0, 1), grad_hidden, grad_context, grad_keys,
                grad_projected_keys.mul_(4 * v), None, grad_weight_context, grad_weight_hh, grad_bias_hh,
                grad_weight_query, grad_v)


def _all_steps(tensor):
    """T x B x N -> (T B) x N: every step's rows, for one product over all steps."""
    return tensor.reshape(-1, tensor.size(-1))
