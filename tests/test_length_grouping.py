"""`--train_sampling_strategy group_by_length`: batches of similar target length, in random order."""

import pytest
import torch
from datasets import Dataset
from transformers import Seq2SeqTrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from hf_rnn_attn.length_grouping import ShuffledLengthGroupedSampler
from hf_rnn_attn.training import TranslationTrainer
from tiny_models import tiny_model

BATCH = 4


def batches_of(sampler, seed):
    torch.manual_seed(seed)
    indices = list(sampler)
    return [indices[start:start + BATCH] for start in range(0, len(indices), BATCH)]


def test_batches_of_groups_of_50_hold_transformers_sentences_in_another_order():
    lengths = torch.randint(1, 60, (1_003,), generator=torch.Generator().manual_seed(0)).tolist()
    # The same random draw groups the same sentences; only the order of the batches differs.
    grouped = batches_of(LengthGroupedSampler(BATCH, lengths=lengths), seed=1)
    shuffled = batches_of(ShuffledLengthGroupedSampler(BATCH, lengths=lengths, batches_per_group=50), seed=1)

    assert sorted(map(sorted, shuffled)) == sorted(map(sorted, grouped))
    assert shuffled[0] == grouped[0] and max(lengths[i] for i in shuffled[0]) == max(lengths)  # longest first
    assert len(shuffled[-1]) == 1_003 % BATCH and shuffled[-1] == grouped[-1]  # the partial batch stays last
    # transformers' batches fall in length 50 at a time (its megabatches); shuffled ones rise as often as they fall.
    steps = [max(lengths[i] for i in later) - max(lengths[i] for i in earlier)
             for batches in (grouped, shuffled) for earlier, later in zip(batches[1:-1], batches[2:-1])]
    grouped_steps, shuffled_steps = steps[:len(steps) // 2], steps[len(steps) // 2:]
    assert sum(step > 0 for step in grouped_steps) < len(grouped_steps) * 0.05
    assert 0.35 < sum(step > 0 for step in shuffled_steps) / sum(step != 0 for step in shuffled_steps) < 0.65


def test_batches_group_the_whole_set_by_default():
    """Sorted over the whole set, no two batches' length ranges overlap: the least padding for the batch size."""
    lengths = torch.randint(1, 60, (1_003,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = batches_of(ShuffledLengthGroupedSampler(BATCH, lengths=lengths), seed=1)
    assert sorted(index for batch in batches for index in batch) == list(range(1_003))
    ranges = sorted((min(lengths[i] for i in batch), max(lengths[i] for i in batch)) for batch in batches)
    assert all(high <= next_low for (_, high), (next_low, _) in zip(ranges, ranges[1:]))
    assert max(lengths[i] for i in batches[0]) == max(lengths) and len(batches[-1]) == 1_003 % BATCH
    with pytest.raises(ValueError, match="`batches_per_group` must be a positive integer or None, got 0"):
        ShuffledLengthGroupedSampler(BATCH, lengths=lengths, batches_per_group=0)


def test_batches_follow_the_generator():
    lengths = list(range(100))
    draws = [batches_of(ShuffledLengthGroupedSampler(BATCH, lengths=lengths), seed=seed) for seed in (1, 1, 2)]
    assert draws[0] == draws[1] and draws[0] != draws[2]


def test_trainer_groups_whole_updates_by_target_length_then_source_length(tmp_path):
    target_lengths, source_lengths = [3, 9, 3, 5], [2, 2, 7, 4]
    dataset = Dataset.from_dict({"input_ids": [[5] * n for n in source_lengths],
                                 "labels": [[6] * n for n in target_lengths]})
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                                    gradient_accumulation_steps=3, train_sampling_strategy="group_by_length",
                                    report_to="none", use_cpu=True)
    trainer = TranslationTrainer(model=tiny_model("bigru-bahdanau"), args=args, train_dataset=dataset)
    sampler = trainer._get_train_sampler()

    assert isinstance(sampler, ShuffledLengthGroupedSampler) and sampler.batch_size == 6
    by_length = sorted(range(4), key=sampler.lengths.__getitem__)
    assert [(target_lengths[i], source_lengths[i]) for i in by_length] == [(3, 2), (3, 7), (5, 4), (9, 2)]
