"""The side-by-side benchmark's decoding runs: with --int8 each toolkit decodes with its own int8 option, into files
of their own, and the int8 table compares int8 with int8 only; with --onnx ours also decodes its ONNX export, in
a table against OpenNMT-py's decodes of the same precision; with --reuse, a training measured in an earlier run
keeps that run's matmul peak; GNU time's report gives each command's kernel time, and a note names the decodings
that spent over a tenth of their time (and over 2 s) there."""

import json
from types import SimpleNamespace

from script_helpers import load_script

benchmark_peers = load_script("benchmark_peers")


def fake_runs(monkeypatch):
    """Records the commands that `run_measured` would run, and writes what each would output."""
    commands = []

    def run_measured(command, log_path, env_extra=None):
        command = [str(part) for part in command]
        commands.append(command)
        output = command[command.index("-output" if "-output" in command else "--output") + 1]
        with open(output, "w", encoding="utf-8") as file:
            file.write("hola\n")
        return {"wall_seconds": 2.0, "peak_rss_mib": 100.0}

    monkeypatch.setattr(benchmark_peers, "run_measured", run_measured)
    monkeypatch.setattr(benchmark_peers, "detokenize", lambda tokenizer, lines: lines)
    return commands


def test_int8_decodes_use_each_toolkits_int8_option_and_files_of_their_own(monkeypatch, tmp_path):
    commands = fake_runs(monkeypatch)
    args = SimpleNamespace(max_length=200, threads=2)
    for int8 in (False, True):
        benchmark_peers.translate_onmt(args, tmp_path, tmp_path, tmp_path / "model.pt", None, 5, int8=int8)
        benchmark_peers.translate_ours(args, tmp_path, tmp_path, 5, int8=int8)
    onmt, ours, onmt_int8, ours_int8 = commands
    assert "-int8" not in onmt and "--int8" not in ours
    assert onmt_int8 == [*onmt[:onmt.index("-output") + 1], str(tmp_path / "test.beam5.int8.sub"),
                         *onmt[onmt.index("-output") + 2:], "-int8"]
    assert ours_int8 == [*ours[:ours.index("--output") + 1], str(tmp_path / "test.beam5.int8.txt"),
                         *ours[ours.index("--output") + 2:], "--int8"]
    assert {path.name for path in tmp_path.glob("test.*")} == {"test.beam5.sub", "test.beam5.txt",
                                                                "test.beam5.int8.sub", "test.beam5.int8.txt"}


def test_int8_table_compares_int8_decodes_and_the_fp32_table_does_not_show_them():
    args = SimpleNamespace(num_beams=[1, 5], int8=True, train_steps=10)
    assert benchmark_peers.decodes_to_time(args) == [("1", 1, False), ("5", 5, False), ("1 int8", 1, True),
                                                     ("5 int8", 5, True)]
    assert benchmark_peers.decodes_to_time(SimpleNamespace(num_beams=[5], int8=False)) == [("5", 5, False)]

    def result(fp32_rate, int8_rate):
        decode = {key: {"sentences_per_second": int8_rate if key.endswith("int8") else fp32_rate,
                        "output_subwords": 30.0, "bleu": 10.0} for key in ("1", "5", "1 int8", "5 int8")}
        return {"decode": decode, "train": {}}

    theirs, ours = result(100.0, 200.0), result(150.0, 500.0)
    int8_rows = benchmark_peers.table_rows(args, theirs, ours, int8=True)
    assert [row[0] for row in int8_rows] == [
        "greedy int8: sentences/s, process start included", "greedy int8: output subwords per sentence",
        "greedy int8: BLEU", "beam 5 int8: sentences/s, process start included",
        "beam 5 int8: output subwords per sentence", "beam 5 int8: BLEU"]
    assert int8_rows[0][1:] == ["200.0", "500.0", "2.50"]
    fp32_rows = {row[0]: row[1:] for row in benchmark_peers.table_rows(args, theirs, ours)}
    assert fp32_rows["greedy: sentences/s, process start included"] == ["100.0", "150.0", "1.50"]
    assert not any("int8" in label for label in fp32_rows)


def test_onnx_decodes_run_the_export_through_the_onnx_backend_into_files_of_their_own(monkeypatch, tmp_path):
    commands = fake_runs(monkeypatch)
    args = SimpleNamespace(max_length=200, threads=2)
    for int8 in (False, True):
        benchmark_peers.translate_ours(args, tmp_path, tmp_path, 5, int8=int8)
        benchmark_peers.translate_ours(args, tmp_path, tmp_path, 5, int8=int8, onnx=True)
    torch_fp32, onnx_fp32, _, onnx_int8 = commands
    assert torch_fp32[torch_fp32.index("--model") + 1] == str(tmp_path / "model")
    assert onnx_fp32 == [*torch_fp32[:torch_fp32.index("--model") + 1], str(tmp_path / "onnx"),
                         *torch_fp32[torch_fp32.index("--model") + 2:torch_fp32.index("--output") + 1],
                         str(tmp_path / "test.beam5.onnx.txt"),
                         *torch_fp32[torch_fp32.index("--output") + 2:torch_fp32.index("--device")],
                         "--backend", "onnx", "--threads", "2"]
    assert onnx_int8 == [*onnx_fp32[:onnx_fp32.index("--output") + 1], str(tmp_path / "test.beam5.onnx.int8.txt"),
                         *onnx_fp32[onnx_fp32.index("--output") + 2:], "--int8"]


def test_the_onnx_tables_compare_our_onnx_decodes_with_theirs_of_the_same_precision():
    args = SimpleNamespace(num_beams=[1, 5], int8=True, train_steps=10)
    decode = {key: {"sentences_per_second": rate, "output_subwords": 30.0, "bleu": 10.0}
              for key, rate in {"1": 100.0, "5": 40.0, "1 int8": 120.0, "5 int8": 50.0, "1 onnx": 250.0,
                                "5 onnx": 60.0, "1 onnx int8": 360.0, "5 onnx int8": 125.0}.items()}
    theirs = {"decode": {key: value for key, value in decode.items() if "onnx" not in key}, "train": {}}
    ours = {"decode": decode, "train": {}}
    fp32 = {row[0]: row[1:] for row in benchmark_peers.table_rows(args, theirs, ours, onnx=True)}
    assert fp32["greedy: sentences/s, process start included"] == ["100.0", "250.0", "2.50"]
    assert fp32["beam 5: sentences/s, process start included"] == ["40.0", "60.0", "1.50"]
    assert not any("training" in label or "int8" in label for label in fp32)
    int8 = {row[0]: row[1:] for row in benchmark_peers.table_rows(args, theirs, ours, int8=True, onnx=True)}
    assert int8["greedy int8: sentences/s, process start included"] == ["120.0", "360.0", "3.00"]
    assert int8["beam 5 int8: sentences/s, process start included"] == ["50.0", "125.0", "2.50"]


def test_a_reused_training_keeps_the_matmul_peak_of_the_run_that_trained(monkeypatch, tmp_path):
    monkeypatch.setattr(benchmark_peers, "training_flops_per_target_token", lambda *args: 1.0e6)
    (tmp_path / "ours").mkdir()
    train = {"shape": None, "source_extra": 1, "target_extra": 1, "target_tokens": 4000.0, "loop_seconds": 2.0,
             "wall_seconds": 3.0, "parameters": 1.0e6}

    def measured(saved_train, peak_flops):
        result = benchmark_peers.measure("ours", lambda: (dict(saved_train), {}), None, {}, peak_flops, tmp_path)
        return result["train"]["percent_of_matmul_peak"]

    assert measured(train, 20.0e9) == 100 * 1.0e6 * 2000.0 / 20.0e9  # trained in this run: this run's peak
    saved = json.loads((tmp_path / "ours" / "training.json").read_text())
    assert saved["matmul_peak_flops"] == 20.0e9
    assert measured(saved, 40.0e9) == 100 * 1.0e6 * 2000.0 / 20.0e9  # reused in a later run: still its own peak


GNU_TIME_REPORT = """\tCommand being timed: "onmt_translate -beam_size 5"
\tUser time (seconds): 82.00
\tSystem time (seconds): 12.70
\tPercent of CPU this job got: 191%
\tMaximum resident set size (kbytes): 720160
\tMajor (requiring I/O) page faults: 0
\tMinor (reclaiming a frame) page faults: 5863628
\tExit status: 0
"""


def test_gnu_time_report_gives_peak_memory_kernel_seconds_and_page_faults():
    assert benchmark_peers.read_rusage(GNU_TIME_REPORT) == {
        "peak_rss_mib": 720160 / 1024, "system_seconds": 12.7, "page_faults": 5863628}


def test_a_note_names_each_decoding_with_over_a_tenth_of_its_time_in_the_kernel():
    def decoding(wall, system):
        return {"wall_seconds": wall, "system_seconds": system, "page_faults": 5_863_628}

    results = {"onmt": {"decode": {"1": decoding(14.6, 1.0), "5": decoding(49.4, 12.7)}},
               "ours": {"decode": {"5": decoding(21.5, 2.0), "5 onnx": decoding(23.4, 2.5),
                                   "1 onnx": decoding(4.6, 0.5)}}, "ours-bf16": None}
    assert benchmark_peers.kernel_time_notes(results) == [  # not a process start's half second, nor a tenth or less
        "OpenNMT-py, beam 5: 12.7 s of its 49.4 s in the kernel (5.9 million page faults).",
        "hf_rnn_attn, beam 5 onnx: 2.5 s of its 23.4 s in the kernel (5.9 million page faults)."]
