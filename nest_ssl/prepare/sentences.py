"""English sentences from our own small vocabulary and grammar, deterministic for a seed.

The embedded corpus needs text with real words, many of them, in varied order, so that what a model hears carries
phonetic and lexical structure (espeak-ng turns it into speech). A few templates of noun phrases, verbs, adverbs and
prepositional phrases over about 400 words give millions of distinct sentences of 4 to 14 words.

`sentence_bucket(text, n_buckets)` assigns a sentence to a fixed bucket by a stable hash of its text, so that
evaluation sentences are never pretrained on, whatever the seed or the order of generation.
"""

from __future__ import annotations

import zlib

import numpy as np

NOUNS = """farmer basket river garden window teacher doctor sailor kitten puppy horse letter journey winter summer
island mountain forest village market kitchen candle lantern bridge castle needle pocket ribbon hammer ladder
shovel blanket pillow mirror engine wagon bottle bucket carpet pencil notebook picture camera signal harbour
tower meadow valley desert ocean thunder rainbow orchard cottage chimney fountain statue soldier captain painter
baker tailor miner hunter neighbour stranger children daughter brother sister uncle cousin student
rabbit squirrel pigeon dolphin turtle monkey tiger elephant beetle spider dragon wizard giant princess""".split()
ADJECTIVES = """old young green yellow purple silver golden heavy little quiet noisy gentle angry clever foolish
bright gloomy narrow shallow ancient modern broken frozen wooden paper curious patient nervous friendly lazy busy
brave tired hungry dusty shiny muddy rusty tiny enormous""".split()
VERBS_T = """carried painted opened closed followed pushed pulled watched noticed borrowed repaired dropped lifted
cleaned counted washed visited reached crossed guarded chased finished packed mended filled emptied buried found
wanted described admired ignored delivered measured tested climbed""".split()
VERBS_I = """slept laughed waited listened whispered shouted travelled vanished trembled smiled wandered shivered
danced rested hurried stumbled appeared returned""".split()
ADVERBS = """quickly slowly quietly carefully happily suddenly rarely often gladly bravely calmly loudly nearly
secretly gently eagerly""".split()
PREPOSITIONS = """across behind beside beneath above under near inside around through toward along""".split()
DETERMINERS = ["the", "a", "every", "that", "this", "one", "her", "his", "their", "our"]
NAMES = """anna peter maria thomas helen george lucy martin clara oliver emma victor sofia daniel rosa henry""".split()
TIMES = ["yesterday", "today", "at noon", "in the morning", "after dinner", "last week", "on sunday", "at night"]
CONJUNCTIONS = ["and then", "but", "while", "because", "so"]


def vocabulary() -> list[str]:
    words = set()
    for group in (NOUNS, ADJECTIVES, VERBS_T, VERBS_I, ADVERBS, PREPOSITIONS, DETERMINERS, NAMES, TIMES,
                  CONJUNCTIONS):
        for phrase in group:
            words.update(phrase.split())
    return sorted(words)


class SentenceGenerator:
    """next() -> one lower-case sentence without punctuation; the same sequence for the same seed."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def _pick(self, words):
        return words[int(self.rng.integers(len(words)))]

    def _noun_phrase(self) -> str:
        r = self.rng.random()
        if r < 0.15:
            return self._pick(NAMES)
        parts = [self._pick(DETERMINERS)]
        if self.rng.random() < 0.5:
            parts.append(self._pick(ADJECTIVES))
        parts.append(self._pick(NOUNS))
        if parts[0] == "a" and parts[1][0] in "aeiou":
            parts[0] = "an"
        return " ".join(parts)

    def _clause(self) -> str:
        subject = self._noun_phrase()
        if self.rng.random() < 0.6:
            verb = [self._pick(VERBS_T), self._noun_phrase()]
        else:
            verb = [self._pick(VERBS_I)]
        parts = [subject]
        if self.rng.random() < 0.3:
            parts.append(self._pick(ADVERBS))
        parts += verb
        if self.rng.random() < 0.5:
            parts += [self._pick(PREPOSITIONS), self._noun_phrase()]
        if self.rng.random() < 0.25:
            parts.append(self._pick(TIMES))
        return " ".join(parts)

    def next(self) -> str:
        text = self._clause()
        if self.rng.random() < 0.2:
            text = f"{text} {self._pick(CONJUNCTIONS)} {self._clause()}"
        return text


def sentence_bucket(text: str, n_buckets: int) -> int:
    """A stable bucket in [0, n_buckets) for a sentence (crc32 of its text)."""
    return zlib.crc32(text.encode("utf-8")) % n_buckets
