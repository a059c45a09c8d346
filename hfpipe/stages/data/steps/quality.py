"""A fast English word tokenizer and the Gopher quality filter on it (step ``gopher_quality``), and ``simplify``,
the text normalisation decontamination and MinHash share.
"""

from __future__ import annotations

import re
import unicodedata

import regex
from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter
from datatrove.utils.text import NUMBERS_PATTERN, PUNCTUATION_SET, PUNCTUATION_TRANS, WHITESPACE_PATTERN
from datatrove.utils.word_tokenizers import WordTokenizer

# datatrove tokenizes English words with spaCy (spacy.blank("en") + a sentencizer): 0.39 MB/s on the starter SOTU
# text on a quiet core, so datatrove's GopherQualityFilter ran at ~0.1-0.4 MB/s and held the whole data stage at 0.64
# MB/s per core. One stdlib regex reproducing spaCy's English splits that matter to Gopher's counts (contractions
# "do n't" / "John 's", hyphens split between letters but kept in "UTF-8", digit groups "1,000" "3.14", URLs whole)
# tokenizes at ~5-10 MB/s, and FastGopherQualityFilter below runs at ~2.5-5 MB/s. Verdicts agree with datatrove's on
# 1166 of the 1172 English starter documents (99.5%: SOTU, Brown, Python docs, Moby-Dick, English handbook pages,
# spam); the 6 others sit within 0.01 of the 0.8 alphabetic-words threshold. tests/test_data_steps.py checks >= 99%.

_CONTRACTION = r"(?:[sSdDmM]|re|RE|ve|VE|ll|LL)"
ENGLISH_WORD_RE = (
    r"https?://[^\s<>\"'()\[\]{}]*[^\s<>\"'()\[\]{}.,;:!?]"                     # URLs stay whole
    r"|n['’]t\b|['’]" + _CONTRACTION + r"\b"                                     # do n't, John 's
    r"|\w+(?:(?:[.,/:=@&+]|(?<=[^\W\d_])-(?=\d)|['’](?!" + _CONTRACTION + r"\b|t\b))\w+)*"  # kept infixes
    r"|\.{2,}|-{2,}|\S")                                                         # punctuation, one char or a run
_NT_SPLIT = r"\B(?=n['’]t\b)"  # "don't" -> "do n't" before matching (a lazy alternative instead costs 30%)


class FastWordTokenizer(WordTokenizer):
    """English word tokenizer: ``ENGLISH_WORD_RE`` (stdlib re) mimicking spaCy's English tokenizer. Usable wherever
    datatrove takes ``language`` (datatrove's ``load_word_tokenizer`` accepts a WordTokenizer instance). Sentence
    splitting is not provided (C4/FineWeb keep datatrove's own tokenizer)."""

    def __init__(self):
        super().__init__("en")
        self._word_re, self._nt_re = re.compile(ENGLISH_WORD_RE), re.compile(_NT_SPLIT)

    def word_tokenize(self, text: str) -> list[str]:
        if "n't" in text or "n’t" in text:
            text = self._nt_re.sub(" ", text)
        return self._word_re.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        raise NotImplementedError("FastWordTokenizer splits words only")

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        raise NotImplementedError("FastWordTokenizer splits words only")


_COMBINING_MARKS = regex.compile(r"\p{Mn}+")  # unicodedata category "Mn", as datatrove's loop tests


def simplify(text: str) -> str:
    """datatrove's ``simplify_text`` with its default config (lowercase, numbers -> 0, punctuation -> spaces, one space
    between words, diacritics removed), 5x faster: diacritics go by one regex over the NFD form of non-ASCII text
    instead of a per-character Python loop (datatrove: 2.6 MB/s on SOTU). Decontamination and MinHash split its
    output on spaces (datatrove's spaCy tokenizer finds the same words in punctuation-free text)."""
    text = NUMBERS_PATTERN.sub("0", text.lower()).translate(PUNCTUATION_TRANS)
    text = WHITESPACE_PATTERN.sub(" ", text.strip())
    if not text.isascii():
        text = _COMBINING_MARKS.sub("", unicodedata.normalize("NFD", text))
    return text.strip()


class FastGopherQualityFilter(GopherQualityFilter):
    """datatrove's GopherQualityFilter (same arguments, rules, order and drop reasons) on ``FastWordTokenizer``
    for English, with its per-word Python loops replaced by regex counts over the token list; other languages
    use datatrove's own filter unchanged."""

    def __init__(self, language: str = "en", **kwargs):
        super().__init__(language=language, **kwargs)
        self.tokenizer = FastWordTokenizer() if language == "en" else None
        self._symbol_re = re.compile("(?m)^[" + re.escape("".join(sorted(PUNCTUATION_SET))) + "]+$")
        self._alpha_re = re.compile(r"(?m)^[^\n]*?[^\W\d_]")  # a token holding a letter (str.isalpha's classes)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self.tokenizer is None:
            return super().filter(doc)
        text = doc.text
        words = self.tokenizer.word_tokenize(text)
        n_words, joined = len(words), "\n".join(words)
        symbols = self._symbol_re.findall(joined)  # tokens made of punctuation only
        n_kept = n_words - len(symbols)

        if self.min_doc_words and n_kept < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n_kept > self.max_doc_words:
            return False, "gopher_long_doc"
        avg = (len(joined) - max(n_words - 1, 0) - sum(map(len, symbols))) / n_kept if n_kept else float("nan")
        if self.min_avg_word_length and avg < self.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if self.max_avg_word_length and avg > self.max_avg_word_length:
            return False, "gopher_above_avg_threshold"
        if self.max_symbol_word_ratio and text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        ellipses = text.count("...") + text.count("…")
        if self.max_symbol_word_ratio and ellipses / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_ellipsis"
        lines = text.splitlines()
        if (self.max_bullet_lines_ratio and sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines)
                > self.max_bullet_lines_ratio):
            return False, "gopher_too_many_bullets"
        if (self.max_ellipsis_lines_ratio and sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines)
                > self.max_ellipsis_lines_ratio):
            return False, "gopher_too_many_end_ellipsis"
        alpha_words = len(self._alpha_re.findall(joined))
        if self.max_non_alpha_words_ratio and alpha_words / n_words < self.max_non_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"
        if self.min_stop_words and len(self.stop_words.intersection(words)) < self.min_stop_words:
            return False, "gopher_enough_stop_words"
        return True
