"""Translation on onnxruntime: greedy and beam search (`search.StepwiseTranslator`) over the graphs that
`hf_rnn_attn.onnx_export` writes.

    from hf_rnn_attn_runtime import ONNXTranslator
    translator = ONNXTranslator("runs/bigru-bahdanau/onnx")              # int8=True for the quantised graphs
    translator.translate(["En el principio creó Dios los cielos y la tierra."], num_beams=5)
    hf-rnn-attn translate --backend onnx --model runs/bigru-bahdanau/onnx < source.txt

The decoder graph hands back only each row's top-k log-probabilities.
"""

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime

from .export_folder import ARCHITECTURE_DEFAULTS, ExportedTokenizer, GenerationSettings, read_config
from .search import MEMORY_NAMES, StepwiseTranslator

# Bumped whenever the graphs' inputs, outputs or meaning change: a runner refuses graphs of another format.
EXPORT_FORMAT = "3"  # 2: the decoder step gives its top-k tokens; 3: rows share their source (`shares_sources`)
GRAPH_FILES = {False: ("encoder.onnx", "decoder.onnx"), True: ("encoder.int8.onnx", "decoder.int8.onnx")}


def architecture(config):
    """The config fields the graphs depend on, recorded in each graph to catch a graph of another model."""
    return {name: getattr(config, name) for name in ARCHITECTURE_DEFAULTS}


class ONNXTranslator(StepwiseTranslator):
    """Greedy and beam-search translation with the exported encoder and decoder-step graphs.

    Args:
        folder: written by `hf_rnn_attn.onnx_export.export_onnx` (`hf-rnn-attn export`): the graphs, config.json,
            generation_config.json and, when the export had one, the tokenizer (tokenizer.json).
        int8: run the dynamically quantised graphs (`export_onnx(..., int8=True)`).
        threads: how many searches run at once, each on one thread with single-threaded onnxruntime calls
            (default: one per CPU this process may use); `generate` shares a call's sentences out among them.
            No thread waits for another at each step, and on the benchmark's 1,000 test verses (2-core Xeon,
            batch 64) this took 2.9 s greedy and 14.4 s beam 5, where one search on two onnxruntime threads took
            3.8 s and 16.0 s.

    Raises `FileNotFoundError` for a folder without the graphs or config, and `ValueError` for graphs exported
    from another config, by another export format, or an encoder and decoder from two different exports.
    """

    tokenizer_hint = "export with a (fast) tokenizer (`export_onnx(..., tokenizer=)`)"

    def __init__(self, folder, int8=False, threads=None):
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"`threads` must be a positive integer or None, got {threads!r}.")
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no config.json, so it is not an ONNX export; write one with "
                                    f"`hf-rnn-attn export --model MODEL_FOLDER --output {folder}`.")
        names = GRAPH_FILES[int8]
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            hint = " --int8" if int8 else ""
            raise FileNotFoundError(f"{folder} has no {' or '.join(missing)}; write the graphs with "
                                    f"`hf-rnn-attn export --model MODEL_FOLDER --output {folder}{hint}`.")
        self.config = read_config(folder, ARCHITECTURE_DEFAULTS)
        self.generation_config = GenerationSettings.from_folder(folder, self.config)
        self.tokenizer = ExportedTokenizer(folder) if (folder / "tokenizer.json").is_file() else None
        self.threads = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                                   os.cpu_count() or 1)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # searches run side by side instead
        self.encoder, self.decoder = (onnxruntime.InferenceSession(str(folder / name), options,
                                                                   providers=["CPUExecutionProvider"])
                                      for name in names)
        self._check_graphs(folder, names)
        self.state_names = [node.name for node in self.encoder.get_outputs() if node.name not in MEMORY_NAMES]
        self._new_state_names = [f"new_{name}" for name in self.state_names]  # the decoder's outputs

    def _check_graphs(self, folder, names):
        """The graphs must come from one export of this config, in this runner's format."""
        expected = json.loads(json.dumps(architecture(self.config)))  # as the graphs record it
        recorded = []
        for name, session in zip(names, (self.encoder, self.decoder)):
            metadata = session.get_modelmeta().custom_metadata_map
            if "hf_rnn_attn_format" not in metadata:
                raise ValueError(f"{folder / name} was not written by hf_rnn_attn's export; export the model again "
                                 f"with `hf-rnn-attn export`.")
            if metadata["hf_rnn_attn_format"] != EXPORT_FORMAT:
                raise ValueError(f"{folder / name} has export format {metadata['hf_rnn_attn_format']}, this version "
                                 f"reads format {EXPORT_FORMAT}; export the model again with `hf-rnn-attn export`.")
            # A field added to the config after the export: the graph does what its default does.
            graph_config = {**ARCHITECTURE_DEFAULTS, **json.loads(metadata["hf_rnn_attn_config"])}
            differences = [f"{key}={graph_config[key]!r} in the graph, {value!r} in config.json"
                           for key, value in expected.items() if graph_config[key] != value]
            if differences:
                raise ValueError(f"{folder / name} was exported from a model with another config "
                                 f"({'; '.join(differences[:3])}): it is from an older export. Export the model "
                                 f"again with `hf-rnn-attn export --model MODEL_FOLDER --output {folder}`.")
            recorded.append(metadata["hf_rnn_attn_weights"])
        if recorded[0] != recorded[1]:
            raise ValueError(f"{folder / names[0]} and {folder / names[1]} come from two different exports (other "
                             f"weights); export the model again with `hf-rnn-attn export`.")

    def _encode(self, input_ids, attention_mask):
        """The decoder's inputs for each source row: its memory (`MEMORY_NAMES`) and its first state."""
        outputs = self.encoder.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        rows = dict(zip((node.name for node in self.encoder.get_outputs()), outputs))
        return {"keys": rows["keys"], "projected_keys": rows["projected_keys"], "attention_mask": attention_mask,
                **{name: rows[name] for name in self.state_names}}

    def _step(self, tokens, memory, state, top_k):
        """One decoder step for R rows: the `top_k` largest log-probabilities of the next token and their tokens
        (R x top_k each, largest first; of equal ones the lower token first, as `torch.topk` and `argmax`), and the
        new state. Only these leave onnxruntime, not the R x V log-probabilities."""
        outputs = self.decoder.run(["top_log_probs", "top_tokens", *self._new_state_names],
                                   {"decoder_input_ids": tokens[:, None], "top_k": np.array([top_k]), **memory,
                                    **state})
        return outputs[0], outputs[1], dict(zip(self.state_names, outputs[2:]))

