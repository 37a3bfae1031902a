"""Tiny configurations covering both presets, all four scores, mixed variants and local attention."""

import torch

from hf_rnn_attn import RNNAttnConfig, RNNAttnForConditionalGeneration
from hf_rnn_attn.tokenizer_training import train_translation_tokenizer

TINY = dict(vocab_size=20, embedding_size=8, hidden_size=16, dropout=0.0)

VARIANTS = {
    "bigru-bahdanau": ("bigru-bahdanau", {}),
    "lstm-luong-additive": ("lstm-luong", {"attention_score": "additive"}),
    "lstm-luong-dot": ("lstm-luong", {"attention_score": "dot"}),
    "lstm-luong-general": ("lstm-luong", {"attention_score": "general"}),
    "lstm-luong-location": ("lstm-luong", {"attention_score": "location", "max_source_positions": 12}),
    # Mixed points of the design space.
    "bigru-general-bridge": ("bigru-bahdanau", {"attention_score": "general", "encoder_hidden_size": 12}),
    "bigru-2layer-decoder-tanh": ("bigru-bahdanau", {"decoder_layers": 2, "encoder_layers": 2,
                                                     "output_layer": "tanh"}),
    "lstm-input-feeding-bidirectional": ("lstm-luong", {"input_feeding": True, "bidirectional_encoder": True,
                                                        "encoder_hidden_size": 8, "attention_score": "dot"}),
    "gru-unidirectional-zeros-location": ("bigru-bahdanau", {"bidirectional_encoder": False,
                                                             "decoder_state_init": "zeros",
                                                             "attention_score": "location",
                                                             "max_source_positions": 12}),
}

# Luong's local attention on several scores, with and without input feeding. The windows are narrower than the
# sources of `source_batch`, so that they cut, and the weights start wide (init_range=1) so that the outputs vary
# with the attention: at 0.1 most of these models emit one token forever. Not in VARIANTS: the ONNX export
# refuses local-m.
LOCAL = {"init_range": 1.0}
LOCAL_VARIANTS = {
    "lstm-luong-local-m-general": ("lstm-luong", {**LOCAL, "attention_type": "local-m", "local_window": 1}),
    "lstm-luong-local-p-general": ("lstm-luong", {**LOCAL, "attention_type": "local-p", "local_window": 2,
                                                  "input_feeding": True}),
    "lstm-luong-local-p-location": ("lstm-luong", {**LOCAL, "attention_type": "local-p", "local_window": 1,
                                                   "attention_score": "location", "max_source_positions": 12}),
    "bigru-local-m-dot": ("bigru-bahdanau", {**LOCAL, "attention_type": "local-m", "local_window": 2,
                                             "attention_score": "dot", "encoder_hidden_size": 8}),
    "bigru-local-p-additive": ("bigru-bahdanau", {**LOCAL, "attention_type": "local-p", "local_window": 1}),
}


# Every variant whose decoder step the stepwise search runs (`hf_rnn_attn_runtime.search`: the ONNX graphs and
# `TorchTranslator`): all but local-m, whose window follows the step index.
STEPWISE_VARIANTS = [*VARIANTS, *(name for name, (_, overrides) in LOCAL_VARIANTS.items()
                                  if overrides["attention_type"] == "local-p")]


# Four sentences of up to 9 tokens: another batch size and source length than the ONNX export traces, so that every
# dynamic axis of its graphs is exercised.
SEARCH_BATCH = dict(seed=1, batch_size=4, length=9)


def tiny_config(variant, **overrides):
    preset, variant_overrides = {**VARIANTS, **LOCAL_VARIANTS}[variant]
    return RNNAttnConfig.from_preset(preset, **{**TINY, **variant_overrides, **overrides})


def tiny_model(variant, seed=0, **overrides):
    torch.manual_seed(seed)
    return RNNAttnForConditionalGeneration(tiny_config(variant, **overrides)).eval()


def lively_model(variant, **overrides):
    """A tiny model with large weights and a push towards EOS. The default initialisation repeats one token and
    never ends; this one gives input-dependent outputs that end at different steps, so that the EOS,
    finished-hypothesis and early-stop rules of the search all run."""
    model = tiny_model(variant, seed=2, init_range=1.0, **overrides)
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] += 1.5
    return model


def source_batch(seed=0, batch_size=3, length=7, vocab_size=20):
    """Right-padded ids (tokens 3.. only, so no pad/bos/eos inside) and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, length - 2:] = 0
    attention_mask[2, 3:] = 0
    return input_ids.masked_fill(attention_mask == 0, 0), attention_mask


COPY_WORDS = ("el la los gato perro casa sol luna agua fuego rojo azul verde grande pequeño come bebe ve tiene "
              "quiere").split()


def copy_task_sentences(count=100, seed=0):
    """Random strings of 2-5 words: a toy corpus whose joint 60-type vocabulary splits most words into subwords."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 6, (count,), generator=generator).tolist()
    return [" ".join(COPY_WORDS[i] for i in torch.randint(len(COPY_WORDS), (n,), generator=generator).tolist())
            for n in lengths]


def train_copy_model(tokenizer, sentences, preset="bigru-bahdanau", steps=40, **overrides):
    """A tiny model trained a few steps to copy its input: it translates non-trivially and ends its sentences."""
    torch.manual_seed(0)
    config = RNNAttnConfig.from_preset(preset, vocab_size=len(tokenizer), embedding_size=16, hidden_size=16,
                                       dropout=0.0, **overrides)
    model = RNNAttnForConditionalGeneration(config)
    batch = tokenizer(sentences, text_target=sentences, padding=True, return_tensors="pt")
    labels = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(steps):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def saved_copy_model(folder):
    """`train_copy_model` on `copy_task_sentences` with its tokenizer (60 types), saved in `folder`: a model folder as
    users have one. Returns the model, the tokenizer and the sentences."""
    sentences = copy_task_sentences()
    tokenizer = train_translation_tokenizer(sentences, sentences, vocab_size=60)
    model = train_copy_model(tokenizer, sentences)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, sentences
