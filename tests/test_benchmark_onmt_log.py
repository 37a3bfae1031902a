"""The side-by-side benchmark reads OpenNMT-py's training log: tokens, loop time, and the rate without its start.

The log lines are OpenNMT-py 3.0.4's, with the metrics between accuracy and batch size cut (`(...)`)."""

import pytest

from script_helpers import load_script

benchmark_peers = load_script("benchmark_peers")

LOG = """\
[2026-12-06 02:38:25,952 INFO] Start training loop and validate every 10000 steps...
[2026-12-06 02:38:52,581 INFO] Step  1/    3; acc: 0.0; (...) bsz: 1114/1123/64;  42/ 42 tok/s;     27 sec;
[2026-12-06 02:38:53,581 INFO] Step  2/    3; acc: 0.7; (...) bsz: 1928/1905/64; 1431/1414 tok/s;     28 sec;
[2026-12-06 02:38:55,581 INFO] Step  3/    3; acc: 0.7; (...) bsz: 2000/2095/64; 1431/1414 tok/s;     30 sec;
"""


def test_onmt_log_gives_tokens_loop_time_and_the_rate_after_its_first_step(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(LOG, encoding="utf-8")
    parsed = benchmark_peers.parse_onmt_training_log(log)
    assert parsed["steps"] == 3
    assert parsed["target_tokens"] == 1123 + 1905 + 2095
    assert parsed["loop_seconds"] == pytest.approx(29.629)
    assert parsed["first_step_seconds"] == pytest.approx(26.629)
    assert parsed["steady_tokens_per_second"] == pytest.approx((1905 + 2095) / 3.0)


def test_start_note_compares_our_loop_rate_with_theirs_after_the_start():
    onmt = {"first_step_seconds": 26.6, "steady_tokens_per_second": 3000.0}
    ours = {"train": {"target_tokens_per_second": 3600.0}}
    assert benchmark_peers.onmt_start_note(onmt, ours) == (
        "OpenNMT-py's step loop includes 26.6 s before its first step, filling its bucket of examples "
        "(--onmt_bucket_size). From its first step on it trained 3,000 real target tokens/s (ours over the whole "
        "step loop: 1.20x that).")
    assert benchmark_peers.onmt_start_note(onmt, None).endswith("it trained 3,000 real target tokens/s.")
