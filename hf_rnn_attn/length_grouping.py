"""Batches of similar length over the whole training set, in random order.

transformers' `LengthGroupedSampler` sorts by length within megabatches of 50 batches drawn at random, and hands
each megabatch out longest first, so 50 training steps in a row sweep from the longest sentences to the shortest,
20 times per 1,000 steps, and training feels the sweep: 1,000 steps of bigru-bahdanau on the Bible corpus (Adam
1e-3, batch 64) reached a validation loss of 3.37 nats per token in transformers' order and 3.25 with the same
batches shuffled (README, Speed). OpenNMT-py and fairseq shuffle their batches after bucketing too.

The groups span the whole training set by default, as OpenNMT-py's bucket does: the more sentences a group sorts,
the closer the lengths in each batch. On the Bible corpus, batch 64, grouped by target then source length, the
padded tokens per real token with groups of 50 batches and of the whole set: source 1.30 and 1.09, target 1.037
and 1.007. The encoder and attention compute every padded source position, the decoder's steps every padded target
position (the loss skips them).
"""

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


class ShuffledLengthGroupedSampler(LengthGroupedSampler):
    """Batches of `batch_size` indices sorted by length within groups of `batches_per_group` batches drawn at random
    (None: one group, the whole set; 50: transformers' batches), then shuffled with the sampler's generator.

    The batch holding the longest sentence stays first (an out-of-memory error shows on the first step, as with
    transformers'), and a last, partial batch stays last: the data loader cuts the index stream into batches of
    `batch_size` in order, so a partial batch anywhere else would shift every batch after it.
    """

    def __init__(self, batch_size, *args, batches_per_group=None, **kwargs):
        super().__init__(batch_size, *args, **kwargs)
        if batches_per_group is not None and (not isinstance(batches_per_group, int) or batches_per_group < 1):
            raise ValueError(f"`batches_per_group` must be a positive integer or None, got {batches_per_group!r}.")
        self.batches_per_group = batches_per_group or -(-len(self.lengths) // batch_size)

    def __iter__(self):
        indices = get_length_grouped_indices(self.lengths, self.batch_size, mega_batch_mult=self.batches_per_group,
                                             generator=self.generator)
        batches = [indices[start:start + self.batch_size] for start in range(0, len(indices), self.batch_size)]
        partial = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        if len(batches) > 1:
            longest_first, rest = batches[0], batches[1:]
            order = torch.randperm(len(rest), generator=self.generator).tolist()
            batches = [longest_first, *(rest[position] for position in order)]
        return iter([index for batch in batches + partial for index in batch])
