"""The decoder's recurrent state, carried between steps as `past_key_values`.

Everything is batch-first so that `generate()` can reorder it along dim 0 during beam search; it is
transposed to `(layers, B, H)` only at the `nn.GRU`/`nn.LSTM` call. One container serves GRU and LSTM:
`cell` is simply `None` for a GRU.
"""

from dataclasses import dataclass, fields

import torch


@dataclass
class RNNAttnState:
    """Decoder state after `seen_tokens` target tokens.

    Attributes:
        hidden: B x L x H, the decoder RNN's hidden state per layer.
        cell: B x L x H for an LSTM, else None.
        context: B x K, the previous attention context `c_{t-1}` when the decoder uses input feeding, else None.
        projected_keys: the score's projection of the encoder states (e.g. `W2 h_i`, B x S x A), computed
            once per source sentence.
        seen_tokens: number of target tokens consumed so far.
    """

    hidden: torch.Tensor
    cell: torch.Tensor | None
    context: torch.Tensor | None
    projected_keys: torch.Tensor
    seen_tokens: int = 0

    # Read by generate(): this state can be neither compiled as a static cache nor cropped.
    is_compileable = False
    is_croppable = False

    def tensors(self):
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def reorder_cache(self, beam_idx):
        """Keeps, in place, the rows of the beams that survived (generate() ignores a return value)."""
        for name, tensor in self.tensors().items():
            setattr(self, name, tensor.index_select(0, beam_idx.to(tensor.device)))

    def get_seq_length(self, layer_idx=0):
        return self.seen_tokens

    def rnn_state(self):
        """The state as `nn.GRU`/`nn.LSTM` take it: (L, B, H), or a pair of them for an LSTM."""
        hidden = self.hidden.transpose(0, 1).contiguous()
        if self.cell is None:
            return hidden
        return hidden, self.cell.transpose(0, 1).contiguous()
