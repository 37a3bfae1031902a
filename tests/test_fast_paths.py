"""Every fast path equals the plain path it replaces."""

import multiprocessing
import threading

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from hf_rnn_attn import attention, fused_unroll, lean_decoding, recurrent_layers, torch_threads
from hf_rnn_attn import linear_cross_entropy as fused_loss
from hf_rnn_attn.attention import AdditiveScoreFunction
from hf_rnn_attn.fused_gru import gru_directions
from hf_rnn_attn.fused_unroll import _GRUAttentionUnroll, fuses
from hf_rnn_attn.linear_cross_entropy import linear_cross_entropy
from hf_rnn_attn.torch_threads import in_row_blocks
from hf_rnn_attn.workspace import workspace
from tiny_models import LOCAL_VARIANTS, VARIANTS, source_batch, tiny_model

ALL_VARIANTS = [*VARIANTS, *LOCAL_VARIANTS]


def loss_and_gradients(model, **inputs):
    model.zero_grad()
    output = model(**inputs)
    output.loss.backward()
    return output, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", ["bigru-bahdanau", "lstm-luong-general"])
@pytest.mark.parametrize("tie_word_embeddings, label_smoothing", [(False, None), (True, None), (False, 0.1)])
def test_training_loss_without_logits_equals_the_plain_loss(variant, tie_word_embeddings, label_smoothing):
    overrides = {"tie_word_embeddings": True, "output_layer": "tanh", "embedding_size": 16} if tie_word_embeddings else {}
    model = tiny_model(variant, **overrides).train()
    input_ids, attention_mask = source_batch()
    labels = torch.randint(3, 20, (3, 6), generator=torch.Generator().manual_seed(2))
    labels[1, 4:] = -100
    labels[2, 2:] = -100
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, num_items_in_batch=11,
                  label_smoothing=label_smoothing)
    fused, fused_grads = loss_and_gradients(model, **inputs)
    plain, plain_grads = loss_and_gradients(model, skip_logits=False, **inputs)
    assert fused.logits is None and plain.logits is not None
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-6, rtol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_linear_cross_entropy_in_chunks_equals_cross_entropy_of_the_logits(chunk_size, label_smoothing, with_bias):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 4, 5, generator=generator, requires_grad=True)
    weight = torch.randn(7, 5, generator=generator, requires_grad=True)
    bias = torch.randn(7, generator=generator, requires_grad=True) if with_bias else None
    labels = torch.randint(0, 7, (2, 4), generator=generator)
    labels[0, 1] = -100
    leaves = [t for t in (features, weight, bias) if t is not None]
    fused = linear_cross_entropy(features, weight, bias, labels, chunk_size=chunk_size, label_smoothing=label_smoothing)
    (3 * fused).backward()
    fused_grads = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    logits = torch.nn.functional.linear(features, weight, bias)
    plain = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum",
                                              label_smoothing=label_smoothing)
    (3 * plain).backward()
    torch.testing.assert_close(fused, plain)
    for fused_grad, t in zip(fused_grads, leaves):
        torch.testing.assert_close(fused_grad, t.grad)


@pytest.mark.parametrize("with_bias", [True, False])
def test_the_fused_loss_keeps_its_chunks_in_reused_buffers(with_bias, monkeypatch):
    """A chunk's logits and softmax live in the thread's workspace: once a call has made them, a call with chunks
    as large allocates nothing of a chunk's size (fresh megabytes are fresh, zeroed pages at every chunk). oneDNN's
    products (`onednn_products.py`) return new tensors, so here they are off; the softmax is reused either way."""
    monkeypatch.setattr(fused_loss, "onednn_runs", lambda *tensors: False)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(256, 4, generator=generator, requires_grad=True)
    weight = torch.randn(1000, 4, generator=generator, requires_grad=True)
    bias = torch.randn(1000, generator=generator, requires_grad=True) if with_bias else None
    labels = torch.randint(0, 1000, (256,), generator=generator)
    linear_cross_entropy(features, weight, bias, labels, chunk_size=64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        loss = linear_cross_entropy(features, weight, bias, labels, chunk_size=64)
    chunk_bytes = 64 * 1000 * 4
    assert [event.name for event in profiler.events() if event.cpu_memory_usage >= chunk_bytes] == []
    plain = torch.nn.functional.cross_entropy(torch.nn.functional.linear(features, weight, bias), labels,
                                              reduction="sum")
    torch.testing.assert_close(loss, plain)


def test_a_workspace_is_one_buffer_per_name_thread_and_inference_mode():
    like = torch.zeros(1)
    first = workspace("test-a", (2, 3), like)
    assert workspace("test-a", (3, 2), like).data_ptr() == first.data_ptr()  # the same memory in a new shape
    assert workspace("test-b", (2, 3), like).data_ptr() != first.data_ptr()
    grown = workspace("test-a", (4, 4), like)
    assert grown.shape == (4, 4) and workspace("test-a", (2, 3), like).data_ptr() == grown.data_ptr()
    other_thread = []
    thread = threading.Thread(target=lambda: other_thread.append(workspace("test-a", (2, 3), like).data_ptr()))
    thread.start()
    thread.join()
    assert other_thread != [grown.data_ptr()]
    with torch.inference_mode():
        assert workspace("test-a", (2, 3), like).data_ptr() != grown.data_ptr()


@pytest.mark.parametrize("l2_bytes, device, dtype, rows", [
    (2 * 2**20, "cpu", torch.float32, 128), (2**20, "cpu", torch.float32, 512), (2**19, "cpu", torch.float32, 512),
    (None, "cpu", torch.float32, 128), (2**20, "cuda", torch.float32, 128), (2**20, "cpu", torch.bfloat16, 256)])
def test_the_fused_loss_chunk_follows_the_level_2_cache(l2_bytes, device, dtype, rows, monkeypatch):
    monkeypatch.setattr(fused_loss, "cpu_l2_cache_bytes", lambda: l2_bytes)
    assert fused_loss.chunk_rows(dtype, torch.device(device)) == rows


def test_the_level_2_cache_is_read_from_sysfs(tmp_path):
    for index, (level, size) in enumerate([("1", "48K"), ("1", "32K"), ("2", "1024K"), ("3", "32768K")]):
        folder = tmp_path / "cache" / f"index{index}"
        folder.mkdir(parents=True)
        (folder / "level").write_text(level + "\n")
        (folder / "size").write_text(size + "\n")
    assert fused_loss.cpu_l2_cache_bytes.__wrapped__(tmp_path) == 2**20
    assert fused_loss.cpu_l2_cache_bytes.__wrapped__(tmp_path / "missing") is None


GRU_ENCODERS = ["bigru-bahdanau", "bigru-2layer-decoder-tanh", "gru-unidirectional-zeros-location"]


@pytest.mark.parametrize("variant", GRU_ENCODERS)
def test_padded_gru_encoder_in_training_equals_the_packed_encoder(variant, monkeypatch):
    calls = []
    padded = recurrent_layers.run_gru_padded
    monkeypatch.setattr(recurrent_layers, "run_gru_padded", lambda *args: calls.append(1) or padded(*args))
    encoder = tiny_model(variant).double().model.encoder
    input_ids, attention_mask = source_batch()
    plain = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)  # packed
    fast = encoder(input_ids=input_ids, attention_mask=attention_mask)
    assert calls == [1]  # only the second call took the padded GRU
    torch.testing.assert_close(fast.last_hidden_state, plain.last_hidden_state)
    torch.testing.assert_close(fast.final_hidden_state, plain.final_hidden_state)
    assert not fast.last_hidden_state[attention_mask == 0].any()  # padding stays zero, as pad_packed_sequence leaves it
    weights = torch.randn_like(plain.last_hidden_state), torch.randn_like(plain.final_hidden_state)
    grads = [torch.autograd.grad((out.last_hidden_state * weights[0]).sum()
                                 + (out.final_hidden_state * weights[1]).sum(), list(encoder.parameters()))
             for out in (plain, fast)]
    for plain_grad, fast_grad in zip(*grads):
        torch.testing.assert_close(fast_grad, plain_grad)
    with torch.no_grad():  # inference keeps the packed GRU
        encoder(input_ids=input_ids, attention_mask=attention_mask)
    assert calls == [1]


@pytest.mark.parametrize("directions", [1, 2])
def test_gru_directions_side_by_side_equal_torch_gru_one_by_one(directions):
    generator = torch.Generator().manual_seed(0)
    batch, steps, input_size, hidden_size = 3, 5, 4, 6
    gru = torch.nn.GRU(input_size, hidden_size, batch_first=True, bidirectional=directions == 2).double()
    weights = [list(parameters) for parameters in gru.all_weights]  # per direction: W_ih, W_hh, b_ih, b_hh
    inputs = [torch.randn(batch, steps, input_size, dtype=torch.float64, generator=generator, requires_grad=True)
              for _ in range(directions)]
    fused = gru_directions(inputs, weights)
    plain = [torch.gru(x, x.new_zeros(1, batch, hidden_size), w, True, 1, 0.0, True, False, True)[0]
             for x, w in zip(inputs, weights)]
    leaves = [*inputs, *gru.parameters()]
    output_weights = [torch.randn(batch, steps, hidden_size, dtype=torch.float64, generator=generator)
                      for _ in range(directions)]
    grads = [torch.autograd.grad(sum((states * w).sum() for states, w in zip(outputs, output_weights)), leaves,
                                 retain_graph=True) for outputs in (fused, plain)]
    for fused_states, plain_states in zip(fused, plain):
        torch.testing.assert_close(fused_states, plain_states)
    for fused_grad, plain_grad in zip(*grads):
        torch.testing.assert_close(fused_grad, plain_grad)
    if directions == 2:  # the directions are independent: one's states do not depend on the other's inputs
        assert not torch.autograd.grad(fused[0].sum(), inputs[1])[0].any()


class PassThrough(LogitsProcessor):
    """Changes nothing, but makes generate() use transformers' own decoding loops."""

    def __call__(self, input_ids, scores):
        return scores


GENERATION_CASES = {
    "greedy": dict(num_beams=1),
    "beam": dict(num_beams=3),
    "beam-return-3": dict(num_beams=4, num_return_sequences=3),
    "beam-early-stopping": dict(num_beams=3, early_stopping=True, length_penalty=0.6),
    "beam-never": dict(num_beams=3, early_stopping="never", length_penalty=1.5),
}


@pytest.mark.parametrize("case", list(GENERATION_CASES))
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_lean_decoding_gives_the_tokens_of_transformers_loops(variant, case, monkeypatch):
    calls = []
    for name in ("greedy_search", "beam_search"):
        loop = getattr(lean_decoding, name)
        monkeypatch.setattr(lean_decoding, name, lambda *args, _loop=loop, **kwargs: calls.append(1) or _loop(*args, **kwargs))
    model = tiny_model(variant, eos_token_id=3)  # token 3 is frequent in the tiny models: sentences end at many steps
    input_ids, attention_mask = source_batch(batch_size=3)
    input_ids = torch.cat([input_ids, input_ids.flip(0)])
    attention_mask = torch.cat([attention_mask, attention_mask.flip(0)])
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12, **GENERATION_CASES[case])
    lean = model.generate(**kwargs)
    assert len(calls) == 1  # the lean loop ran, and only for the first call
    reference = model.generate(logits_processor=LogitsProcessorList([PassThrough()]), **kwargs)
    assert torch.equal(lean, reference)
    if kwargs["num_beams"] > 1:  # the beam scores of transformers' loop belong to these very sequences
        scored = model.generate(return_dict_in_generate=True, output_scores=True, **kwargs)
        assert torch.equal(scored.sequences, lean)
    assert len(calls) == 1


@pytest.mark.parametrize("num_beams", [1, 3])
def test_lean_decoding_continues_a_longer_decoder_prompt_like_transformers(num_beams):
    model = tiny_model("bigru-bahdanau", eos_token_id=3)
    input_ids, attention_mask = source_batch()
    prompt = torch.tensor([[1, 7, 9]] * 3)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=prompt, max_new_tokens=8,
                  num_beams=num_beams)
    lean = model.generate(**kwargs)
    assert torch.equal(lean[:, :3], prompt)
    assert torch.equal(lean, model.generate(logits_processor=LogitsProcessorList([PassThrough()]), **kwargs))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_source_length_cap_bounds_each_translation_by_its_own_source(num_beams):
    model = tiny_model("bigru-bahdanau", eos_token_id=19)  # a rare token: without the cap, outputs run long
    input_ids, attention_mask = source_batch(batch_size=3)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=30, num_beams=num_beams)
    capped = model.generate(source_length_cap=(0.5, 1), **kwargs)
    # Ended sequences are filled with padding (greedy) or EOS (beam search): count the tokens before the fill.
    filled = (capped[:, 1:] == model.config.pad_token_id) | (capped[:, 1:] == 19)
    new_tokens = torch.where(filled.any(dim=1), filled.int().argmax(dim=1), filled.size(1))
    limits = torch.ceil(0.5 * attention_mask.sum(dim=1) + 1)
    assert (new_tokens <= limits).all() and (new_tokens == limits).any()
    assert torch.equal(model.generate(source_length_cap=(100, 100), **kwargs), model.generate(**kwargs))


@pytest.mark.parametrize("cap", [(0, 10), (1.5,), "1.5,10", (1.5, -1)])
def test_source_length_cap_rejects_bad_values(cap):
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    with pytest.raises(ValueError, match="source_length_cap"):
        model.generate(input_ids=input_ids, attention_mask=attention_mask, source_length_cap=cap, max_new_tokens=3)


def test_source_length_cap_needs_plain_search():
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    with pytest.raises(ValueError, match="plain greedy and beam search"):
        model.generate(input_ids=input_ids, attention_mask=attention_mask, source_length_cap=(1.5, 10),
                       no_repeat_ngram_size=2, max_new_tokens=3)


# Workspace sizes (elements) for B=2, S=4, A=5: one block of all steps, blocks of 2 steps, of 1 step, of 1 row.
@pytest.mark.parametrize("workspace_elements", [1 << 22, 80, 40, 20])
def test_additive_score_recomputing_tanh_equals_autograd(workspace_elements, monkeypatch):
    monkeypatch.setattr(attention, "_WORKSPACE_ELEMENTS", workspace_elements)
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 3, 5, generator=generator, requires_grad=True)
    keys = torch.randn(2, 4, 5, generator=generator, requires_grad=True)
    v = torch.randn(5, generator=generator, requires_grad=True)
    weights = torch.randn(2, 3, 4, generator=generator)
    fused = AdditiveScoreFunction.apply(query, keys, v)
    fused_grads = torch.autograd.grad((fused * weights).sum(), (query, keys, v))
    plain = torch.tanh(query.unsqueeze(2) + keys.unsqueeze(1)) @ v
    plain_grads = torch.autograd.grad((plain * weights).sum(), (query, keys, v))
    torch.testing.assert_close(fused, plain)
    for fused_grad, plain_grad in zip(fused_grads, plain_grads):
        torch.testing.assert_close(fused_grad, plain_grad)
    assert torch.autograd.gradcheck(AdditiveScoreFunction.apply, (query.double(), keys.double(), v.double()))


def test_additive_score_works_after_generating_under_inference_mode():
    """The score's reused buffer: one made under `torch.inference_mode()` cannot be written in training."""
    model = tiny_model("bigru-bahdanau")
    input_ids, attention_mask = source_batch()
    with torch.inference_mode():
        model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3)
    model.train()
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids[:, :4]).loss
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_refilled_greedy_search_gives_the_tokens_of_transformers_loop(variant):
    model = tiny_model(variant, eos_token_id=3)
    input_ids, attention_mask = source_batch(batch_size=3)
    more_ids, more_mask = source_batch(seed=1, batch_size=3)
    input_ids = torch.cat([input_ids, input_ids.flip(0), more_ids])
    attention_mask = torch.cat([attention_mask, attention_mask.flip(0), more_mask])
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12)
    reference = model.generate(logits_processor=LogitsProcessorList([PassThrough()]), **kwargs)
    for max_active_rows in (1, 2, 5):
        assert torch.equal(model.generate(max_active_rows=max_active_rows, **kwargs), reference)
    capped = model.generate(source_length_cap=(0.5, 1), **kwargs)
    assert torch.equal(model.generate(source_length_cap=(0.5, 1), max_active_rows=2, **kwargs), capped)


@pytest.mark.parametrize("case", [case for case in GENERATION_CASES if case != "greedy"] + ["beam-coverage"])
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_refilled_beam_search_gives_the_tokens_of_transformers_loop(variant, case):
    model = tiny_model(variant, eos_token_id=3)
    input_ids, attention_mask = source_batch(batch_size=3)
    more_ids, more_mask = source_batch(seed=1, batch_size=3)
    input_ids = torch.cat([input_ids, input_ids.flip(0), more_ids])
    attention_mask = torch.cat([attention_mask, attention_mask.flip(0), more_mask])
    search = GENERATION_CASES.get(case, dict(num_beams=3, coverage_penalty=0.5, length_penalty=0.6))
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12, **search)
    reference = model.generate(logits_processor=LogitsProcessorList([PassThrough()]), **kwargs)
    beams = search["num_beams"]
    for max_active_rows in (1, beams, 2 * beams + 1, 5 * beams):  # 1 row still decodes a whole sentence
        assert torch.equal(model.generate(max_active_rows=max_active_rows, **kwargs), reference)
    capped = model.generate(source_length_cap=(0.5, 1), **kwargs)
    assert torch.equal(model.generate(source_length_cap=(0.5, 1), max_active_rows=2 * beams, **kwargs), capped)


def _unroll_calls(monkeypatch):
    """Counts the decoder's calls of the fused unroll (`fused_unroll.unroll_gru_attention`)."""
    calls = []
    original = recurrent_layers.unroll_gru_attention
    monkeypatch.setattr(recurrent_layers, "unroll_gru_attention",
                        lambda *args: calls.append(args[0].shape) or original(*args))
    return calls


@pytest.mark.parametrize("encoder_hidden_size", [8, 12])  # K = H = 16, and K = 24 != H through the bridge
def test_fused_gru_attention_unroll_equals_the_plain_step(encoder_hidden_size, monkeypatch):
    """bigru-bahdanau's teacher-forced decoder (`fused_unroll.py`, a hand-written backward pass) against the plain
    step, token by token: outputs, attention, the state after the tokens, and the gradients of every parameter
    (the encoder's through the keys, projected keys and start state) for a loss on all of them. The second piece
    starts from the first one's state, as a continued teacher-forced pass does."""
    calls = _unroll_calls(monkeypatch)
    model = tiny_model("bigru-bahdanau", encoder_hidden_size=encoder_hidden_size)
    assert fuses(model.config)
    input_ids, attention_mask = source_batch()
    targets = torch.randint(3, 20, (3, 6), generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    probes = [torch.randn(3, 6, model.config.output_layer_input_size, generator=generator),
              torch.randn(3, 1, 6, 7, generator=generator), torch.randn(3, 1, 16, generator=generator),
              torch.randn(3, model.config.encoder_output_size, generator=generator)]

    def run(pieces):
        encoder_outputs, state, features, weights = model.get_encoder()(input_ids, attention_mask), None, [], []
        for piece in pieces:
            out = model.model(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                              decoder_input_ids=targets[:, piece], past_key_values=state, use_cache=True,
                              output_attentions=True)
            state = out.past_key_values
            features.append(out.last_hidden_state)
            weights.append(out.cross_attentions[0])
        outputs = [torch.cat(features, dim=1), torch.cat(weights, dim=2), state.hidden, state.context]
        loss = sum((output * probe).sum() for output, probe in zip(outputs, probes))
        named = dict(model.model.named_parameters())  # all but the output layer, which this pass does not reach
        return outputs, state, dict(zip(named, torch.autograd.grad(loss, list(named.values()), allow_unused=True)))

    plain_outputs, plain_state, plain_grads = run([slice(t, t + 1) for t in range(6)])
    assert calls == []  # one token at a time: the plain step
    fused_outputs, fused_state, fused_grads = run([slice(0, 2), slice(2, 6)])
    assert calls == [torch.Size((3, 2, 48)), torch.Size((3, 4, 48))]  # B x T x 3H embedded gates

    torch.testing.assert_close(fused_outputs, plain_outputs, atol=1e-5, rtol=1e-5)
    assert fused_state.seen_tokens == plain_state.seen_tokens == 6
    assert fused_grads.keys() == plain_grads.keys()
    for name, plain_grad in plain_grads.items():
        assert plain_grad is not None, name
        torch.testing.assert_close(fused_grads[name], plain_grad, atol=1e-5, rtol=1e-5, msg=name)


def test_fused_gru_attention_unroll_passes_gradcheck():
    """The hand-written backward pass against numerical derivatives for every input and weight, in float64, with
    padding in the source."""
    generator = torch.Generator().manual_seed(0)
    batch, steps, source, hidden, key, score = 2, 3, 4, 3, 4, 5

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)

    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    inputs = (leaf(batch, steps, 3 * hidden), leaf(batch, hidden), leaf(batch, key), leaf(batch, source, key),
              leaf(batch, source, score), attention_mask, leaf(3 * hidden, key), leaf(3 * hidden, hidden),
              leaf(3 * hidden), leaf(score, hidden), leaf(score))
    assert torch.autograd.gradcheck(_GRUAttentionUnroll.apply, inputs)


def test_fused_gru_attention_unroll_in_row_blocks_side_by_side_equals_one_block(monkeypatch):
    """On the CPU the unroll runs blocks of rows side by side, one per torch thread (`in_row_blocks`): the same
    outputs and gradients as one block (up to the order of additions: products of fewer rows may take other
    kernels, and `v`'s gradient sums the blocks' parts)."""
    generator = torch.Generator().manual_seed(0)
    batch, steps, source, hidden, key, score = 10, 4, 6, 8, 6, 5

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, requires_grad=True)

    attention_mask = (torch.arange(source) < torch.randint(1, source + 1, (batch, 1), generator=generator)).long()
    inputs = (leaf(batch, steps, 3 * hidden), leaf(batch, hidden), leaf(batch, key), leaf(batch, source, key),
              leaf(batch, source, score), attention_mask, leaf(3 * hidden, key), leaf(3 * hidden, hidden),
              leaf(3 * hidden), leaf(score, hidden), leaf(score))
    probes = [torch.randn(batch, steps, size, generator=generator) for size in (hidden, key, source)]
    differentiable = [tensor for tensor in inputs if tensor.requires_grad]
    blocks = []
    monkeypatch.setattr(fused_unroll, "in_row_blocks",
                        lambda *args: blocks.append(len(results := in_row_blocks(*args))) or results)

    def run(min_rows_per_block):
        monkeypatch.setattr(torch_threads, "MIN_ROWS_PER_BLOCK", min_rows_per_block)
        with torch_threads.torch_threads(3):
            outputs = _GRUAttentionUnroll.apply(*inputs)
            loss = sum((output * probe).sum() for output, probe in zip(outputs, probes))
            return outputs, torch.autograd.grad(loss, differentiable)

    one_block, side_by_side = run(batch + 1), run(1)
    assert blocks == [1, 1, 3, 3]  # forward and backward pass, 3 blocks of 3, 3 and 4 rows
    torch.testing.assert_close(side_by_side, one_block, atol=1e-5, rtol=1e-5)


def test_in_row_blocks_runs_each_block_in_the_callers_modes_on_one_torch_thread():
    """Blocks cover the rows in order, each run on one torch thread in the caller's grad and inference mode, and
    torch's thread count comes back; one block with one torch thread, too few rows or another device."""
    seen = []

    def function(rows):
        seen.append((torch.get_num_threads(), torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return rows

    with torch_threads.torch_threads(2):
        assert in_row_blocks(function, 20, torch.device("cpu")) == [slice(0, 10), slice(10, 20)]
        with torch.no_grad():
            in_row_blocks(function, 20, torch.device("cpu"))
        with torch.inference_mode():
            in_row_blocks(function, 20, torch.device("cpu"))
        assert torch.get_num_threads() == 2
        assert in_row_blocks(function, 2 * torch_threads.MIN_ROWS_PER_BLOCK - 1, torch.device("cpu")) == [
            slice(0, 2 * torch_threads.MIN_ROWS_PER_BLOCK - 1)]
        assert in_row_blocks(function, 20, torch.device("cuda")) == [slice(0, 20)]
    with torch_threads.torch_threads(1):
        assert in_row_blocks(function, 20, torch.device("cpu")) == [slice(0, 20)]
    assert seen[:6] == [(1, True, False)] * 2 + [(1, False, False)] * 2 + [(1, False, True)] * 2


def _row_blocks_of_20(_):
    with torch_threads.torch_threads(2):
        return in_row_blocks(lambda rows: rows, 20, torch.device("cpu"))


def test_in_row_blocks_in_a_forked_child_starts_workers_of_its_own():
    """A process forked after the workers started (a DataLoader worker) has none of their threads: it must not
    hand its blocks to the parent's pool, whose threads it does not run, and wait for ever."""
    assert _row_blocks_of_20(None) == [slice(0, 10), slice(10, 20)]  # the parent's workers exist
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_row_blocks_of_20, (None,)).get(timeout=60) == [slice(0, 10), slice(10, 20)]


@pytest.mark.parametrize("variant", ["bigru-bahdanau", "lstm-luong-location", "lstm-luong-local-p-general"])
def test_active_rows_drop_and_restore_padding_columns_without_changing_the_logits(variant):
    """Rows that stay after the longest sources leave attend over fewer (padding) columns; rows that join with a
    longer source widen the others again: the logits are those of the full-width rows."""
    model = tiny_model(variant)
    input_ids, attention_mask = source_batch()  # real lengths 7, 5 and 3
    encoder_outputs = model.get_encoder()(input_ids, attention_mask)
    kwargs = {"encoder_outputs": encoder_outputs, "attention_mask": attention_mask}
    tokens = torch.tensor([4, 5, 6])
    with torch.no_grad():
        full = lean_decoding.ActiveRows(model, kwargs)
        expected = full.next_logits(tokens)
        rows = lean_decoding.ActiveRows(model, kwargs).take(torch.tensor([1, 2]))
        assert rows.keys.size(1) == rows.mask.size(1) == rows.state.projected_keys.size(1) == 5
        torch.testing.assert_close(rows.next_logits(tokens[1:]), expected[1:], atol=1e-6, rtol=1e-6)
        rows.keep(torch.tensor([1]))
        assert rows.keys.size(1) == 3
        rows.extend(lean_decoding.ActiveRows(model, kwargs).take(torch.tensor([0])))
        assert rows.keys.size(1) == rows.mask.size(1) == 7
        mixed = rows.next_logits(tokens[[2, 0]])  # sentence 2's second step, sentence 0's first
        full.keep(torch.tensor([2]))
        torch.testing.assert_close(mixed[:1], full.next_logits(tokens[2:]), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(mixed[1:], expected[:1], atol=1e-6, rtol=1e-6)
