"""ONNX export: the encoder and one decoder step as two graphs, which `hf_rnn_attn.onnx.ONNXTranslator` runs.

    from hf_rnn_attn.onnx_export import export_onnx
    export_onnx("runs/bigru-bahdanau/model", "runs/bigru-bahdanau/onnx", int8=True)
    hf-rnn-attn export --model runs/bigru-bahdanau/model --output runs/bigru-bahdanau/onnx --int8

The folder gets `encoder.onnx`, `decoder.onnx`, with `int8` also their dynamically quantised copies
`encoder.int8.onnx` and `decoder.int8.onnx` (onnxruntime's `quantize_dynamic`: int8 weights, activations
quantised at run time), and the config, generation config and tokenizer. Every axis named B, R or S is dynamic.

    encoder: input_ids (B x S), attention_mask (B x S)
             -> keys (B x S x K), projected_keys (B x S x A), and the decoder's initial state:
                hidden (B x L x H), cell (B x L x H, LSTM only), context (B x K, input feeding only)
    decoder: decoder_input_ids (R x 1), keys, projected_keys, attention_mask (one row per source),
             hidden[, cell][, context] (R rows), top_k (one value)
             -> log_probs (R x V), attention (R x S), new_hidden[, new_cell][, new_context],
                top_log_probs and top_tokens (R x top_k)

R = B x N decoder rows: the N rows of a source (the beams of a sentence) next to each other, all reading its one
row of memory (`shares_sources`); under local-p attention, whose window the decoder places per row, N = 1.

Each graph records the export format, the config fields it depends on and a digest of the weights, so that a
runner refuses a graph from another export.

Why not Optimum: its seq2seq layout and `ORTModelForSeq2SeqLM` carry the decoder state as per-layer attention
key/value caches, `past_key_values.{i}.{decoder,encoder}.{key,value}` of shape B x heads x past length x head size:
the first step runs without a past (so the decoder could not start from the encoder's final states), the past
length is read from axis 2 of the first cache tensor, and the config must name `num_attention_heads`. A recurrent
state (B x L x H, fixed size, present from the first step) fits none of this. Its current release (optimum-onnx
0.1.0) also requires transformers < 4.58.

Why the TorchScript exporter (`dynamo=False`): the `torch.export` exporter (also the one that needs `onnxscript`)
stops at the model's input checks (`if ids.min() < 0`, data-dependent) and at `pack_padded_sequence`, whose
output size depends on the lengths. The tracer records the checks away and exports packed RNNs as ONNX GRU/LSTM
nodes with `sequence_lens`. It is deprecated in torch 2.13 but present in the pinned version. A wrong trace would be
silent, so every export is run once on onnxruntime, on another batch and source length than traced, and compared
with the model.
"""

import copy
import hashlib
import json
import logging
import os
import types
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

from hf_rnn_attn_runtime.onnx import EXPORT_FORMAT, GRAPH_FILES, architecture
from hf_rnn_attn_runtime.search import MEMORY_NAMES, shares_sources

from .attention import AdditiveScore
from .hub import check_model_folder

OPSET = 17
TOLERANCE = 1e-4  # largest difference of log-probabilities between an exported graph and the model
TOP_K_BLOCK = 64  # values per block in the decoder's two-round top-k


class EncoderGraph(nn.Module):
    """The encoder and the decoder's initial state, as the exported encoder graph computes them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        encoder_output = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        state = self.model.get_decoder().initial_state(encoder_output).tensors()
        return encoder_output.last_hidden_state, *state.values()


class DecoderStepGraph(nn.Module):
    """One decoder step and the output layer, as `lean_decoding` runs them in `generate()`: one token and the state
    of each row, the memory of each source (`shares_sources`: one per N rows).

    `template` is a decoder state of this model: the state passed in is the template with its tensors replaced, so
    that this module does not need to know which fields a GRU or an LSTM state has.
    """

    def __init__(self, model, template):
        super().__init__()
        self.model = model
        self.template = template
        self.state_names = [name for name in template.tensors() if name not in MEMORY_NAMES]

    def forward(self, decoder_input_ids, keys, projected_keys, attention_mask, *state_tensors):
        state = copy.copy(self.template)
        for name, value in zip(("projected_keys", *self.state_names), (projected_keys, *state_tensors)):
            setattr(state, name, value)
        # N = rows / sources, traced from the sizes: the graph takes any N (1 in greedy search).
        rows_per_source = decoder_input_ids.size(0) // keys.size(0) if shares_sources(self.model.config) else 1
        features, weights, new_state = self.model.get_decoder()(decoder_input_ids, state, keys, attention_mask,
                                                                rows_per_source=rows_per_source)
        logits = self.model.lm_head(features.squeeze(1))  # R x V: a 2-D product, one Gemm node with its bias
        return (logits.float().log_softmax(dim=-1), weights.squeeze(1),
                *(getattr(new_state, name) for name in self.state_names))


def export_onnx(model, output_dir, tokenizer=None, int8=False):
    """Writes the encoder and decoder-step graphs of `model` to `output_dir` (created if missing).

    Args:
        model: an `RNNAttnForConditionalGeneration`, or the folder of a saved one (its tokenizer is exported too).
        output_dir: the folder to write; graphs of an earlier export there are replaced.
        tokenizer: the model's tokenizer, saved with the graphs so that `ONNXTranslator` translates text.
        int8: also write onnxruntime's dynamically quantised int8 graphs.

    Returns:
        The paths of the graphs written.

    Raises:
        `FileNotFoundError` / `ValueError` for a folder that holds no saved hf_rnn_attn model, `ValueError` for a
        local-m model, and `RuntimeError` when an exported graph disagrees with the model.
    """
    if isinstance(model, (str, Path)):
        folder = check_model_folder(model)
        model_type = AutoConfig.from_pretrained(folder).model_type
        if model_type != "rnn_attn":
            raise ValueError(f"{folder} holds a {model_type!r} model, not an hf_rnn_attn (rnn_attn) one.")
        model = AutoModelForSeq2SeqLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder) if tokenizer is None else tokenizer
    if model.config.attention_type == "local-m":
        # The traced step would keep the step index it was traced with; the export check could miss it whenever
        # the window spans its short example source.
        raise ValueError("ONNX export does not support attention_type='local-m': its window follows the target step "
                         "(p_t = t), which the decoder-step graph does not take as an input. 'global' and 'local-p' "
                         "models export.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = _traceable(model)
    metadata = {"hf_rnn_attn_format": EXPORT_FORMAT, "hf_rnn_attn_config": json.dumps(architecture(model.config)),
                "hf_rnn_attn_weights": _weights_digest(model)}
    written = [output_dir / name for name in GRAPH_FILES[False]]
    # Traced and checked under temporary names: graphs that disagree with the model never replace an earlier export.
    staged = [path.with_name(f".{path.name}.{os.getpid()}.tmp") for path in written]
    try:
        _export_graphs(model, *staged, metadata)
        _check_graphs(model, *staged)
        for source, target in zip(staged, written):
            os.replace(source, target)
    finally:
        for path in staged:
            path.unlink(missing_ok=True)
    if int8:
        for source, target in zip(written[:2], (output_dir / name for name in GRAPH_FILES[True])):
            _quantize(source, target)
            written.append(target)
    model.config.to_json_file(output_dir / "config.json")  # save_pretrained would copy the config's code too
    model.generation_config.save_pretrained(output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    return written


def _traceable(model):
    """A float32 CPU copy of `model` in eval mode that the tracer records correctly.

    `AdditiveScoreFunction` builds its scores in place in a reused buffer (to save training memory), which the
    tracer records as an uninitialised tensor; the copy's additive scores compute the same `v^T tanh(W1 h_t + W2 h_i)`
    in one expression.
    """
    model = copy.deepcopy(model).float().cpu().eval()
    for module in model.modules():
        if isinstance(module, AdditiveScore):
            module.forward = types.MethodType(_additive_score, module)
    return model


def _additive_score(self, query, projected_keys):
    hidden = torch.tanh(self.W1(query).unsqueeze(2) + projected_keys.unsqueeze(1))  # B x T x S x A
    return self.v(hidden).squeeze(-1)  # B x T x S


def _weights_digest(model):
    """A short digest of the weights: the encoder and decoder graphs of one export carry the same."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _example_batch(config, batch_size, length):
    """Right-padded source ids and mask, the second row shorter, within the location score's positions."""
    length = min(length, config.max_source_positions or length)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, max(1, length // 2):] = 0
    return input_ids * attention_mask, attention_mask


@contextmanager
def _quiet_tracing():
    """Without the tracer's warnings about the input checks it records away, and the exporter's deprecation notice
    (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        yield


def _export_graphs(model, encoder_path, decoder_path, metadata):
    # In eval mode: the exporter puts the wrapper back in the mode it found it in, and the model with it.
    encoder, input_ids, attention_mask = EncoderGraph(model).eval(), *_example_batch(model.config, 2, 4)
    with torch.no_grad():
        keys, *state = encoder(input_ids, attention_mask)
        template = model.get_decoder().initial_state(model.get_encoder()(input_ids, attention_mask, return_dict=True))
    decoder = DecoderStepGraph(model, template).eval()
    state_names = list(template.tensors())  # projected_keys, then the recurrent state
    state = dict(zip(state_names, state))
    projected_keys = state.pop("projected_keys")
    # Traced with two rows per source where they share it, so that the graph records that path.
    rows_per_source = 2 if shares_sources(model.config) else 1
    start = torch.full((input_ids.size(0) * rows_per_source, 1), model.config.decoder_start_token_id)
    state = {name: value.repeat_interleave(rows_per_source, dim=0) for name, value in state.items()}
    sources, rows = {0: "sources", 1: "source_length"}, {0: "rows"}
    graphs = (
        (encoder, (input_ids, attention_mask), encoder_path, ["input_ids", "attention_mask"], ["keys", *state_names],
         {"input_ids": sources, "attention_mask": sources, "keys": sources, "projected_keys": sources,
          **{name: {0: "sources"} for name in state}}),
        (decoder, (start, keys, projected_keys, attention_mask, *state.values()), decoder_path,
         ["decoder_input_ids", *MEMORY_NAMES, *state], ["log_probs", "attention", *(f"new_{name}" for name in state)],
         {"keys": sources, "projected_keys": sources, "attention_mask": sources, "decoder_input_ids": rows,
          "log_probs": rows, "attention": {0: "rows", 1: "source_length"},
          **{name: rows for name in state}, **{f"new_{name}": rows for name in state}}),
    )
    for module, inputs, path, input_names, output_names, axes in graphs:
        with _quiet_tracing(), torch.no_grad():
            torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=OPSET, input_names=input_names,
                              output_names=output_names, dynamic_axes=axes)
    _add_top_k(decoder_path, model.config.vocab_size)
    for path, graph in ((encoder_path, "encoder"), (decoder_path, "decoder")):
        _add_metadata(path, {**metadata, "hf_rnn_attn_graph": graph})


def _add_top_k(path, vocab_size):
    """The decoder step's `top_k` input (int64, one value) and outputs `top_log_probs` and `top_tokens` (B x top_k,
    largest first; of equal values the lower token first): a search that asks onnxruntime for these alone gets
    2N log-probabilities per row instead of V, and needs no top-k of its own over them.

    Taken in two rounds (`top_k_nodes`): one TopK over the V values was 9% of onnxruntime's time in the benchmark's
    beam search, which the two rounds made 4-5% faster (greedy search 3%), with the same tokens."""
    graph = onnx.load(str(path))
    graph.graph.input.append(onnx.helper.make_tensor_value_info("top_k", onnx.TensorProto.INT64, [1]))
    nodes, constants = top_k_nodes("log_probs", "top_k", vocab_size, "top_log_probs", "top_tokens")
    graph.graph.node.extend(nodes)
    graph.graph.initializer.extend(constants)
    graph.graph.output.extend([
        onnx.helper.make_tensor_value_info("top_log_probs", onnx.TensorProto.FLOAT, ["rows", "top_k"]),
        onnx.helper.make_tensor_value_info("top_tokens", onnx.TensorProto.INT64, ["rows", "top_k"])])
    onnx.save(graph, str(path))


def top_k_nodes(values, k, size, top_values, top_indices, block=TOP_K_BLOCK):
    """ONNX nodes and their constants for `TopK(values, k)` over the last axis of R x `size` values, in the order
    TopK gives (largest first, of equal values the lower index first), in two rounds: the largest value of each
    block of `block` values, the k best blocks, then the k best among those blocks' values.

    Exact because each of the k best values lies in one of the k best blocks (ranked by their largest value, then
    the lower block): a block ranked below k others has k values ranked above each of its own. The chosen blocks
    are gathered in the order of their index, so that equal values keep TopK's order.
    """
    blocks = -(-size // block)

    def name(part):
        return f"{top_values}/{part}"

    constants = {"shape": [0, blocks, block], "count": [blocks], "flat": [0, -1], "width": [block],
                 "offsets": list(range(block)), "axis": [2]}
    tensors = [onnx.numpy_helper.from_array(np.array(value, dtype=np.int64), name(key))
               for key, value in constants.items()]
    node = onnx.helper.make_node
    nodes, padded = [], values
    if blocks * block != size:  # the last block filled up with -inf, which no k <= size reaches
        padded = name("padded")
        pad = np.array([0, 0, 0, blocks * block - size], dtype=np.int64)
        tensors += [onnx.numpy_helper.from_array(pad, name("pad")),
                    onnx.numpy_helper.from_array(np.array(-np.inf, dtype=np.float32), name("minus_inf"))]
        nodes.append(node("Pad", [values, name("pad"), name("minus_inf")], [padded], mode="constant"))
    nodes += [
        node("Reshape", [padded, name("shape")], [name("blocks")]),  # R x blocks x block
        node("ReduceMax", [name("blocks")], [name("block_max")], axes=[2], keepdims=0),  # R x blocks
        node("Min", [k, name("count")], [name("k_blocks")]),
        node("TopK", [name("block_max"), name("k_blocks")], [name("best_max"), name("best")], axis=-1),
        # The chosen blocks in ascending order: the largest of their negated indices first.
        node("Neg", [name("best")], [name("negated")]),
        node("TopK", [name("negated"), name("k_blocks")], [name("ascending_negated"), name("order")], axis=-1),
        node("Neg", [name("ascending_negated")], [name("ascending")]),
        node("Unsqueeze", [name("ascending"), name("axis")], [name("first")]),
        node("Mul", [name("first"), name("width")], [name("start")]),
        node("Add", [name("start"), name("offsets")], [name("columns")]),  # R x k_blocks x block
        node("Reshape", [name("columns"), name("flat")], [name("flat_columns")]),
        node("GatherElements", [padded, name("flat_columns")], [name("candidates")], axis=1),
        node("TopK", [name("candidates"), k], [top_values, name("positions")], axis=-1),
        node("GatherElements", [name("flat_columns"), name("positions")], [top_indices], axis=1),
    ]
    return nodes, tensors


def _add_metadata(path, metadata):
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, metadata)
    onnx.save(graph, str(path))


def _check_graphs(model, encoder_path, decoder_path):
    """Runs the graphs on onnxruntime on another batch size and source length than traced, two decoder steps with
    one row per source and, where rows share a source, three, and raises `RuntimeError` unless they agree with the
    model."""
    input_ids, attention_mask = _example_batch(model.config, 3, 7)
    encoder, decoder = (onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                        for path in (encoder_path, decoder_path))
    names = [node.name for node in encoder.get_outputs()]
    encoded = dict(zip(names, encoder.run(None, {"input_ids": input_ids.numpy(),
                                                  "attention_mask": attention_mask.numpy()})))
    state_names = [name for name in names if name not in MEMORY_NAMES]
    memory = {"keys": encoded["keys"], "projected_keys": encoded["projected_keys"],
              "attention_mask": attention_mask.numpy()}
    for rows_per_source in (1, 3) if shares_sources(model.config) else (1,):
        sources = torch.arange(3).repeat_interleave(rows_per_source)  # the source of each row
        start = torch.full((sources.numel(), 1), model.config.decoder_start_token_id)
        tokens = (torch.arange(sources.numel()) + 3) % model.config.vocab_size  # another token in each row
        decoder_input_ids = torch.cat([start, tokens[:, None]], dim=1)  # R x 2
        with torch.no_grad():
            expected = model(input_ids=input_ids[sources], attention_mask=attention_mask[sources],
                             decoder_input_ids=decoder_input_ids).logits.log_softmax(dim=-1)  # R x 2 x V
        state = {name: encoded[name][sources.numpy()] for name in state_names}
        for step in range(2):
            feeds = {"decoder_input_ids": decoder_input_ids[:, step:step + 1].numpy(), "top_k": np.array([3]),
                     **memory, **state}
            log_probs, _, *new_state, top_log_probs, top_tokens = decoder.run(None, feeds)
            state = dict(zip(state_names, new_state))
            where = f"at decoder step {step + 1} with {rows_per_source} row(s) per source"
            if not (np.array_equal(top_log_probs, np.take_along_axis(log_probs, top_tokens, axis=1))
                    and np.array_equal(top_log_probs, -np.sort(-log_probs, axis=1)[:, :3])):
                raise RuntimeError(f"The exported decoder's top-k outputs are not the top 3 of its log-probabilities "
                                   f"{where}.")
            difference = float(np.abs(log_probs - expected[:, step].numpy()).max())
            if not difference <= TOLERANCE:
                raise RuntimeError(f"The exported graphs disagree with the model {where} (log-probabilities differ "
                                   f"by {difference:.2e} > {TOLERANCE}): the trace is wrong.")


def _quantize(source, target):
    """onnxruntime's dynamic int8 quantisation (weights of MatMul, Gather and LSTM nodes), keeping the metadata."""
    logging.disable(logging.WARNING)  # its advice to pre-process the graph, which concerns static quantisation
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    metadata = {prop.key: prop.value for prop in onnx.load(str(source), load_external_data=False).metadata_props}
    _add_metadata(target, {**metadata, "hf_rnn_attn_precision": "int8"})
