import itertools

import pytest
from transformers import AutoTokenizer

from hf_rnn_attn.tokenizer_training import SUBWORD_MODELS, train_translation_tokenizer

SUBJECTS = [("El niño", "The boy"), ("La niña", "The girl"), ("Mi madre", "My mother"), ("Él", "He"),
            ("El señor Núñez", "Mr. Núñez"), ("Ana", "Ana"), ("Nuestro vecino", "Our neighbour")]
VERBS = [("come", "eats"), ("compra", "buys"), ("ve", "sees"), ("quiere", "wants"), ("cocinó", "cooked")]
OBJECTS = [("una manzana", "an apple"), ("el pan", "the bread"), ("café", "coffee"), ("la cebolla", "the onion"),
           ("un pingüino", "a penguin"), ("“el libro”", "“the book”")]
# Spanish questions and exclamations open with ¡ and ¿, so these must survive training and decoding.
FRAMES = [("{s} {v} {o}.", "{s} {v} {o}."), ("¿{s} {v} {o}?", "{s} {v} {o}, right?"),
          ("¡{s} {v} {o}!", "{s} {v} {o}!"), ("Sí, {s} {v} {o}; gracias.", "Yes, {s} {v} {o}; thanks.")]

SOURCE_TEXTS, TARGET_TEXTS = zip(*[
    (es_frame.format(s=s_es, v=v_es, o=o_es), en_frame.format(s=s_en, v=v_en, o=o_en))
    for (s_es, s_en), (v_es, v_en), (o_es, o_en), (es_frame, en_frame)
    in itertools.product(SUBJECTS, VERBS, OBJECTS, FRAMES)
])

ROUND_TRIP_TEXTS = [
    "¡Hola, “Ana”! ¿Él quiere café?",
    "El señor Núñez cocinó la cebolla; Mi madre compra el pan.",
    "The girl wants an apple, right? The boy sees “the book”.",
]


@pytest.fixture(scope="module", params=SUBWORD_MODELS)
def tokenizer(request):
    return train_translation_tokenizer(SOURCE_TEXTS, TARGET_TEXTS, vocab_size=300, model=request.param)


def test_special_tokens_have_fixed_ids(tokenizer):
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<pad>", "<s>", "</s>", "<unk>")
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        0, 1, 2, 3)


def test_every_sequence_ends_with_one_eos_and_has_no_bos(tokenizer):
    for ids in tokenizer(list(ROUND_TRIP_TEXTS)).input_ids:
        assert ids[-1] == tokenizer.eos_token_id
        assert ids.count(tokenizer.eos_token_id) == 1
        assert tokenizer.bos_token_id not in ids


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_decode_gives_back_the_text(tokenizer, text):
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_unseen_characters_become_unk(tokenizer):
    assert tokenizer.unk_token_id in tokenizer("Ana 漢字").input_ids


def test_text_target_gives_labels_encoded_like_the_target(tokenizer):
    batch = tokenizer(list(SOURCE_TEXTS[:4]), text_target=list(TARGET_TEXTS[:4]))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"] == tokenizer(list(SOURCE_TEXTS[:4])).input_ids
    assert batch["labels"] == tokenizer(list(TARGET_TEXTS[:4])).input_ids


def test_truncation_keeps_the_eos(tokenizer):
    batch = tokenizer(list(SOURCE_TEXTS[:4]), text_target=list(TARGET_TEXTS[:4]), truncation=True, max_length=5)
    for ids in batch["input_ids"] + batch["labels"]:
        assert len(ids) <= 5
        assert ids[-1] == tokenizer.eos_token_id


def test_padding_goes_on_the_right(tokenizer):
    batch = tokenizer(["Ana.", "El señor Núñez cocinó la cebolla."], padding=True)
    short_length = sum(batch["attention_mask"][0])
    assert tokenizer.padding_side == "right"
    assert batch["attention_mask"][0] == [1] * short_length + [0] * (len(batch["input_ids"][0]) - short_length)
    assert batch["input_ids"][0][short_length - 1] == tokenizer.eos_token_id
    assert set(batch["input_ids"][0][short_length:]) == {tokenizer.pad_token_id}


def test_save_and_auto_reload_give_identical_ids(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [*ROUND_TRIP_TEXTS, "Ana 漢字"]
    assert reloaded(texts, text_target=texts).data == tokenizer(texts, text_target=texts).data
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert (reloaded.padding_side, reloaded.model_max_length) == ("right", 256)
    assert reloaded.all_special_ids == tokenizer.all_special_ids


def test_unknown_subword_model_is_rejected():
    with pytest.raises(ValueError, match="model must be one of"):
        train_translation_tokenizer(SOURCE_TEXTS, TARGET_TEXTS, vocab_size=300, model="wordpiece")
