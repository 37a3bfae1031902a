"""A verse-aligned Spanish-English parallel corpus: Reina-Valera 1909 and the World English Bible.

Both texts come from locally installed SWORD modules, read through `diatheke` in one call per module.

Why alignment is by content and not by verse key: SWORD declares RV1909 in KJV versification and the WEB
in NRSVA, but SWORD's own NRSVA<->KJV mapping holds a single entry (Rev 12:18 -> 13:1, empty in both
modules). The real differences sit inside the modules: RV1909 keeps the Spanish (Hebrew) numbering in KJV
verse slots (its Numbers 13 and 30, 1 Samuel 24, Job 39-41, Hosea 12 and Jonah 2 run ahead and merge two
verses at the end; 2 Corinthians 13:12-13 is one verse), and the WEB moves the Romans doxology (16:25-27)
to the end of 14:23 and leaves out verses such as Acts 8:37. So each book is aligned as two sequences of
non-empty verses (Gale & Church, 1993, with shared letter trigrams added): verses merged on one side
become one pair, and verses with no counterpart are dropped.

Psalm titles are part of verse 1 in RV1909 but a separate canonical heading in the WEB; the WEB title is
put at the start of its verse 1, because dropping it from RV1909 would need Spanish-specific splitting.
"""

import concurrent.futures
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

MODULES = {"es": "spaRV1909eb", "en": "engWEB2015eb"}
INSTALL_HINT = "apt-get install diatheke sword-text-sparv sword-text-web (or: bash scripts/setup.sh)"

BOOKS = (
    "Gen", "Exod", "Lev", "Num", "Deut", "Josh", "Judg", "Ruth", "1Sam", "2Sam", "1Kgs", "2Kgs", "1Chr",
    "2Chr", "Ezra", "Neh", "Esth", "Job", "Ps", "Prov", "Eccl", "Song", "Isa", "Jer", "Lam", "Ezek", "Dan",
    "Hos", "Joel", "Amos", "Obad", "Jonah", "Mic", "Nah", "Hab", "Zeph", "Hag", "Zech", "Mal",
    "Matt", "Mark", "Luke", "John", "Acts", "Rom", "1Cor", "2Cor", "Gal", "Eph", "Phil", "Col", "1Thess",
    "2Thess", "1Tim", "2Tim", "Titus", "Phlm", "Heb", "Jas", "1Pet", "2Pet", "1John", "2John", "3John",
    "Jude", "Rev",
)
# Split sizes are given for the whole Bible and scaled down by this count when a slice is exported.
KJV_VERSE_COUNT = 31102


class CorpusNotInstalledError(RuntimeError):
    """Raised when diatheke or one of the two SWORD Bible modules is not installed."""


@dataclass(frozen=True)
class Verse:
    ref: str  # OSIS reference in the module's own numbering, e.g. "Num.30.1"
    text: str


@dataclass(frozen=True)
class VersePair:
    """One aligned unit: one or more consecutive verses on each side."""

    es_refs: tuple[str, ...]
    en_refs: tuple[str, ...]
    es: str
    en: str

    @property
    def id(self) -> str:
        """OSIS reference (or range) of the English side, whose numbering is the usual English one."""
        first, last = self.en_refs[0], self.en_refs[-1]
        return first if first == last else f"{first}-{last}"

    @property
    def chapter(self) -> str:
        return self.en_refs[0].rsplit(".", 1)[0]


# ---------------------------------------------------------------------------------------------------
# Reading the SWORD modules

# diatheke prints one verse per line: markup before the verse (headings), "<Book name> C:V: ", the text.
_VERSE_LINE = re.compile(
    r"^(?P<pre>(?:[^>]*>)*?)\s*(?P<name>[^<>]*?) (?P<chapter>\d+):(?P<verse>\d+): (?P<body>.*)$"
)
_PSALM_TITLE = re.compile(r'<title[^>]*type="psalm"[^>]*>(.*?)</title>')
# Elements whose content is not verse text: footnotes, speaker labels, non-psalm headings.
_NON_TEXT = re.compile(r"<(note|speaker|title)\b[^>]*>.*?</\1>")
# Material after the end of a book (the WEB appends its glossary to Revelation 22:21).
_AFTER_BOOK_END = re.compile(r'<div\b[^>]*eID="[^"]*"[^>]*type="book"[^>]*/>.*$')
_TAG = re.compile(r"<[^>]*>")
# RV1909 ends most epistles with the KJV subscription ("Amén. Fué escrita de Corinto á los Romanos..."),
# which the WEB does not translate.
_SUBSCRIPTION = re.compile(r"(?<=Amén\.)\s+[^.]*\b(?:[Ee]scrita|[Ee]nviada)\b.*$")


def _clean(markup: str) -> str:
    text = _AFTER_BOOK_END.sub("", markup)
    text = _NON_TEXT.sub(" ", text)
    text = _TAG.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    # Tags become spaces so that words in adjacent tags stay apart; glue punctuation back ("Jehová ,").
    text = re.sub(r" (?=[,.;:!?)\]’”»])", "", text)
    return re.sub(r"(?<=[(\[“‘«¡¿]) ", "", text)


def _check_installed() -> None:
    if shutil.which("diatheke") is None:
        raise CorpusNotInstalledError(f"diatheke is not installed; run: {INSTALL_HINT}")
    listing = subprocess.run(["diatheke", "-b", "system", "-k", "modulelist"], capture_output=True, text=True)
    installed = {line.split(" : ")[0].strip() for line in listing.stdout.splitlines()}
    missing = sorted(set(MODULES.values()) - installed)
    if missing:
        raise CorpusNotInstalledError(f"SWORD module(s) {', '.join(missing)} not installed; run: {INSTALL_HINT}")


def read_books(module: str, books: tuple[str, ...]) -> dict[str, list[Verse]]:
    """All verses of `books` (OSIS ids, canonical order) in `module` as plain text; empty verses kept."""
    # One call for all books: a call per verse or per book would cost seconds to minutes. -o h turns
    # headings on; without it diatheke repeats a psalm's title before every verse of the psalm.
    output = subprocess.run(
        ["diatheke", "-b", module, "-o", "h", "-k", ";".join(books)], capture_output=True, text=True, check=True
    ).stdout
    verses = {book: [] for book in books}
    # diatheke names books in its English locale ("III John"); each new name is the next requested book.
    names = []
    for line in output.splitlines():
        match = _VERSE_LINE.match(line)
        if match is None:
            continue
        if not names or names[-1] != match["name"]:
            names.append(match["name"])
        book = books[len(names) - 1]
        titles = " ".join(_PSALM_TITLE.findall(match["pre"]))
        text = _clean(f"{titles} {match['body']}")
        verses[book].append(Verse(f"{book}.{match['chapter']}.{match['verse']}", text))
    return verses


def _without_subscription(verses: list[Verse]) -> list[Verse]:
    last = max((k for k, verse in enumerate(verses) if verse.text), default=None)
    if last is None:
        return verses
    return verses[:last] + [Verse(verses[last].ref, _SUBSCRIPTION.sub("", verses[last].text))] + verses[last + 1 :]


# ---------------------------------------------------------------------------------------------------
# Aligning the two verse sequences of a book

# Costs (negative log prior) of each bead: (Spanish verses, English verses). Verse numbering agrees
# almost everywhere, so anything but one-to-one is rare. Unmatched verses cost their prior only, so a long
# misplaced passage is dropped rather than forced into a pair.
_BEAD_COSTS = {
    (1, 1): 0.0, (2, 1): 8.0, (1, 2): 8.0, (2, 2): 8.0, (3, 1): 10.0, (1, 3): 10.0, (1, 0): 8.0, (0, 1): 8.0,
}
# Reward for a bead that starts on the same verse key on both sides: numbering agrees almost everywhere,
# so a shift has to be supported by several verses of length and trigram evidence.
_SAME_KEY_BONUS = 1.0
# Cost of leaving out a verse whose key is empty on the other side: the WEB leaves out verses such as
# Acts 8:37 and marks them with an empty verse.
_OMITTED_VERSE_COST = 2.0
# Variance of the English length per Spanish character, measured on verses with the same key.
_LENGTH_VARIANCE = 2.5
# Reward per unit of shared letter trigrams (Dice coefficient). Names and cognates ("Nathán"/"Nathan",
# "tribu"/"tribe") tell verses apart where lengths cannot, as in genealogies and lists.
_LEXICAL_WEIGHT = 20.0
# How far (in verses) the two sequences may drift apart beyond their difference in length.
_BAND = 10


def _length_cost(es_chars: int, en_chars: int, ratio: float) -> float:
    """Gale-Church cost: -log P(|delta| this large) for delta = (l_en - c l_es) / sqrt(s2 mean_length)."""
    mean = (es_chars + en_chars / ratio) / 2
    delta = abs(en_chars - ratio * es_chars) / math.sqrt(_LENGTH_VARIANCE * mean)
    tail = math.erfc(delta / math.sqrt(2))
    return -math.log(tail) if tail > 0 else delta * delta / 2


def _trigrams(text: str) -> frozenset[str]:
    letters = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
    return frozenset(word[k : k + 3] for word in re.findall(r"[a-z]{3,}", letters) for k in range(len(word) - 2))


def _dice(left: list[frozenset[str]], right: list[frozenset[str]]) -> float:
    left, right = frozenset().union(*left), frozenset().union(*right)
    return 2 * len(left & right) / max(len(left) + len(right), 1)


def align_verses(es: list[Verse], en: list[Verse]) -> list[VersePair]:
    """Pairs the non-empty verses of one book by dynamic programming over lengths and shared trigrams."""
    es = [verse for verse in es if verse.text]
    en = [verse for verse in en if verse.text]
    es_keys, en_keys = {verse.ref for verse in es}, {verse.ref for verse in en}
    es_ends = list(itertools.accumulate((len(verse.text) for verse in es), initial=0))
    en_ends = list(itertools.accumulate((len(verse.text) for verse in en), initial=0))
    es_grams = [_trigrams(verse.text) for verse in es]
    en_grams = [_trigrams(verse.text) for verse in en]
    ratio = en_ends[-1] / max(es_ends[-1], 1)
    band = _BAND + abs(len(es) - len(en))
    cost, step = {(0, 0): 0.0}, {}
    for i in range(len(es) + 1):
        for j in range(max(0, i - band), min(len(en), i + band) + 1):
            for (a, b), bead_cost in _BEAD_COSTS.items():
                previous = cost.get((i - a, j - b))
                if previous is None:
                    continue
                total = previous + bead_cost
                if not b and es[i - 1].ref not in en_keys or not a and en[j - 1].ref not in es_keys:
                    total += _OMITTED_VERSE_COST - bead_cost
                if a and b:
                    total += _length_cost(es_ends[i] - es_ends[i - a], en_ends[j] - en_ends[j - b], ratio)
                    total -= _LEXICAL_WEIGHT * _dice(es_grams[i - a : i], en_grams[j - b : j])
                    total -= _SAME_KEY_BONUS * (es[i - a].ref == en[j - b].ref)
                if total < cost.get((i, j), math.inf):
                    cost[(i, j)], step[(i, j)] = total, (a, b)
    pairs, i, j = [], len(es), len(en)
    while (i, j) != (0, 0):
        a, b = step[(i, j)]
        if a and b:
            pairs.append(_join(es[i - a : i], en[j - b : j]))
        i, j = i - a, j - b
    return pairs[::-1]


def _join(es: list[Verse], en: list[Verse]) -> VersePair:
    return VersePair(
        es_refs=tuple(verse.ref for verse in es),
        en_refs=tuple(verse.ref for verse in en),
        es=" ".join(verse.text for verse in es),
        en=" ".join(verse.text for verse in en),
    )


def aligned_verse_pairs(books: list[str] | None = None) -> list[VersePair]:
    """Aligned (RV1909, WEB) pairs of `books` (OSIS ids such as "Ruth"; all 66 by default) in Bible order."""
    books = _checked_books(books)
    _check_installed()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        es, en = pool.map(read_books, (MODULES["es"], MODULES["en"]), (books, books))
    return [pair for book in books for pair in align_verses(_without_subscription(es[book]), en[book])]


def _checked_books(books: list[str] | None) -> tuple[str, ...]:
    if books is None:
        return BOOKS
    unknown = sorted(set(books) - set(BOOKS))
    if unknown:
        raise ValueError(f"unknown book(s) {unknown}; use OSIS ids, one of: {' '.join(BOOKS)}")
    return tuple(book for book in BOOKS if book in books)


# ---------------------------------------------------------------------------------------------------
# Splitting and export


def split_pairs(pairs: list[VersePair], validation_size: int, test_size: int) -> dict[str, list[VersePair]]:
    """Deterministic split into train/validation/test by whole chapters, ordered by a hash of the chapter id.

    Whole chapters keep neighbouring verses (which share names and phrasing) out of two splits. A slice
    too small to give every split a chapter is split by verse instead.
    """
    for unit in (lambda pair: pair.chapter, lambda pair: pair.id):
        groups: dict[str, list[VersePair]] = {}
        for pair in pairs:
            groups.setdefault(unit(pair), []).append(pair)
        order = sorted(groups, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
        held_out = {"validation": [], "test": []}
        targets = {"validation": validation_size, "test": test_size}
        taken = set()
        for split in held_out:
            for name in order:
                if len(held_out[split]) >= targets[split]:
                    break
                if name not in taken:
                    taken.add(name)
                    held_out[split].extend(groups[name])
        train = [pair for pair in pairs if unit(pair) not in taken]
        if train and all(held_out.values()):
            break
    return {"train": train, **held_out}


def export_translation_corpus(
    output_dir: str | os.PathLike,
    source_lang: str = "es",
    target_lang: str = "en",
    validation_size: int = 1000,
    test_size: int = 1000,
    max_pairs: int | None = None,
    books: list[str] | None = None,
) -> dict:
    """Writes train/validation/test .jsonl in the Hugging Face translation format, plus stats.json.

    `max_pairs` keeps the first pairs in Bible order. `validation_size` and `test_size` are for the whole
    Bible; a slice (`books`, `max_pairs`) gets them scaled by its share of the Bible's verses, at least one.
    """
    for name, value in (("validation_size", validation_size), ("test_size", test_size), ("max_pairs", max_pairs)):
        # A slice's split sizes are rounded up to 1, and a negative max_pairs would drop pairs from the end.
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if {source_lang, target_lang} != set(MODULES):
        raise ValueError(
            f"unsupported language pair {source_lang!r}->{target_lang!r}; this corpus supports es->en and en->es"
        )
    pairs = aligned_verse_pairs(books)[:max_pairs]
    share = min(1.0, len(pairs) / KJV_VERSE_COUNT)
    splits = split_pairs(pairs, max(1, round(validation_size * share)), max(1, round(test_size * share)))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(output_dir / f"{split}.jsonl", "w", encoding="utf-8") as file:
            for pair in rows:
                translation = {source_lang: getattr(pair, source_lang), target_lang: getattr(pair, target_lang)}
                file.write(json.dumps({"translation": translation, "id": pair.id}, ensure_ascii=False) + "\n")
    stats = {
        "source_lang": source_lang,
        "target_lang": target_lang,
        "modules": MODULES,
        "pairs": {split: len(rows) for split, rows in splits.items()},
        "chapters": {split: len({pair.chapter for pair in rows}) for split, rows in splits.items()},
        "languages": {
            lang: _text_stats([getattr(pair, lang) for pair in pairs]) for lang in (source_lang, target_lang)
        },
    }
    (output_dir / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return stats


def _text_stats(texts: list[str]) -> dict:
    tokens = [len(text.split()) for text in texts]
    chars = [len(text) for text in texts]
    return {
        "tokens": sum(tokens),
        "mean_tokens": round(sum(tokens) / max(len(texts), 1), 2),
        "max_tokens": max(tokens, default=0),
        "chars": sum(chars),
        "mean_chars": round(sum(chars) / max(len(texts), 1), 2),
    }
