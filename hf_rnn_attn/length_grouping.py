"""Batches of similar length, in random order.

transformers' `LengthGroupedSampler` sorts each megabatch of 50 batches longest first, so 50 training steps in a
row sweep from the longest sentences to the shortest, 20 times per 1,000 steps, and training feels the sweep:
1,000 steps of bigru-bahdanau on the Bible corpus (Adam 1e-3, batch 64) reached a validation loss of 3.37 nats
per token in transformers' order and 3.25 with the same batches shuffled (README, Speed). OpenNMT-py and fairseq
shuffle their batches after bucketing too. Each batch holds the sentences transformers' would, so padding, and
with it speed, is unchanged.
"""

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler


class ShuffledLengthGroupedSampler(LengthGroupedSampler):
    """`LengthGroupedSampler`'s batches of `batch_size` indices, shuffled with the sampler's generator.

    The batch holding the longest sentence stays first (an out-of-memory error shows on the first step, as with
    transformers'), and a last, partial batch stays last: the data loader cuts the index stream into batches of
    `batch_size` in order, so a partial batch anywhere else would shift every batch after it.
    """

    def __iter__(self):
        indices = list(super().__iter__())
        batches = [indices[start:start + self.batch_size] for start in range(0, len(indices), self.batch_size)]
        partial = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        if len(batches) > 1:
            longest_first, rest = batches[0], batches[1:]
            order = torch.randperm(len(rest), generator=self.generator).tolist()
            batches = [longest_first, *(rest[position] for position in order)]
        return iter([index for batch in batches + partial for index in batch])
