"""scripts/attention_table.py: each row's commands ask train.py and evaluate_model.py for the variant it names, with
the same budget and data (the table itself takes two hours; `--max_steps 3` runs it as a smoke test)."""

import pytest
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from hf_rnn_attn.training import DataArguments, ModelArguments
from script_helpers import load_script

TABLE = load_script("attention_table")
EXPECTED = {  # row -> (preset, attention_score, attention_type, input_feeding)
    "bigru-bahdanau": ("bigru-bahdanau", None, None, None),
    "luong-additive": ("lstm-luong", "additive", None, True),
    "luong-dot": ("lstm-luong", "dot", None, True),
    "luong-general": ("lstm-luong", "general", None, True),
    "luong-location": ("lstm-luong", "location", None, True),
    "luong-local-m-general": ("lstm-luong", "general", "local-m", True),
    "luong-local-p-general": ("lstm-luong", "general", "local-p", True),
}


def table_arguments(*argv):
    return HfArgumentParser(TABLE.TableArguments).parse_args_into_dataclasses(args=list(argv))[0]


@pytest.mark.parametrize("row", EXPECTED)
def test_each_row_trains_and_scores_the_variant_it_names(row, tmp_path):
    args = table_arguments("--output_dir", str(tmp_path), "--minutes", "7")
    parser = HfArgumentParser((ModelArguments, DataArguments, Seq2SeqTrainingArguments))
    model, data, training = parser.parse_args_into_dataclasses(args=TABLE.train_command(args, row)[2:])
    assert (model.preset, model.attention_score, model.attention_type, model.input_feeding) == EXPECTED[row]
    assert model.local_window == (10 if "local" in row else None)
    assert model.max_source_positions == (128 if row == "luong-location" else None)
    assert model.tokenizer == f"{tmp_path}/tokenizer" and data.dataset == "data/bible-es-en"
    assert data.max_train_minutes == 7 and training.seed == 1 and training.per_device_train_batch_size == 64
    for beams in (1, 5):
        evaluation = load_script("evaluate_model").EvaluationArguments
        (scored,) = HfArgumentParser(evaluation).parse_args_into_dataclasses(
            args=TABLE.evaluate_command(args, row, beams)[2:])
        assert (scored.model, scored.split, scored.num_beams) == (training.output_dir, "test", beams)


def test_rows_and_budget_are_checked():
    assert table_arguments("--no_luong_input_feeding").luong_input_feeding is False
    with pytest.raises(ValueError, match=r"Unknown --rows \['luong-concat'\]; valid rows: \['bigru-bahdanau'"):
        table_arguments("--rows", "luong-concat")
    with pytest.raises(ValueError, match=r"--minutes must be positive, got 0.0"):
        table_arguments("--minutes", "0")
