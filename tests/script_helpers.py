"""Running the scripts in-process on a tiny corpus and a tiny saved run."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration
from hf_rnn_attn.tokenizer_training import train_translation_tokenizer

ROOT = Path(__file__).resolve().parent.parent
WORDS = "el la gato perro casa sol luna agua come bebe ve tiene".split()
SOURCES = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(2 + i % 4)) for i in range(24)]
TARGETS = [" ".join(reversed(source.split())) for source in SOURCES]


def load_script(name):
    """scripts/<name>.py as a module, so that a test can call its `main(argv)`; its folder goes on sys.path, as
    `python scripts/<name>.py` puts it, for the scripts that import a sibling (scripts/recipe.py)."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.append(str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_corpus(folder):
    """A tiny es/en corpus folder in the translation jsonl format."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", range(20)), ("validation", range(20, 22)), ("test", range(22, 24))):
        lines = [json.dumps({"translation": {"es": SOURCES[i], "en": TARGETS[i]}}) for i in rows]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def tiny_tokenizer():
    return train_translation_tokenizer(SOURCES, TARGETS, vocab_size=60)


def save_tiny_run(run_dir, tokenizer):
    """A run folder as scripts/train.py leaves it (untrained weights): RUN_DIR/trainer with the model, tokenizer
    and trainer state, translating es -> en."""
    torch.manual_seed(0)
    config = RNNAttnConfig.from_preset("bigru-bahdanau", vocab_size=len(tokenizer), embedding_size=8, hidden_size=8,
                                       dropout=0.0, src_lang="es", tgt_lang="en")
    trainer_dir = run_dir / "trainer"
    RNNAttnForConditionalGeneration(config).save_pretrained(trainer_dir)
    tokenizer.save_pretrained(trainer_dir)
    (trainer_dir / "trainer_state.json").write_text(json.dumps({"global_step": 2, "epoch": 0.4}))
    return run_dir
