"""A GRU layer's directions over a padded batch as one autograd Function, with a hand-written backward (CPU).

Shapes: D directions, B batch, S steps, H hidden size, G = 3H, the gates (reset r, update z, candidate n, in
`nn.GRU`'s order).

`torch.gru` on the CPU runs a direction at a time, some 15 small operations per step that autograd records and
replays. Here, as in `fused_unroll.py`, the forward pass runs without autograd and keeps what the backward pass
needs, the backward pass runs the steps in reverse for `dh_t` and then takes `W_hh`'s gradient as one product over
all steps, and the directions run side by side: one batched product and one set of elementwise operations per step
for all of them. The input gates `W_ih x_t + b_ih` depend on no earlier step: they are one product for all steps,
left to autograd. The BiGRU encoder of a 64-sentence batch (H = 128), forward and backward, against `torch.gru`
(2-core AMD EPYC, interleaved in one process): 41 against 50 ms at 31 tokens, 77 against 80 ms at 60. An earlier
try, a hand-written pass for one direction at a time, took the time of `torch.gru` (16.3 against 16.7 ms): the gain
is the halved number of per-step calls.

tests/test_fast_paths.py holds it to `torch.gru` and the encoder that uses it to the packed `nn.GRU` (states and
gradients).
"""

import torch
import torch.nn.functional as F


def gru_directions(direction_inputs, weights):
    """What `torch.gru` computes for each direction run alone from `h_0 = 0`, with the directions side by side.

    Args:
        direction_inputs: D tensors B x S x I, each direction's inputs in its own order.
        weights: D lists `[W_ih, W_hh, b_ih, b_hh]`, as `nn.GRU` holds them.
    Returns:
        D tensors B x S x H: the states `h_1 ... h_S` of each direction.
    """
    input_gates = torch.stack([F.linear(inputs, weight_ih, bias_ih)  # D x B x S x G, every step at once
                               for inputs, (weight_ih, _, bias_ih, _) in zip(direction_inputs, weights)])
    weight_hh, bias_hh = (torch.stack(parts) for parts in list(zip(*weights))[1::2])  # D x G x H, D x G
    hidden = input_gates.new_zeros(*input_gates.shape[:2], weight_hh.size(-1))  # D x B x H
    return _GRUDirections.apply(input_gates, hidden, weight_hh, bias_hh).unbind(0)


def gru_step(input_gates, hidden_gates, previous, reset_update, candidate, hidden_candidate, hidden):
    """One step of `nn.GRU`'s cell from its input gates `gi` and hidden gates `gh = W_hh h_{t-1} + b_hh` (... x G),
    written into buffers that the backward pass keeps (`gru_step_backward`): `[r ; z]` (... x 2H), `n`, `gh[2H:]`
    and `h_t` (... x H each). `previous` is `h_{t-1}`."""
    size = previous.size(-1)
    torch.add(input_gates[..., :2 * size], hidden_gates[..., :2 * size], out=reset_update).sigmoid_()
    reset, update = reset_update.chunk(2, dim=-1)
    hidden_candidate.copy_(hidden_gates[..., 2 * size:])
    torch.addcmul(input_gates[..., 2 * size:], reset, hidden_gates[..., 2 * size:], out=candidate).tanh_()
    torch.addcmul(candidate, update, previous - candidate, out=hidden)  # (1 - z) n + z h


def gru_step_backward(grad_hidden, previous, reset_update, candidate, hidden_candidate, grad_input_gates,
                      grad_hidden_gates):
    """The backward pass of `gru_step` for `dh_t` (... x H): writes `d gi` and `d gh` (... x G) and returns the part
    of `d h_{t-1}` that flows through `z`; the rest is `d gh W_hh`."""
    size = previous.size(-1)
    reset, update = reset_update.chunk(2, dim=-1)
    grad_candidate = torch.addcmul(grad_hidden, grad_hidden, update, value=-1)  # dh (1 - z)
    grad_update = grad_hidden * (previous - candidate)
    grad_previous = grad_hidden * update
    grad_candidate_in = grad_candidate.mul_(1 - candidate * candidate)  # d (gi_n + r gh_n)
    derivative = reset_update * (1 - reset_update)  # sigmoid' of [r ; z]
    torch.mul(grad_candidate_in * hidden_candidate, derivative[..., :size], out=grad_input_gates[..., :size])
    torch.mul(grad_update, derivative[..., size:], out=grad_input_gates[..., size:2 * size])
    grad_input_gates[..., 2 * size:] = grad_candidate_in
    grad_hidden_gates[..., :2 * size] = grad_input_gates[..., :2 * size]
    torch.mul(grad_candidate_in, reset, out=grad_hidden_gates[..., 2 * size:])
    return grad_previous


class _GRUDirections(torch.autograd.Function):
    """Per step t and direction, as `nn.GRU` computes them (buffers D x S x B x ...: step t of all directions is
    one D x B x ... view):

        gh = W_hh h_{t-1} + b_hh,  [r ; z] = sigmoid(gi[:2H] + gh[:2H]),  n = tanh(gi[2H:] + r * gh[2H:])
        h_t = (1 - z) * n + z * h_{t-1}
    """

    @staticmethod
    def forward(ctx, input_gates, hidden, weight_hh, bias_hh):
        ctx.set_materialize_grads(False)
        size = hidden.size(-1)
        gates = input_gates.transpose(1, 2).contiguous()  # D x S x B x G
        directions, steps, batch = gates.shape[:3]
        hiddens = hidden.new_empty(directions, steps + 1, batch, size)  # h_0 ... h_S
        reset_update = hidden.new_empty(directions, steps, batch, 2 * size)  # [r ; z]
        candidates = hidden.new_empty(directions, steps, batch, size)  # n
        hidden_candidates = torch.empty_like(candidates)  # gh[2H:]
        hiddens[:, 0] = hidden
        weight_t, bias = weight_hh.transpose(1, 2), bias_hh.unsqueeze(1)  # D x H x G, D x 1 x G
        for t in range(steps):
            hidden_gates = torch.baddbmm(bias, hiddens[:, t], weight_t)  # D x B x G
            gru_step(gates[:, t], hidden_gates, hiddens[:, t], reset_update[:, t], candidates[:, t],
                     hidden_candidates[:, t], hiddens[:, t + 1])
        ctx.save_for_backward(weight_hh, hiddens, reset_update, candidates, hidden_candidates)
        return hiddens[:, 1:].transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_states):
        """Back through time for `dh_t`; then `W_hh`'s and `b_hh`'s gradients as one product over all steps."""
        weight_hh, hiddens, reset_update, candidates, hidden_candidates = ctx.saved_tensors
        if grad_states is None:
            return None, None, None, None
        size = hiddens.size(-1)
        grad_states = grad_states.transpose(1, 2)  # D x S x B x H
        directions, steps, batch = grad_states.shape[:3]
        grad_input_gates = hiddens.new_empty(directions, steps, batch, 3 * size)  # d gi
        grad_hidden_gates = torch.empty_like(grad_input_gates)  # d gh
        grad_hidden = torch.zeros_like(hiddens[:, 0])  # d h_t from step t + 1
        for t in reversed(range(steps)):
            grad_hidden = grad_hidden + grad_states[:, t]
            grad_previous = gru_step_backward(grad_hidden, hiddens[:, t], reset_update[:, t], candidates[:, t],
                                              hidden_candidates[:, t], grad_input_gates[:, t],
                                              grad_hidden_gates[:, t])
            grad_hidden = torch.baddbmm(grad_previous, grad_hidden_gates[:, t], weight_hh)  # d h_{t-1}
        all_steps = grad_hidden_gates.reshape(directions, steps * batch, 3 * size)  # D x S B x G
        grad_weight_hh = torch.bmm(all_steps.transpose(1, 2), hiddens[:, :-1].reshape(directions, -1, size))
        return grad_input_gates.transpose(1, 2), grad_hidden, grad_weight_hh, all_steps.sum(dim=1)
