"""Training and generation speed of the presets on random data of translation-like shape.

Usage:
    python scripts/benchmark.py                       # both presets, default sizes
    python scripts/benchmark.py --presets lstm-luong --batch_size 32 --hidden_size 512 --steps 10
    python scripts/benchmark.py --presets bigru-bahdanau --translation_model runs/bigru-bahdanau/model \
        --sentences test.src.txt --references test.ref.txt --max_sentences 1000    # the backends on real text

Prints target tokens per second for a teacher-forced training step (forward + backward + Adam) and
for greedy / beam generation, the cost of generate() over the package's own greedy loop at batch 1, and
peak resident memory; generation also int8 (torch.ao) and on the exported ONNX graphs (fp32, int8).
With --translation_model, times `hf-rnn-attn translate` on each backend (PyTorch, ONNX, each fp32 and int8):
sentences/s for greedy and beam search at batch 1 and 64, process start included, the process's peak memory, and
BLEU against --references. Numbers depend on the machine: the CPU is printed with them. For the comparison with
OpenNMT-py on the real corpus, see scripts/benchmark_peers.py.
"""

import copy
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, StoppingCriteriaList
from transformers.utils import logging as transformers_logging
from transformers.generation.stopping_criteria import MaxLengthCriteria

from benchmark_peers import kernel_description, read_lscpu
from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration
from hf_rnn_attn.lean_decoding import greedy_search
from hf_rnn_attn.metrics import load_translation_metric
from hf_rnn_attn.onnx import ONNXTranslator
from hf_rnn_attn.onnx_export import export_onnx
from hf_rnn_attn.quantization import quantize_int8

# (name, `hf-rnn-attn translate` arguments, whether --translation_model is exported first)
BACKENDS = [("torch", [], False), ("torch int8", ["--int8"], False), ("onnx", ["--backend", "onnx"], True),
            ("onnx int8", ["--backend", "onnx", "--int8"], True)]


@dataclass
class BenchmarkArguments:
    presets: list[str] = field(default_factory=lambda: ["bigru-bahdanau", "lstm-luong"])
    vocab_size: int = 8000
    embedding_size: int = 256
    hidden_size: int = 256
    batch_size: int = 64
    source_length: int = 40
    target_length: int = 40
    steps: int = 5
    num_beams: int = 5
    translation_model: str | None = field(default=None, metadata={"help": "a trained model folder: time "
                                                                         "`hf-rnn-attn translate` on each backend"})
    sentences: str | None = field(default=None, metadata={"help": "source sentences, one per line"})
    references: str | None = field(default=None, metadata={"help": "their reference translations, for BLEU"})
    max_sentences: int = 100
    max_new_tokens: int = 200
    threads: int | None = field(default=None, metadata={"help": "CPU threads of PyTorch, and the ONNX searches "
                                                                "side by side (default: one per core)"})


def random_batch(args, generator):
    shape = (args.batch_size, args.source_length)
    input_ids = torch.randint(4, args.vocab_size, shape, generator=generator)
    lengths = torch.randint(args.source_length // 2, args.source_length + 1, (args.batch_size,), generator=generator)
    attention_mask = (torch.arange(args.source_length) < lengths[:, None]).long()
    labels = torch.randint(4, args.vocab_size, (args.batch_size, args.target_length), generator=generator)
    return input_ids * attention_mask, attention_mask, labels


def timed(function, repeats):
    function()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def benchmark(preset, args):
    torch.manual_seed(0)
    config = RNNAttnConfig.from_preset(preset, vocab_size=args.vocab_size, embedding_size=args.embedding_size,
                                       hidden_size=args.hidden_size)
    model = RNNAttnForConditionalGeneration(config)
    model.generation_config.eos_token_id = None  # no early end: every generation runs exactly target_length steps
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    input_ids, attention_mask, labels = random_batch(args, torch.Generator().manual_seed(0))

    def train_step():
        model.train()
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    tokens = args.batch_size * args.target_length
    train_seconds = timed(train_step, args.steps)
    model.eval()
    generate = generator(model, input_ids, attention_mask, args)
    greedy_seconds = timed(lambda: generate(1), max(1, args.steps // 2))
    beam_seconds = timed(lambda: generate(args.num_beams), 1)
    single_generate, single_loop = batch_one_seconds(model, input_ids[:1], args.target_length)
    print(f"{preset:16s} params {sum(p.numel() for p in model.parameters()) / 1e6:5.1f}M | "
          f"train {tokens / train_seconds:8.0f} tgt tok/s | greedy {tokens / greedy_seconds:8.0f} tok/s | "
          f"beam{args.num_beams} {tokens / beam_seconds:7.0f} tok/s | batch 1: generate() "
          f"{1000 * single_generate:5.1f} ms, own loop {1000 * single_loop:5.1f} ms ({single_generate / single_loop:.2f}x)")
    quantized = quantize_int8(model)
    with tempfile.TemporaryDirectory() as folder:
        export_onnx(model, folder, int8=True)
        for name, generate in (("torch int8", generator(quantized, input_ids, attention_mask, args)),
                               ("onnx", generator(ONNXTranslator(folder, threads=args.threads), input_ids,
                                                  attention_mask, args)),
                               ("onnx int8", generator(ONNXTranslator(folder, int8=True, threads=args.threads),
                                                       input_ids, attention_mask, args))):
            greedy_seconds = timed(lambda: generate(1), max(1, args.steps // 2))
            beam_seconds = timed(lambda: generate(args.num_beams), 1)
            print(f"{'':16s} {name:10s} greedy {tokens / greedy_seconds:8.0f} tok/s | "
                  f"beam{args.num_beams} {tokens / beam_seconds:7.0f} tok/s")


def generator(model, input_ids, attention_mask, args):
    """`generate(num_beams)` on the benchmark batch, with a PyTorch model or an `ONNXTranslator`."""
    if isinstance(model, ONNXTranslator):
        input_ids, attention_mask = input_ids.numpy(), attention_mask.numpy()

    def generate(num_beams):
        with torch.inference_mode():
            model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams,
                           max_new_tokens=args.target_length)
    return generate


def batch_one_seconds(model, input_ids, new_tokens, repeats=20):
    """One sentence, `new_tokens` greedy tokens: through generate(), and through the package's own greedy loop
    called directly (encoder included in both)."""
    model.eval()
    config = copy.deepcopy(model.generation_config)
    config._pad_token_tensor = torch.tensor(model.config.pad_token_id)  # what generate() would set
    start_ids = torch.full((1, 1), model.config.decoder_start_token_id)

    def own_loop():
        encoder_outputs = model.get_encoder()(input_ids)
        greedy_search(model, start_ids, StoppingCriteriaList([MaxLengthCriteria(new_tokens + 1)]), config,
                      encoder_outputs=encoder_outputs, attention_mask=torch.ones_like(input_ids))

    with torch.inference_mode():
        through_generate = timed(lambda: model.generate(input_ids=input_ids, max_new_tokens=new_tokens), repeats)
        direct = timed(own_loop, repeats)
    return through_generate, direct


def cpu_description():
    """The CPU model and the instruction sets that change these numbers (AVX2 / AVX-512 / bf16 / AMX, and VNNI for
    int8), and those torch's kernels use here (see `benchmark_peers.KERNEL_LIMITS`)."""
    model, flags = read_lscpu()
    present = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "avx_vnni", "avx512_vnni")
               if flag in flags]
    return f"{model or 'unknown CPU'} ({', '.join(present) or 'no AVX2'}); {kernel_description()}"


def translation_rows(args):
    """`hf-rnn-attn translate` on --sentences with each backend, in a fresh process each (start included)."""
    lines = Path(args.sentences).read_text(encoding="utf-8").splitlines()[:args.max_sentences]
    references = Path(args.references).read_text(encoding="utf-8").splitlines()[:len(lines)] \
        if args.references else None
    metric = load_translation_metric() if references else None  # an evaluate metric is falsy (len 0)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        source = work / "source.txt"
        source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        (work / "empty.txt").write_text("", encoding="utf-8")
        export_onnx(args.translation_model, work / "onnx", int8=True)
        print(f"hf-rnn-attn translate, {len(lines)} sentences, max_new_tokens {args.max_new_tokens}, threads "
              f"{args.threads or 'default'}: sentences/s "
              f"(process start included), peak RSS of the process" + (", BLEU" if metric else ""))
        for name, options, exported in BACKENDS:
            command = [sys.executable, "-m", "hf_rnn_attn_runtime.command_line", "translate", "--model",
                       str(work / "onnx" if exported else args.translation_model), *options,
                       *(["--threads", str(args.threads)] if args.threads else [])]
            start_seconds, start_rss = run_timed([*command, "--input", str(work / "empty.txt")])
            cells = []
            for num_beams in (1, args.num_beams):
                for batch_size in (1, 64):
                    output = work / f"{name}-{num_beams}-{batch_size}.txt".replace(" ", "-")
                    seconds, rss = run_timed([*command, "--input", str(source), "--output", str(output),
                                              "--num_beams", str(num_beams), "--batch_size", str(batch_size),
                                              "--max_new_tokens", str(args.max_new_tokens)])
                    cell = f"{'greedy' if num_beams == 1 else f'beam{num_beams}'} b{batch_size} " \
                           f"{len(lines) / seconds:6.1f}/s {rss:4.0f} MiB"
                    if metric is not None and batch_size == 64:
                        hypotheses = output.read_text(encoding="utf-8").splitlines()
                        cell += f" BLEU {metric.compute(predictions=hypotheses, references=references)['bleu']:.2f}"
                    cells.append(cell)
            print(f"{name:10s} start {start_seconds:4.1f} s {start_rss:4.0f} MiB | " + " | ".join(cells))


# Linux carries a process's peak RSS over fork and exec: a child of this (large) process would report this
# process's peak. A small launcher's child reports its own.
LAUNCHER = ("import resource, subprocess, sys; status = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(status)")


def run_timed(command):
    """Wall seconds and peak resident MiB of `command`, which must succeed."""
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {completed.stderr[-2000:]}")
    return seconds, int(completed.stdout.split()[-1]) / 1024


def main(argv=None):
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    if (args.translation_model is None) != (args.sentences is None):
        raise ValueError("--translation_model and --sentences go together.")
    transformers_logging.disable_progress_bar()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"S={args.source_length}, T={args.target_length}, V={args.vocab_size}, E={args.embedding_size}, "
          f"H={args.hidden_size}")
    for preset in args.presets:
        benchmark(preset, args)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.translation_model is not None:
        translation_rows(args)


if __name__ == "__main__":
    main(sys.argv[1:])
