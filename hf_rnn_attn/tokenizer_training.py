"""One joint subword vocabulary for a translation pair, wrapped as a transformers fast tokenizer.

The model has one `vocab_size` for encoder and decoder, and one tokenizer serves `tokenizer(src, text_target=tgt)`,
so source and target share the vocabulary. It also measures better: on 21,874 aligned Spanish/English Bible
verses (RV1909/WEB, 10% held out) at 8000 types in total, joint BPE takes 30.2 es + 29.3 en tokens per verse
against 31.3 + 29.8 for two 4000-type BPE vocabularies and 31.6 + 30.5 for joint Unigram (no unknowns in any).

Spaces are kept as the "▁" metasymbol (SentencePiece style) rather than discarded, so decoding gives back the
original text with its spacing, punctuation and accents.
"""

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import TokenizersBackend

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
# Trainers assign ids in list order, so this fixes <pad>=0, <s>=1, </s>=2, <unk>=3.
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]
SUBWORD_MODELS = ("bpe", "unigram")


def train_subword_backend(texts, vocab_size, model="bpe"):
    """Train a bare `tokenizers.Tokenizer` (no special-token template) on an iterable of strings.

    Kept apart from the transformers wrapper so that vocabularies can be compared before choosing one.
    """
    if model not in SUBWORD_MODELS:
        raise ValueError(f"model must be one of {SUBWORD_MODELS}, got {model!r}")
    if model == "bpe":
        backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN, fuse_unk=True))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    else:
        backend = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token=UNK_TOKEN, show_progress=False
        )
    # NFKC folds compatibility forms (ligatures, full-width characters) but keeps case and accents.
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def train_translation_tokenizer(source_texts, target_texts, vocab_size=8000, model="bpe", model_max_length=256):
    """Train one vocabulary over both languages and return it as a `TokenizersBackend`.

    Every encoded sequence, source or target, ends with `</s>` and has no `<s>`: the model prepends `<s>` to
    the decoder input itself. Padding goes on the right.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"`vocab_size` must be a positive integer, got {vocab_size!r}.")
    backend = train_subword_backend([*source_texts, *target_texts], vocab_size, model)
    if backend.get_vocab_size() > vocab_size:
        # The trainer keeps the special tokens and every character of the text whatever vocab_size says.
        raise ValueError(f"`vocab_size` {vocab_size} is smaller than the special tokens plus the characters of the "
                         f"training text ({backend.get_vocab_size()} types); use at least that many (thousands for "
                         f"real translation).")
    return TokenizersBackend(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        add_bos_token=False,
        add_eos_token=True,
        padding_side="right",
        model_max_length=model_max_length,
    )
