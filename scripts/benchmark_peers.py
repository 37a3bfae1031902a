"""Side-by-side speed benchmark against OpenNMT-py 3.0.4: same data, subwords, model shape, steps and test verses.

Usage:
    .venv/bin/pip install -e ".[bench]"                       # OpenNMT-py 3.0.4 on the pinned torch
    .venv/bin/python scripts/benchmark_peers.py               # 300 steps each, 1,000 test verses, beams 1 and 5
    .venv/bin/python scripts/benchmark_peers.py --preset lstm-luong           # the other architecture
    .venv/bin/python scripts/benchmark_peers.py --train_steps 20 --decode_sentences 64 --output_dir runs/bench-smoke
    .venv/bin/python scripts/benchmark_peers.py --skip_onmt   # ours again (after a change to the package);
                                                              # OpenNMT-py's numbers from its last run there
    .venv/bin/python scripts/benchmark_peers.py --reuse       # keep both trained models, time decoding again
    .venv/bin/python scripts/benchmark_peers.py --tokenizer runs/tokenizer    # an existing joint tokenizer
    .venv/bin/python scripts/benchmark_peers.py --bf16        # ours also trained under bf16 autocast (AMX, AVX512-BF16)
    .venv/bin/python scripts/benchmark_peers.py --reuse --int8   # both also decode with their dynamic int8 options
    .venv/bin/python scripts/benchmark_peers.py --reuse --onnx   # ours also through `--backend onnx`

Both toolkits see the same train split, cut by the same joint BPE tokenizer (OpenNMT-py gets it as
space-separated subwords and a vocabulary written from the tokenizer; its output is decoded back to text with
the same tokenizer). They train one after the other for --train_steps steps of 64 sentences, then translate the
first --decode_sentences test verses through their own command lines, each timed as a whole process. Everything
runs with --threads threads. One markdown table is printed and written with all raw numbers to
OUTPUT_DIR/results.json, with notes: among them each decoding that spent over a tenth of its time (and over 2 s) in
the kernel (OpenNMT-py's beam search does in some runs and not in others, with the same input). With --bf16, ours
trains a second time under bf16 autocast (`--bf16 true`; it decodes in fp32 as always) and a second table compares
that run with the same OpenNMT-py run, against the bf16 matmul peak.
With --int8, each toolkit also translates with its own dynamic int8 quantisation of its fp32 model
(`onmt_translate -int8`, `hf-rnn-attn translate --int8`: both torch.ao's `quantize_dynamic`), in a third table.
With --onnx, ours is also exported once (`hf-rnn-attn export`, timed apart) and translates through `hf-rnn-attn
translate --backend onnx`, which runs without torch or transformers (the same translations in fp32), in a table of
its own against OpenNMT-py's fp32 decodes (with --int8, another for the int8 graphs against its -int8 ones).

Useful FLOPs count only the matrix products a model needs (`training_flops_per_target_token`), on real tokens:
padding, and OpenNMT-py's recomputation of the attention keys at every target step, are not useful work.
"""

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from transformers import AutoTokenizer, HfArgumentParser

from hf_rnn_attn import RNNAttnConfig
from hf_rnn_attn.metrics import load_translation_metric
from hf_rnn_attn.onednn_products import onednn_linear
from hf_rnn_attn.tokenizer_training import train_translation_tokenizer

# Our side of the comparison; the preset's shape, then run-specific arguments (steps, seed, paths) from `train_ours`.
REFERENCE_SHAPE = ["--embedding_size", "256", "--hidden_size", "256"]  # with each preset's encoder size below
HF_TRAIN_ARGS = [
    *REFERENCE_SHAPE, "--dropout", "0", "--per_device_train_batch_size", "64", "--learning_rate", "1e-3",
    "--lr_scheduler_type", "constant", "--max_grad_norm", "5", "--eval_strategy", "no", "--save_strategy", "no",
    "--report_to", "none", "--dataloader_num_workers", "0", "--use_cpu", "true",
    "--train_sampling_strategy", "group_by_length",  # batches of similar target length: little padding
    "--loss_normalization", "sentences",  # every token weighs the same in every batch, as OpenNMT-py's default
]

# OpenNMT-py's side, as asked in issue 14; data paths, steps and seed are added by `train_onmt`.
ONMT_SETTINGS = {
    "decoder_type": "rnn", "word_vec_size": 256, "hidden_size": 256, "dropout": [0.0], "batch_type": "sents",
    "batch_size": 64, "optim": "adam", "learning_rate": 0.001, "max_grad_norm": 5, "param_init": 0.1,
    "world_size": 1, "gpu_ranks": [], "num_workers": 0,
    # src/tgt_seq_length act only through the filtertoolong transform; ours truncates at 128 tokens instead.
    "transforms": ["filtertoolong"], "src_seq_length": 128, "tgt_seq_length": 128,
    "share_vocab": True, "report_every": 1,  # one log line per step gives its exact target tokens and loop end
}
# The names of `measure`'s runs in the printed notes.
TOOLKIT_NAMES = {"onmt": "OpenNMT-py", "ours": "hf_rnn_attn", "ours-bf16": "hf_rnn_attn trained in bf16"}
# The same architecture in each toolkit's terms. --encoder_hidden_size 128 matches OpenNMT-py's brnn, which
# splits hidden_size 256 into two 128 directions; its Luong decoder without input feeding is lstm-luong's.
PRESETS = {
    "bigru-bahdanau": {
        "ours": ["--preset", "bigru-bahdanau", "--encoder_hidden_size", "128"],
        "onmt": {"encoder_type": "brnn", "rnn_type": "GRU", "layers": 1, "global_attention": "mlp", "input_feed": 1},
    },
    "lstm-luong": {
        "ours": ["--preset", "lstm-luong", "--encoder_hidden_size", "256"],
        "onmt": {"encoder_type": "rnn", "rnn_type": "LSTM", "layers": 2, "global_attention": "general",
                 "input_feed": 0},
    },
}
ONMT_SPECIALS = 4  # <unk> <blank> <s> </s>, which onmt prepends to the vocabulary file's tokens

BIN = Path(sys.executable).parent
TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
ONMT_TRAIN_FOR = Path(__file__).resolve().parent / "onmt_train_for.py"
GNU_TIME = "/usr/bin/time"


@dataclass
class PeerBenchmarkArguments:
    dataset: str = field(default="data/bible-es-en", metadata={"help": "Folder with train/validation/test.jsonl."})
    preset: str = field(default="bigru-bahdanau", metadata={"help": f"Architecture: {' or '.join(PRESETS)}."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Data, models, logs, results.json (default: runs/benchmark_peers/PRESET)."})
    source_lang: str = "es"
    target_lang: str = "en"
    tokenizer: str | None = field(default=None, metadata={"help": "Joint tokenizer folder (default: train one)."})
    vocab_size: int = field(default=8000, metadata={"help": "Size of the joint vocabulary when training one."})
    train_steps: int = field(default=300, metadata={"help": "Training steps of 64 sentences for each toolkit."})
    decode_sentences: int = field(default=1000, metadata={"help": "First test verses to translate."})
    num_beams: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "Beam sizes to time."})
    max_length: int = field(default=200, metadata={"help": "Longest translation in subword tokens."})
    threads: int = 2
    seed: int = 1
    skip_onmt: bool = field(default=False, metadata={"help": "Reuse OpenNMT-py's measurements from output_dir."})
    skip_ours: bool = field(default=False, metadata={"help": "Reuse hf_rnn_attn's measurements from output_dir."})
    reuse: bool = field(default=False, metadata={"help": "Keep models already trained in output_dir; decode again."})
    onmt_bucket_size: int | None = field(default=None, metadata={
        "help": "OpenNMT-py's bucket_size (default: its own, 262144 examples, filled before the first step)."})
    bf16: bool = field(default=False, metadata={
        "help": "Also train ours under bf16 autocast, measured separately (it pays on CPUs with AMX or AVX512-BF16)."})
    int8: bool = field(default=False, metadata={
        "help": "Also translate with each toolkit's dynamic int8 quantisation of its fp32 model, measured separately."})
    onnx: bool = field(default=False, metadata={
        "help": "Also translate with ours exported to ONNX (`hf-rnn-attn translate --backend onnx`), measured apart."})


def hf_train_args(preset):
    return [*PRESETS[preset]["ours"], *HF_TRAIN_ARGS]


def onmt_settings(preset):
    return {**ONMT_SETTINGS, **PRESETS[preset]["onmt"]}


# ---------------------------------------------------------------------------------------------------- machine

# Environment variables that hold torch's own kernels, MKL's and oneDNN's to an older instruction set: all three set
# to AVX2 (ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2) measure on an AVX-512
# machine what its cores do with AVX2 alone. Subprocesses inherit them.
KERNEL_LIMITS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def kernel_description():
    """The instruction set torch's CPU kernels use in this process, and the limits set on MKL's and oneDNN's."""
    limits = [f"{name}={os.environ[name]}" for name in KERNEL_LIMITS if name in os.environ]
    return f"torch kernels {torch.backends.cpu.get_cpu_capability()}" + (f" ({', '.join(limits)})" if limits else "")


def read_lscpu():
    """The CPU's model name (None if lscpu gives none) and its set of instruction-set flags."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    model = fields.get("Model name", "").strip() or None
    return model, set(fields.get("Flags", "").split())


def describe_machine(threads):
    model, flags = read_lscpu()
    return {
        "cpu": model or "unknown",
        "cores": os.cpu_count(),
        "flags": {name: name in flags for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")},
        "torch": torch.__version__,
        "kernels": kernel_description(),
        "threads": threads,
        "load_average_1min": os.getloadavg()[0],
    }


def cpu_line(machine):
    """`CPU: model (cores; flags); torch kernels ...`, from `describe_machine`."""
    flags = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in machine["flags"].items())
    return f"CPU: {machine['cpu']} ({machine['cores']} cores; {flags}); {machine['kernels']}"


def matmul_peak_flops(size=4096, repeats=3, dtype=torch.float32):
    """Best FLOP/s of a size x size product in `dtype`: the machine's practical peak. Both of torch's CPU
    libraries are tried, torch.matmul (MKL's sgemm in float32) and oneDNN's product, which our output layer runs
    (`hf_rnn_attn/onednn_products.py`) and which beats MKL on AMD CPUs."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    products = [lambda: torch.matmul(a, b)]
    if torch.backends.mkldnn.is_available():
        products.append(lambda: onednn_linear(a, b))
    best = math.inf
    for product in products:
        product()  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def run_measured(command, log_path, env_extra=None):
    """Run `command` to completion under GNU time; returns wall seconds (process start included) and peak RSS."""
    rusage_path = Path(log_path).with_suffix(".time")
    env = {**os.environ, **(env_extra or {})}
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.run([GNU_TIME, "-v", "-o", str(rusage_path), *map(str, command)], stdout=log,
                                 stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        sys.exit(f"{Path(command[0]).name} failed (exit {process.returncode}); see {log_path}")
    return {"wall_seconds": wall, **read_rusage(rusage_path.read_text()), "command": list(map(str, command))}


def read_rusage(text):
    """Peak RSS, seconds in the kernel and minor page faults from GNU time's `-v` report."""
    def number(label):
        return float(re.search(rf"{re.escape(label)}: ([\d.]+)", text).group(1))

    return {"peak_rss_mib": number("Maximum resident set size (kbytes)") / 1024,
            "system_seconds": number("System time (seconds)"),
            "page_faults": int(number("Minor (reclaiming a frame) page faults"))}


# ------------------------------------------------------------------------------------------------------- data

def read_split(dataset, split, source_lang, target_lang):
    with open(Path(dataset) / f"{split}.jsonl", encoding="utf-8") as lines:
        pairs = [json.loads(line)["translation"] for line in lines if line.strip()]
    return [pair[source_lang] for pair in pairs], [pair[target_lang] for pair in pairs]


def load_or_train_tokenizer(args, out):
    if args.tokenizer:
        return AutoTokenizer.from_pretrained(args.tokenizer), args.tokenizer
    folder = out / "tokenizer"
    if not (args.reuse and (folder / "tokenizer.json").is_file()):
        sources, targets = read_split(args.dataset, "train", args.source_lang, args.target_lang)
        train_translation_tokenizer(sources, targets, vocab_size=args.vocab_size).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder), str(folder)


def subwords(tokenizer, texts):
    """Subword tokens of each text, without the `</s>` the tokenizer appends (onmt adds its own)."""
    token_lists = [tokenizer.convert_ids_to_tokens(ids[:-1]) for ids in tokenizer(texts)["input_ids"]]
    for tokens in token_lists:
        if any(len(token.split()) != 1 for token in tokens):
            sys.exit(f"A subword contains whitespace, so it cannot be written space-separated: {tokens}")
    return token_lists


def write_lines(path, lines):
    Path(path).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def prepare_data(args, tokenizer, out):
    """Segmented splits and the vocabulary for onmt, raw test sources and references; length statistics.

    Statistics are per train pair, in subwords without `</s>`: `source`, `target` and `source_x_target`
    (the attention's work), means over the split.
    """
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train"), ("validation", "valid"), ("test", "test")):
        sources, targets = read_split(args.dataset, split, args.source_lang, args.target_lang)
        if split == "test":
            sources, targets = sources[: args.decode_sentences], targets[: args.decode_sentences]
            write_lines(data / "test.src.txt", sources)
            write_lines(data / "test.ref.txt", targets)
        source_tokens, target_tokens = subwords(tokenizer, sources), subwords(tokenizer, targets)
        write_lines(data / f"{name}.src.sub", (" ".join(tokens) for tokens in source_tokens))
        write_lines(data / f"{name}.tgt.sub", (" ".join(tokens) for tokens in target_tokens))
        if split == "train":
            lengths = [(len(s), len(t)) for s, t in zip(source_tokens, target_tokens)]
            stats = {"pairs": len(lengths),
                     "source": sum(s for s, _ in lengths) / len(lengths),
                     "target": sum(t for _, t in lengths) / len(lengths),
                     "source_x_target": sum(s * t for s, t in lengths) / len(lengths),
                     "longest": max(max(pair) for pair in lengths)}
    specials = set(tokenizer.all_special_tokens)
    vocabulary = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
                  if token not in specials]
    write_lines(data / "vocab.txt", vocabulary)
    return data, stats


def detokenize(tokenizer, lines):
    return [tokenizer.decode(tokenizer.convert_tokens_to_ids(line.split()), skip_special_tokens=True)
            for line in lines]


def score_translations(hypotheses, references, tokenizer, metric):
    """BLEU, and the mean output length in subwords: a decoder that stops early has less to do."""
    lengths = [len(ids) - 1 for ids in tokenizer(hypotheses)["input_ids"]]  # without </s>
    return {"bleu": metric.compute(predictions=hypotheses, references=references)["bleu"],
            "output_subwords": sum(lengths) / len(lengths)}


# ------------------------------------------------------------------------------------------------------ FLOPs

def rnn_macs(cell, input_size, hidden_size):
    """Multiply-adds of one RNN step: three (GRU) or four (LSTM) gates, each W x + U h."""
    return {"gru": 3, "lstm": 4}[cell] * (input_size + hidden_size) * hidden_size


def stack_macs(cell, layers, directions, input_size, hidden_size):
    """One step of a stack of RNN layers; layer l > 0 reads the `directions` states of the layer below."""
    return sum(directions * rnn_macs(cell, input_size if layer == 0 else directions * hidden_size, hidden_size)
               for layer in range(layers))


def training_flops_per_target_token(shape, stats, source_extra, target_extra):
    """Useful training FLOPs per real target token of an encoder-decoder with global attention.

    Per pair of S source and T target tokens (`stats` means plus the toolkit's own `*_extra` tokens, e.g. `</s>`):
    S x (encoder stack + the attention key projection), T x (decoder stack on [emb ; fed vector], the query
    projection of an additive score, output layers) and S x T x (the score and the context sum); x2 for multiply and
    add, x3 for forward + backward. Per-pair terms (the initial decoder state) are left out.
    """
    e, k_dir, h, a = shape["embedding"], shape["encoder_hidden"], shape["hidden"], shape["attention"]
    k = shape["directions"] * k_dir
    source, target = stats["source"] + source_extra, stats["target"] + target_extra
    source_x_target = (stats["source_x_target"] + target_extra * stats["source"] + source_extra * stats["target"]
                       + source_extra * target_extra)
    additive = shape["score"] == "additive"
    macs = (source * (stack_macs(shape["cell"], shape["encoder_layers"], shape["directions"], e, k_dir)
                      + k * (a if additive else h))
            + target * (stack_macs(shape["cell"], shape["decoder_layers"], 1, e + shape["feed"], h)
                        + (h * a if additive else 0) + shape["output_macs"])
            + source_x_target * ((a if additive else h) + k))
    return 2 * 3 * macs / target


def onmt_shape(settings, vocab_size):
    """OpenNMT-py computes attn_h = tanh(W_out [c ; h]) (size H), feeds it when input-feeding, and projects it to
    the vocabulary."""
    h, brnn = settings["hidden_size"], settings["encoder_type"] == "brnn"
    k_dir = h // 2 if brnn else h  # either way the encoder states have size K = H
    return {"cell": settings["rnn_type"].lower(), "encoder_layers": settings["layers"],
            "decoder_layers": settings["layers"], "directions": 2 if brnn else 1, "embedding": settings["word_vec_size"],
            "encoder_hidden": k_dir, "hidden": h, "attention": h,
            "score": {"mlp": "additive", "general": "general", "dot": "dot"}[settings["global_attention"]],
            "feed": h if settings["input_feed"] else 0, "output_macs": (h + h) * h + h * vocab_size}


def our_shape(config):
    """Ours feeds the context c (size K); the output is W_o [h ; c] ('linear') or W_s tanh(W_c [h ; c]) ('tanh')."""
    if config.attention_score not in ("additive", "general", "dot"):
        sys.exit(f"The FLOP count covers additive, general and dot scores, not {config.attention_score!r}.")
    k, h = config.encoder_output_size, config.hidden_size
    w_c = (h + k) * h if config.output_layer == "tanh" else 0
    return {"cell": config.rnn_cell, "encoder_layers": config.encoder_layers, "decoder_layers": config.decoder_layers,
            "directions": 2 if config.bidirectional_encoder else 1, "embedding": config.embedding_size,
            "encoder_hidden": config.encoder_hidden_size, "hidden": h, "attention": config.attention_hidden_size,
            "score": config.attention_score, "feed": k if config.input_feeding else 0,
            "output_macs": w_c + config.output_layer_input_size * config.vocab_size}


# --------------------------------------------------------------------------------------------------- OpenNMT-py

ONMT_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO\] (.*)$")
ONMT_STEP = re.compile(r"Step\s+(\d+)/\s*\d+; .*?bsz:\s*\d+/\s*(\d+)/")


def onmt_env(threads):
    # torch >= 2.6 loads checkpoints with weights_only=True by default; OpenNMT-py 3.0.4's checkpoints hold its
    # options (an argparse.Namespace) and vocabularies, which that refuses, so its translate step could not
    # load a model. Only OpenNMT-py's own processes get this, for its own freshly written checkpoints.
    return {"OMP_NUM_THREADS": str(threads), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


def parse_onmt_training_log(log_path):
    """Real target tokens (with `</s>`) and seconds from 'Start training loop' to the first and last step's report.

    With report_every 1 each 'Step' line's batch target size ("bsz: src/tgt/sents") is one batch's count of
    non-padding target tokens. `steady_tokens_per_second` leaves out the time to the first report (the bucket of
    examples is filled then) and that step's tokens: the rate a long run settles at.
    """
    start = first = end = None
    tokens = steps = first_tokens = 0
    for line in Path(log_path).read_text(encoding="utf-8").splitlines():
        match = ONMT_LOG_LINE.match(line)
        if not match:
            continue
        stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if match.group(2).startswith("Start training loop"):
            start = stamp
        step = ONMT_STEP.search(match.group(2))
        if step:
            steps, end = int(step.group(1)), stamp
            if first is None:
                first, first_tokens = stamp, int(step.group(2))
            tokens += int(step.group(2))
    if start is None or end is None:
        sys.exit(f"No training steps found in {log_path}")
    steady = (tokens - first_tokens) / (end - first) if end > first else None
    return {"steps": steps, "target_tokens": tokens, "loop_seconds": end - start, "first_step_seconds": first - start,
            "steady_tokens_per_second": steady}


def train_onmt(args, data, folder, minutes=None):
    """onmt_train for --train_steps, or for `minutes` of wall-clock time (scripts/onmt_train_for.py)."""
    steps = args.train_steps if minutes is None else 10**9
    config = {
        **onmt_settings(args.preset),
        "data": {"corpus_1": {"path_src": str(data / "train.src.sub"), "path_tgt": str(data / "train.tgt.sub")},
                 "valid": {"path_src": str(data / "valid.src.sub"), "path_tgt": str(data / "valid.tgt.sub")}},
        "src_vocab": str(data / "vocab.txt"),
        "save_model": str(folder / "model"),
        "train_steps": steps, "save_checkpoint_steps": steps, "seed": args.seed,
    }
    if args.onmt_bucket_size is not None:
        config["bucket_size"] = args.onmt_bucket_size
    config_path = folder / "train.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    command = [BIN / "onmt_train"] if minutes is None else [sys.executable, ONMT_TRAIN_FOR, minutes]
    run = run_measured([*command, "-config", config_path], folder / "train.log", onmt_env(args.threads))
    return {**run, **parse_onmt_training_log(folder / "train.log")}


def onmt_parameters(model_path):
    checkpoint = torch.load(model_path, map_location="cpu", weights_only=False)
    return sum(tensor.numel() for part in ("model", "generator") for tensor in checkpoint[part].values())


def decodes_to_time(args):
    """(key of the measurement, beams, int8) for each decoding to time: "1", "5", then "1 int8", "5 int8"."""
    return [(f"{beams}{' int8' if int8 else ''}", beams, int8) for int8 in (False, True)[:1 + args.int8]
            for beams in args.num_beams]


def translate_onmt(args, data, folder, model_path, tokenizer, num_beams, int8=False):
    name = f"beam{num_beams}{'.int8' if int8 else ''}"
    output = folder / f"test.{name}.sub"
    run = run_measured([BIN / "onmt_translate", "-model", model_path, "-src", data / "test.src.sub",
                        "-output", output, "-batch_size", 64, "-beam_size", num_beams,
                        "-max_length", args.max_length, *(["-int8"] if int8 else [])], folder / f"translate.{name}.log",
                       onmt_env(args.threads))
    hypotheses = detokenize(tokenizer, output.read_text(encoding="utf-8").splitlines())
    write_lines(folder / f"test.{name}.txt", hypotheses)
    return run, hypotheses


def benchmark_onmt(args, data, tokenizer, out):
    folder = out / "onmt"
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / f"model_step_{args.train_steps}.pt"
    train = _reused_training(args, folder, model_path) or train_onmt(args, data, folder)
    vocab_size = len(Path(data / "vocab.txt").read_text(encoding="utf-8").splitlines()) + ONMT_SPECIALS
    train.update(parameters=onmt_parameters(model_path), shape=onmt_shape(onmt_settings(args.preset), vocab_size), source_extra=0,
                 target_extra=1)  # onmt's source has no </s>; its loss covers </s>
    return train, {key: translate_onmt(args, data, folder, model_path, tokenizer, beams, int8)
                   for key, beams, int8 in decodes_to_time(args)}


# ---------------------------------------------------------------------------------------------------- ours

def train_ours(args, tokenizer_folder, folder, bf16=False):
    model_dir = folder / "model"
    command = [sys.executable, TRAIN_SCRIPT, *hf_train_args(args.preset), "--max_steps", args.train_steps, "--seed", args.seed,
               "--tokenizer", tokenizer_folder, "--dataset", args.dataset, "--output_dir", model_dir,
               *(["--bf16", "true"] if bf16 else [])]
    run = run_measured(command, folder / "train.log", {"OMP_NUM_THREADS": str(args.threads)})
    metrics = json.loads((model_dir / "train_results.json").read_text())
    return {**run, "steps": args.train_steps, "loop_seconds": metrics["train_runtime"],
            "target_tokens": metrics.get("train_target_tokens")}


def onnx_key(key):
    """Our measurement of an ONNX decoding: "1" -> "1 onnx", "5 int8" -> "5 onnx int8"."""
    beams, *int8 = key.split()
    return " ".join([beams, "onnx", *int8])


def decoding_name(key):
    """A decoding's name in the table and notes: "1" -> "greedy", "5 int8" -> "beam 5 int8", "5 onnx" -> "beam 5
    onnx"."""
    beams, *options = key.split()
    return " ".join(["greedy" if beams == "1" else f"beam {beams}", *options])


def translate_ours(args, data, folder, num_beams, int8=False, onnx=False):
    name = f"beam{num_beams}{'.onnx' if onnx else ''}{'.int8' if int8 else ''}"
    output = folder / f"test.{name}.txt"
    backend = ["--backend", "onnx", "--threads", args.threads] if onnx else ["--device", "cpu"]
    run = run_measured([BIN / "hf-rnn-attn", "translate", "--model", folder / ("onnx" if onnx else "model"),
                        "--input", data / "test.src.txt", "--output", output, "--batch_size", 64, "--num_beams",
                        num_beams, "--max_new_tokens", args.max_length, *backend, *(["--int8"] if int8 else [])],
                       folder / f"translate.{name}.log", {"OMP_NUM_THREADS": str(args.threads)})
    return run, output.read_text(encoding="utf-8").splitlines()


def export_ours(args, folder):
    """`hf-rnn-attn export` of the trained model (with its int8 graphs under --int8), for the ONNX decodings."""
    return run_measured([BIN / "hf-rnn-attn", "export", "--model", folder / "model", "--output", folder / "onnx",
                         *(["--int8"] if args.int8 else [])], folder / "export.log",
                        {"OMP_NUM_THREADS": str(args.threads)})


def benchmark_ours(args, data, tokenizer_folder, stats, out, bf16=False):
    folder = out / ("ours-bf16" if bf16 else "ours")
    folder.mkdir(parents=True, exist_ok=True)
    model_dir = folder / "model"
    train = (_reused_training(args, folder, model_dir / "config.json")
             or train_ours(args, tokenizer_folder, folder, bf16=bf16))
    if train["target_tokens"] is None:
        # scripts/train.py does not count them (yet): random batches of 64 train pairs average the split's
        # target length, +1 for </s>.
        train.update(target_tokens=round((stats["target"] + 1) * 64 * train["steps"]), target_tokens_estimated=True)
    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        parameters = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    train.update(parameters=parameters, shape=our_shape(RNNAttnConfig.from_pretrained(model_dir)), source_extra=1,
                 target_extra=1)
    decodes = [(key, beams, int8) for key, beams, int8 in decodes_to_time(args) if not (bf16 and int8)]
    results = {key: translate_ours(args, data, folder, beams, int8) for key, beams, int8 in decodes}
    if args.onnx and not bf16:
        train["export_seconds"] = export_ours(args, folder)["wall_seconds"]
        results.update({onnx_key(key): translate_ours(args, data, folder, beams, int8, onnx=True)
                        for key, beams, int8 in decodes})
    return train, results


def _reused_training(args, folder, model_path):
    """The saved training measurement when --reuse and the model it describes are there."""
    saved = folder / "training.json"
    if args.reuse and saved.is_file() and Path(model_path).is_file():
        train = json.loads(saved.read_text())
        if train["steps"] == args.train_steps:
            return train
    return None


# ------------------------------------------------------------------------------------------------------ report

def measure(name, run_toolkit, score, stats, peak_flops, out):
    """Run one toolkit (or load its last measurement with --skip_*), score it and save its measurements.

    `score` maps a list of translations to {"bleu", "output_subwords"}.
    """
    folder = out / name
    saved = folder / "measurements.json"
    if run_toolkit is None:
        return json.loads(saved.read_text()) if saved.is_file() else None
    train, decodes = run_toolkit()
    # The peak of the run that trained: --reuse decodes again in a later run, whose peak may differ.
    train.setdefault("matmul_peak_flops", peak_flops)
    (folder / "training.json").write_text(json.dumps(train, indent=2))
    flops = training_flops_per_target_token(train["shape"], stats, train["source_extra"], train["target_extra"])
    tokens_per_second = train["target_tokens"] / train["loop_seconds"]
    result = {
        "measured_at": datetime.now().isoformat(timespec="seconds"),
        "train": {**train, "target_tokens_per_second": tokens_per_second,
                  "process_target_tokens_per_second": train["target_tokens"] / train["wall_seconds"],
                  "parameters_m": train["parameters"] / 1e6, "useful_flops_per_target_token": flops,
                  "useful_gflops_per_second": flops * tokens_per_second / 1e9,
                  "percent_of_matmul_peak": 100 * flops * tokens_per_second / train["matmul_peak_flops"]},
        "decode": {key: {**run, "sentences_per_second": len(hypotheses) / run["wall_seconds"], **score(hypotheses)}
                   for key, (run, hypotheses) in decodes.items()},
    }
    saved.write_text(json.dumps(result, indent=2))
    return result


def table_rows(args, theirs, ours, precision="fp32", int8=False, onnx=False):
    """(metric, OpenNMT-py value, ours value, ratio) with the ratio > 1 where hf_rnn_attn does better.

    Rows that only describe the run (`better=None`) get no ratio. With `int8`, only the rows of the int8 decodings;
    with `onnx`, only decoding rows, ours from its ONNX decodings.
    """

    def get(result, *keys):
        for key in keys:
            if result is None or key not in result:
                return None
            result = result[key]
        return result

    def row(label, keys, digits, better="higher", our_keys=None):
        a, b = get(theirs, *keys), get(ours, *(our_keys or keys))
        ratio = None if better is None or not a or not b else (b / a if better == "higher" else a / b)
        cell = (lambda value: "-" if value is None else f"{value:,.{digits}f}")
        return [label, cell(a), cell(b), "-" if ratio is None else f"{ratio:.2f}"]

    estimated = " (ours estimated)" if get(ours, "train", "target_tokens_estimated") else ""
    peak = "fp32 matmul peak" if precision == "fp32" else f"matmul peak (ours: {precision}'s, OpenNMT-py: fp32's)"
    rows = [] if int8 or onnx else [
        row("parameters (M)", ("train", "parameters_m"), 2, better=None),
        row(f"training: real target tokens in {args.train_steps} steps{estimated}", ("train", "target_tokens"), 0,
            better=None),
        row("training: step loop (s)", ("train", "loop_seconds"), 1, better="lower"),
        row("training: whole process (s)", ("train", "wall_seconds"), 1, better="lower"),
        row(f"training: real target tokens/s, step loop{estimated}", ("train", "target_tokens_per_second"), 0),
        row(f"training: real target tokens/s, whole process{estimated}", ("train", "process_target_tokens_per_second"),
            0),
        row("training: useful GFLOP/s", ("train", "useful_gflops_per_second"), 2),
        row(f"training: % of {peak}", ("train", "percent_of_matmul_peak"), 1),
        row("training: peak RSS (MiB)", ("train", "peak_rss_mib"), 0, better="lower"),
    ]
    for key, _, _ in decodes_to_time(args):
        if int8 != key.endswith("int8"):
            continue
        name = decoding_name(key)
        ours_key = onnx_key(key) if onnx else key
        rows += [row(f"{name}: sentences/s, process start included", ("decode", key, "sentences_per_second"), 1,
                     our_keys=("decode", ours_key, "sentences_per_second")),
                 row(f"{name}: output subwords per sentence", ("decode", key, "output_subwords"), 1, better=None,
                     our_keys=("decode", ours_key, "output_subwords")),
                 row(f"{name}: BLEU", ("decode", key, "bleu"), 2, our_keys=("decode", ours_key, "bleu"))]
    return rows


def onmt_start_note(onmt_train, ours):
    """OpenNMT-py fills its bucket of examples before its first step, a fixed cost that weighs on short runs: the
    note gives its rate without it, beside ours over our whole step loop."""
    note = (f"OpenNMT-py's step loop includes {onmt_train['first_step_seconds']:.1f} s before its first step, "
            f"filling its bucket of examples (--onmt_bucket_size).")
    steady = onmt_train.get("steady_tokens_per_second")
    if steady:
        note += f" From its first step on it trained {steady:,.0f} real target tokens/s"
        if ours is not None:
            note += f" (ours over the whole step loop: {ours['train']['target_tokens_per_second'] / steady:.2f}x that)"
        note += "."
    return note


def kernel_time_notes(results, share=0.1, least_seconds=2.0):
    """A note for each decoding that spent more than `share` of its wall time, and more than `least_seconds`, in the
    kernel: OpenNMT-py's beam search takes one of two times with the same input, run to run, the slower one with
    millions of page faults (memory handed back to the kernel and faulted in again), and its ratio moves with it.
    Starting a process takes about half a second of kernel time, hence the floor."""
    notes = []
    for name, result in results.items():
        for key, run in ((result or {}).get("decode") or {}).items():
            if run.get("system_seconds", 0) > max(share * run["wall_seconds"], least_seconds):
                seconds, faults = run["system_seconds"], run["page_faults"] / 1e6
                notes.append(f"{TOOLKIT_NAMES.get(name, name)}, {decoding_name(key)}: {seconds:.1f} s of its "
                             f"{run['wall_seconds']:.1f} s in the kernel ({faults:.1f} million page faults).")
    return notes


def markdown_table(rows, ours="hf_rnn_attn", theirs="OpenNMT-py 3.0.4"):
    lines = [f"| metric | {theirs} | {ours} | ratio (> 1: hf_rnn_attn better) |", "|---|---:|---:|---:|"]
    return "\n".join([*lines, *(f"| {' | '.join(row)} |" for row in rows)])


def main(argv=None):
    (args,) = HfArgumentParser(PeerBenchmarkArguments).parse_args_into_dataclasses(args=argv)
    if not Path(GNU_TIME).is_file():
        sys.exit(f"{GNU_TIME} is missing (peak RSS comes from it): apt-get install time")
    if not args.skip_onmt and not (BIN / "onmt_train").is_file():
        sys.exit('OpenNMT-py is not installed next to this Python: pip install -e ".[bench]"')
    if args.preset not in PRESETS:
        sys.exit(f"--preset must be one of {list(PRESETS)}, got {args.preset!r}")
    out = Path(args.output_dir or f"runs/benchmark_peers/{args.preset}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)  # the subprocesses get OMP_NUM_THREADS

    machine = describe_machine(args.threads)
    print(cpu_line(machine))
    print(f"torch {machine['torch']}, {args.threads} threads; 1-min load average at start "
          f"{machine['load_average_1min']:.2f}")
    peak_flops = matmul_peak_flops()
    print(f"fp32 matmul peak (4096^3, the better of MKL and oneDNN, {args.threads} threads): "
          f"{peak_flops / 1e9:.1f} GFLOP/s")
    bf16_peak_flops = matmul_peak_flops(dtype=torch.bfloat16) if args.bf16 else None
    if args.bf16:
        print(f"bf16 matmul peak: {bf16_peak_flops / 1e9:.1f} GFLOP/s")

    tokenizer, tokenizer_folder = load_or_train_tokenizer(args, out)
    data, stats = prepare_data(args, tokenizer, out)
    print(f"Data: {stats['pairs']} train pairs, mean {stats['source']:.1f} source / {stats['target']:.1f} target "
          f"subwords (longest {stats['longest']}), {len(tokenizer)}-token joint BPE from {tokenizer_folder}")
    references = (data / "test.ref.txt").read_text(encoding="utf-8").splitlines()
    metric = load_translation_metric()

    runs = {
        "onmt": None if args.skip_onmt else lambda: benchmark_onmt(args, data, tokenizer, out),
        "ours": None if args.skip_ours else lambda: benchmark_ours(args, data, tokenizer_folder, stats, out),
    }
    score = partial(score_translations, references=references, tokenizer=tokenizer, metric=metric)
    results = {name: measure(name, run, score, stats, peak_flops, out) for name, run in runs.items()}
    if args.bf16:  # after the fp32 runs, so that those are measured as without --bf16
        results["ours-bf16"] = measure("ours-bf16", lambda: benchmark_ours(args, data, tokenizer_folder, stats, out,
                                                                           bf16=True),
                                       score, stats, bf16_peak_flops, out)

    table = markdown_table(table_rows(args, results["onmt"], results["ours"]))
    if args.bf16:
        table += "\n\n" + markdown_table(table_rows(args, results["onmt"], results["ours-bf16"], precision="bf16"),
                                          ours="hf_rnn_attn, trained under bf16 autocast")
    if args.int8:
        table += "\n\n" + markdown_table(table_rows(args, results["onmt"], results["ours"], int8=True),
                                          ours="hf_rnn_attn, decoded in int8", theirs="OpenNMT-py 3.0.4, -int8")
    if args.onnx:
        for int8 in (False, True)[:1 + args.int8]:
            table += "\n\n" + markdown_table(
                table_rows(args, results["onmt"], results["ours"], int8=int8, onnx=True),
                ours=f"hf_rnn_attn --backend onnx{', int8 graphs' if int8 else ''}",
                theirs=f"OpenNMT-py 3.0.4{', -int8' if int8 else ''}")
    notes = ["Ratios: rates and BLEU ours/theirs; seconds and memory theirs/ours."]
    if args.onnx and results["ours"] is not None and "export_seconds" in results["ours"]["train"]:
        notes.append(f"hf-rnn-attn export (once, before the ONNX decodings, not in their times): "
                     f"{results['ours']['train']['export_seconds']:.1f} s.")
    for key, name, skipped in (("onmt", "OpenNMT-py", args.skip_onmt), ("ours", "hf_rnn_attn", args.skip_ours)):
        if skipped and results[key] is not None:
            notes.append(f"{name}: numbers from its earlier run of {results[key]['measured_at']} "
                         f"({results[key]['train']['steps']} steps), not from this one.")
    if results["onmt"] is not None:
        notes.append(onmt_start_note(results["onmt"]["train"], results["ours"]))
    notes += kernel_time_notes(results)
    if results["ours"] is not None and results["ours"]["train"].get("target_tokens_estimated"):
        notes.append("hf_rnn_attn's target tokens are estimated (mean train target length + 1, x 64 x steps): "
                     "scripts/train.py reported no train_target_tokens.")
    print(f"\n{table}\n\n" + "\n".join(notes))
    (out / "results.json").write_text(json.dumps(
        {"machine": machine, "matmul_peak_flops": peak_flops, "bf16_matmul_peak_flops": bf16_peak_flops, "arguments": vars(args), "data": stats,
         "hf_train_args": hf_train_args(args.preset),
         "onmt_settings": onmt_settings(args.preset), "table": table, "notes": notes,
         **results}, indent=2))
    print(f"Wrote {out / 'results.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
