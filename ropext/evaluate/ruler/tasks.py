"""RULER's synthetic tasks (NVIDIA/RULER, ``scripts/data/synthetic``): one generator per task family.

A generator draws everything random about one sample from ``random.Random(f"{seed}-{task}-{length}-{index}")``
and returns a `TaskSample`: the text before and after the haystack, a function that renders the haystack
with ``n`` units (noise lines, essay sentences, distractor needles, words or documents), the filler text that
may follow those ``n`` units without changing the answer, and the expected answers.
`ropext.evaluate.ruler.prompts` then picks the largest ``n`` whose prompt fits the length in the model's own
tokens, then the start of the filler that brings it to the length. Needles are placed at depths (fractions)
drawn once, so a sample is the same whichever ``n`` the fit tries.

Templates, needle format, value types and task parameters are RULER's (``constants.py``, ``synthetic.yaml``);
docs/ruler.md lists where this implementation has to choose.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
import string
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ropext.errors import RopextError
from ropext.registry import Registry

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
"""RULER's noise haystack: one unit of niah_single_1 and vt (and the essay text when no corpus is given)."""
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
DEPTHS = tuple(round(i * 100 / 39) for i in range(40))
"""RULER's 40 needle depths in percent (``np.round(np.linspace(0, 100, 40))``); needles take distinct ones."""
MAX_SENTENCE_WORDS = 50
"""Essay sentences longer than this are cut into pieces, so one haystack unit stays small."""

# ---------------------------------------------------------------- task table


@dataclass(frozen=True)
class NiahConfig:
    haystack: str
    """repeat (noise lines), essay (sentences of --haystack-corpus) or needle (other needles)."""
    key_type: str
    """words (adjective-noun) or uuids."""
    value_type: str
    """numbers (7 digits) or uuids."""
    keys: int = 1
    values: int = 1
    queries: int = 1


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str
    """niah, vt, cwe, fwe or qa."""
    max_new_tokens: int
    """RULER's ``tokens_to_generate``."""
    metric: str
    """string_match_all (fraction of the expected strings found) or string_match_part (any found)."""
    summary: str
    niah: NiahConfig | None = None


def _niah(name: str, summary: str, **config) -> TaskSpec:
    return TaskSpec(name, "niah", 128, "string_match_all", summary, NiahConfig(**config))


_SPECS = (
    _niah("niah_single_1", "one needle (word key, number) in noise sentences", haystack="repeat",
          key_type="words", value_type="numbers"),
    _niah("niah_single_2", "one needle (word key, number) in essay text", haystack="essay",
          key_type="words", value_type="numbers"),
    _niah("niah_single_3", "one needle (word key, UUID) in essay text", haystack="essay",
          key_type="words", value_type="uuids"),
    _niah("niah_multikey_1", "four needles of different keys in essay text; one is asked", haystack="essay",
          key_type="words", value_type="numbers", keys=4),
    _niah("niah_multikey_2", "one needle among needles of other word keys", haystack="needle",
          key_type="words", value_type="numbers"),
    _niah("niah_multikey_3", "one needle among needles of other UUID keys (UUID values)", haystack="needle",
          key_type="uuids", value_type="uuids"),
    _niah("niah_multivalue", "four numbers for one key in essay text; all are asked", haystack="essay",
          key_type="words", value_type="numbers", values=4),
    _niah("niah_multiquery", "four keys in essay text; all four are asked", haystack="essay",
          key_type="words", value_type="numbers", queries=4),
    TaskSpec("vt", "vt", 30, "string_match_all", "variable tracking: every variable of a 5-variable chain"),
    TaskSpec("cwe", "cwe", 120, "string_match_all", "common words extraction: the 10 most common words"),
    TaskSpec("fwe", "fwe", 50, "string_match_all", "frequent words extraction: the 3 most frequent coded words"),
    TaskSpec("qa_1", "qa", 32, "string_match_part", "question answering over SQuAD-style paragraphs (--qa-data)"),
    TaskSpec("qa_2", "qa", 32, "string_match_part", "multi-hop QA over HotpotQA-style paragraphs (--qa-data)"),
)  # fmt: skip
SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
ALL_TASKS: tuple[str, ...] = tuple(SPECS)
"""RULER's 13 tasks in RULER's order."""
QA_TASKS: tuple[str, ...] = ("qa_1", "qa_2")

_NAMES: Registry[TaskSpec] = Registry("RULER task")
for _spec in _SPECS:
    _NAMES.register(_spec.name, _spec, _spec.summary)


def parse_tasks(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"`` or comma-separated names -> canonical names in RULER's order; unknown names say "did you mean"."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [part.strip() for part in parts if part.strip()]
    if not names:
        raise RopextError(f"no RULER task given: write them comma-separated or 'all' (known: {', '.join(ALL_TASKS)})")
    if any(name.lower() == "all" for name in names):
        return ALL_TASKS
    chosen = {_NAMES.canonical(name) for name in names}
    return tuple(name for name in ALL_TASKS if name in chosen)


# ---------------------------------------------------------------- samples


@dataclass(frozen=True)
class TaskSample:
    task: str
    head: str
    """Instruction: the text before the haystack."""
    context: Callable[[int], str]
    """The haystack with ``n`` units, with the needles (chains, common words, gold documents) in it."""
    tail: str
    """Question and answer prefix: the model continues from the end of it."""
    expected: tuple[str, ...]
    shots: str = ""
    """A worked example placed before ``head`` (vt and cwe, as RULER); dropped when the length is short."""
    max_units: int | None = None
    """How many haystack units exist (None: as many as wanted)."""
    filler: Callable[[int, int, int], str] | None = None
    """``filler(n, pieces, skip)``: text that may follow the haystack of ``n`` units, joiner first, ``pieces``
    units' worth of it (the next units themselves where a cut one cannot change the answer, else neutral text),
    starting ``skip`` units later (another start, for when no cut of the first reaches the length). A start of
    it, cut anywhere, brings the prompt to the length to the token. "" (or None) when there is none."""

    def text(self, units: int, shots: bool = True, filler: str = "") -> str:
        """The prompt's text with ``units`` haystack units, then ``filler`` (a start of `filler`'s text)."""
        return (self.shots if shots else "") + self.head + self.context(units) + filler + self.tail


def noise_lines(_units: int, pieces: int, _skip: int = 0) -> str:
    """Filler of whole noise lines after a newline-joined haystack: RULER's noise holds no needle, no
    variable and no listed word, so a cut line changes no answer."""
    return "\n" + "\n".join([NOISE] * pieces)


class _Stream:
    """Items drawn one at a time and kept: ``take(n)`` is always a prefix of ``take(n + 1)``."""

    def __init__(self, items: Iterator[str]) -> None:
        self._items = items
        self._drawn: list[str] = []

    def take(self, count: int) -> list[str]:
        while len(self._drawn) < count:
            self._drawn.append(next(self._items))
        return self._drawn[:count]


def _weave(units: list[str], inserts: Sequence[tuple[float, str]]) -> list[str]:
    """``units`` with each ``(depth, text)`` placed before unit ``int(len(units) * depth)`` (depth 1: at the end);
    inserts at the same place keep their order."""
    ordered = sorted(inserts, key=lambda insert: insert[0])
    out: list[str] = []
    j = 0
    for i, unit in enumerate(units):
        while j < len(ordered) and int(len(units) * ordered[j][0]) <= i:
            out.append(ordered[j][1])
            j += 1
        out.append(unit)
    out.extend(text for _, text in ordered[j:])
    return out


def _random_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}")


def _distinct(rng: random.Random, kind: str, count: int, avoid: set[str] | None = None) -> list[str]:
    seen = set(avoid or ())
    out: list[str] = []
    while len(out) < count:
        value = _random_value(rng, kind)
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def _child(rng: random.Random) -> random.Random:
    """A private generator for a stream drawn on demand, so its length never shifts the sample's other draws."""
    return random.Random(rng.getrandbits(64))


# ---------------------------------------------------------------- haystacks of essay text


@dataclass(frozen=True)
class EssayHaystack:
    name: str
    """``noise`` or the --haystack-corpus given."""
    sentences: tuple[str, ...]

    def take(self, count: int) -> list[str]:
        """The first ``count`` sentences; the text starts again from its beginning when it runs out."""
        whole, part = divmod(count, len(self.sentences))
        return list(self.sentences) * whole + list(self.sentences[:part])


def split_sentences(text: str) -> list[str]:
    """Whitespace collapsed, split after . ! ? and cut to at most `MAX_SENTENCE_WORDS` words a piece."""
    pieces: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text).strip()):
        words = sentence.split(" ")
        pieces.extend(" ".join(words[i : i + MAX_SENTENCE_WORDS]) for i in range(0, len(words), MAX_SENTENCE_WORDS))
    return [piece for piece in pieces if piece]


def noise_haystack() -> EssayHaystack:
    """What the essay tasks use without --haystack-corpus: the noise sentences, one sentence a unit."""
    return EssayHaystack("noise", tuple(split_sentences(NOISE)))


def corpus_haystack(spec: str, min_chars: int) -> EssayHaystack:
    """Sentences from the start of a corpus (as ``--corpus`` elsewhere), documents in order, until ``min_chars``."""
    from ropext.data.corpus import open_corpus

    sentences: list[str] = []
    chars = 0
    for text in open_corpus(spec).read():
        for sentence in split_sentences(text):
            sentences.append(sentence)
            chars += len(sentence) + 1
        if chars >= min_chars:
            break
    if not sentences:
        raise RopextError(f"--haystack-corpus {spec} holds no text")
    return EssayHaystack(spec, tuple(sentences))


# ---------------------------------------------------------------- niah


_NIAH_HEAD = (
    "Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_v} afterwards.\n"
)
_NIAH_TAIL = (
    "\nWhat are all the special magic {type_v} for {query} mentioned in the provided text?"
    " The special magic {type_v} for {query} mentioned in the provided text are"
)


def _singular(template: str) -> str:
    """RULER's rewording when one value is asked (applied to the template, before keys are filled in)."""
    return template.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


def niah_wording(type_v: str, query: str, single: bool) -> tuple[str, str]:
    head, tail = _NIAH_HEAD, _NIAH_TAIL
    if single:
        head, tail, type_v = _singular(head), _singular(tail), type_v.removesuffix("s")
    return head.format(type_v=type_v), tail.format(type_v=type_v, query=query)


def niah(spec: TaskSpec, rng: random.Random, essay: EssayHaystack) -> TaskSample:
    """Needles "One of the special magic {type} for {key} is: {value}." at distinct depths of a haystack."""
    config = spec.niah
    assert config is not None
    key_count = max(config.keys, config.queries)
    keys = _distinct(rng, config.key_type, key_count)
    values = _distinct(rng, config.value_type, key_count * config.values)
    per_key = [values[i * config.values : (i + 1) * config.values] for i in range(key_count)]
    needles = [
        NEEDLE.format(type_v=config.value_type, key=key, value=value)
        for key, key_values in zip(keys, per_key, strict=True)
        for value in key_values
    ]
    rng.shuffle(needles)
    depths = sorted(rng.sample(DEPTHS, len(needles)))
    inserts = [(depth / 100, needle) for depth, needle in zip(depths, needles, strict=True)]
    asked = rng.sample(range(key_count), config.queries)
    queries = [keys[i] for i in asked]
    expected = tuple(value for i in asked for value in per_key[i])
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    head, tail = niah_wording(config.value_type, query, single=len(expected) == 1)

    filler: Callable[[int, int, int], str] = noise_lines
    if config.haystack == "repeat":  # filler: the next noise lines

        def context(n: int) -> str:
            return "\n".join(_weave([NOISE] * n, inserts))

    elif config.haystack == "needle":
        draw = _child(rng)
        used_keys, used_values = set(keys), set(values)

        def distractors() -> Iterator[str]:
            while True:  # other keys only: a distractor never answers the question
                key = _distinct(draw, config.key_type, 1, used_keys)[0]
                value = _distinct(draw, config.value_type, 1, used_values)[0]
                yield NEEDLE.format(type_v=config.value_type, key=key, value=value)

        stream = _Stream(distractors())

        def context(n: int) -> str:
            return "\n".join(_weave(stream.take(n), inserts))

        # filler: noise lines, not the next distractor needle. A needle is never cut (a key or value cut short
        # could pass for another needle's); about a needle's worth of noise at most, at the end of the haystack,
        # names no key and no value.

    else:

        def context(n: int) -> str:
            return " ".join(_weave(essay.take(n), inserts))

        def essay_goes_on(n: int, pieces: int, skip: int = 0) -> str:  # the next sentences: they hold no needle
            return " " + " ".join(essay.take(n + skip + pieces)[n + skip :])

        filler = essay_goes_on

    return TaskSample(spec.name, head, context, tail, expected, filler=filler)


# ---------------------------------------------------------------- vt


VT_CHAINS = 1
VT_HOPS = 4
VT_EXAMPLE_NOISES = 8
"""Noise lines in vt's worked example (RULER fits its example to about 500 tokens)."""
_VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
_VT_TAIL = (
    "\nQuestion: Find all variables that are assigned the value {value} in the text above."
    # "assgined" is RULER's own spelling; kept so prompts are RULER's.
    " Answer: According to the chain(s) of variable assignment in the text above, {count} variables are"
    " assgined the value {value}, they are:"
)


def _chains(
    rng: random.Random, chains: int, hops: int, name_letters: int, avoid_values: set[int]
) -> tuple[list[list[str]], list[list[str]], list[int]]:
    """``chains`` chains "VAR A = 12345", "VAR B = VAR A", ... of ``hops + 1`` distinct variables each."""
    names: list[str] = []
    while len(names) < chains * (hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=name_letters))
        if name not in names:
            names.append(name)
    values: list[int] = []
    while len(values) < chains:
        value = rng.randint(10000, 99999)
        if value not in values and value not in avoid_values:
            values.append(value)
    groups = [names[i * (hops + 1) : (i + 1) * (hops + 1)] for i in range(chains)]
    lines = [
        [f"VAR {group[0]} = {value}"] + [f"VAR {group[j + 1]} = VAR {group[j]}" for j in range(hops)]
        for group, value in zip(groups, values, strict=True)
    ]
    return groups, lines, values


def _chain_inserts(rng: random.Random, lines: list[list[str]]) -> list[tuple[float, str]]:
    inserts = []
    for chain in lines:
        depths = sorted(rng.random() for _ in chain)  # a chain's assignments stay in order
        inserts.extend(zip(depths, chain, strict=True))
    return inserts


def variable_tracking(spec: TaskSpec, rng: random.Random) -> TaskSample:
    """A chain of assignments among noise lines; the answer is every variable holding the first value."""
    groups, lines, values = _chains(rng, VT_CHAINS, VT_HOPS, 5, set())
    inserts = _chain_inserts(rng, lines)
    tail = _VT_TAIL.format(value=values[0], count=VT_HOPS + 1)

    def context(n: int) -> str:
        return "\n".join(_weave([NOISE] * n, inserts))

    # RULER's one-shot example: its own chain (3-letter names, another value) in a few noise lines, answered.
    ex_groups, ex_lines, ex_values = _chains(rng, 1, VT_HOPS, 3, set(values))
    ex_context = "\n".join(_weave([NOISE] * VT_EXAMPLE_NOISES, _chain_inserts(rng, ex_lines)))
    ex_tail = _VT_TAIL.format(value=ex_values[0], count=VT_HOPS + 1)
    shots = _VT_HEAD + ex_context + ex_tail + " " + " ".join(ex_groups[0]) + "\n\n"
    # The next units are noise lines, after every assignment: cut, they add no variable and no value.
    return TaskSample(spec.name, _VT_HEAD, context, tail, tuple(groups[0]), shots=shots, filler=noise_lines)


# ---------------------------------------------------------------- cwe


CWE_COMMON = 10
_CWE_HEAD = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n"
)
_CWE_TAIL = (
    "\nQuestion: What are the 10 most common words in the above list?"
    " Answer: The top 10 words that appear most often in the list are:"
)


def cwe_frequencies(length: int) -> tuple[int, int, tuple[int, int, int]]:
    """RULER's repeats by length: common, uncommon, and the example's (words, common repeats, uncommon repeats)."""
    if length < 4096:
        return 6, 1, (20, 3, 1)
    return 30, 3, (40, 10, 3)


def _numbered(words: Sequence[str], start: int = 1) -> str:
    return " ".join(f"{i}. {word}" for i, word in enumerate(words, start))


def common_words(spec: TaskSpec, rng: random.Random, length: int) -> TaskSample:
    """A numbered list where 10 words repeat often and the rest rarely; the answer is the 10 common words.

    Words are English (nouns, adjectives, verbs); past the built-in list, adjective-noun pairs. No word of
    the sample contains a common word, so a listed word never counts as a common one it merely contains.
    """
    freq_common, freq_rare, (ex_words, ex_common, ex_rare) = cwe_frequencies(length)
    singles = list(CWE_WORDS)
    rng.shuffle(singles)
    common: list[str] = []
    for word in singles:
        if len(common) == CWE_COMMON:
            break
        if not any(word in other or other in word for other in common):
            common.append(word)
    draw = _child(rng)

    def others() -> Iterator[str]:
        seen = set(common)
        for word in singles:
            if word not in seen and not any(c in word for c in common):
                seen.add(word)
                yield word
        while True:
            pair = _random_value(draw, "words")
            if pair not in seen and not any(c in pair for c in common):
                seen.add(pair)
                yield pair

    words = others()
    example = [next(words) for _ in range(ex_words)]
    stream = _Stream(words)
    order_seed = rng.getrandbits(64)

    def context(n: int) -> str:
        listed = common * freq_common + stream.take(n) * freq_rare
        random.Random(f"{order_seed}-{n}").shuffle(listed)
        return _numbered(listed)

    def filler(n: int, pieces: int, skip: int = 0) -> str:
        """The list goes on, numbered on, with the next uncommon words once each. A word listed once, or the
        start of one cut short, is listed fewer times than any common word (6 or 30), and contains no common
        word (`others` skips those); at most it raises one uncommon word from 1 or 3 listings to 2 or 4. So
        the 10 common words stay the 10 most common, and the answer."""
        first = CWE_COMMON * freq_common + n * freq_rare + 1
        return " " + _numbered(stream.take(n + skip + pieces)[n + skip :], first)

    ex_listed = example[:CWE_COMMON] * ex_common + example[CWE_COMMON:] * ex_rare
    rng.shuffle(ex_listed)
    shots = _CWE_HEAD + _numbered(ex_listed) + _CWE_TAIL + " " + _numbered(example[:CWE_COMMON]) + "\n"
    return TaskSample(spec.name, _CWE_HEAD, context, _CWE_TAIL, tuple(common), shots=shots, filler=filler)


# ---------------------------------------------------------------- fwe


FWE_ALPHA = 2.0
_ZETA_ALPHA = math.pi**2 / 6  # ζ(2): RULER normalises the Zipf counts by ζ(alpha)
FWE_LETTERS = 6
FWE_MIN_VOCABULARY = 8
_FWE_HEAD = (
    "Read the following coded text and track the frequency of each coded word. "
    "Find the three most frequently appeared coded words. "
)
_FWE_TAIL = (
    "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
    " Answer: According to the coded text above, the three most frequently appeared words are:"
)


def fwe_counts(n: int, vocabulary: int) -> list[int]:
    """RULER's Zipf counts ``int(n * k^-alpha / zeta(alpha))`` for ranks k = 1..vocabulary, with the first five
    made strictly decreasing (only short lengths need it), so that the top three after "..." are unambiguous."""
    counts = [int(n * k**-FWE_ALPHA / _ZETA_ALPHA) for k in range(1, vocabulary + 1)]
    for rank in range(min(4, vocabulary - 1) - 1, -1, -1):
        counts[rank] = max(counts[rank], counts[rank + 1] + 1)
    return counts


def frequent_words(spec: TaskSpec, rng: random.Random, length: int) -> TaskSample:
    """Coded 6-letter words with Zipf frequencies; the most frequent is "..." (noise), the answer ranks 2 to 4.
    The haystack unit is RULER's ``num_words``, the Zipf scale."""
    size = max(length // 50, FWE_MIN_VOCABULARY)  # RULER: vocab_size = max_seq_length // 50
    vocabulary: list[str] = []
    seen: set[str] = set()
    while len(vocabulary) < size:
        word = "".join(rng.choices(string.ascii_lowercase, k=FWE_LETTERS))
        if word not in seen:
            seen.add(word)
            vocabulary.append(word)
    vocabulary[0] = "..."
    order_seed = rng.getrandbits(64)

    def context(n: int) -> str:
        words = [word for word, count in zip(vocabulary, fwe_counts(n, size), strict=True) for _ in range(count)]
        random.Random(f"{order_seed}-{n}").shuffle(words)
        return " ".join(words)

    return TaskSample(spec.name, _FWE_HEAD, context, _FWE_TAIL, tuple(vocabulary[1:4]), filler=_fwe_dots)


def _fwe_dots(_units: int, pieces: int, _skip: int = 0) -> str:
    """fwe's filler: more "...". The next unit (one step of the Zipf scale) cannot be cut, since part of it
    could tie rank 5 with rank 4, the answer's last word. "..." is already the most frequent word and the
    question says to ignore it, so more of it (or a cut "." or "..") leaves ranks 2 to 4, the answer, as they
    are."""
    return " " + " ".join(["..."] * pieces)


# ---------------------------------------------------------------- qa


_QA_INSTRUCTION = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
)
_QA_HEAD = f"{_QA_INSTRUCTION}\n\nThe following are given documents.\n\n"
_QA_TAIL = "\n\n" + _QA_INSTRUCTION + "\n\nQuestion: {question} Answer:"
_QA_DOCUMENT = "Document {i}:\n{document}"
SQUAD_SHAPE = '{"data": [{"paragraphs": [{"context": ..., "qas": [{"question": ..., "answers": [{"text": ...}]}]}]}]}'
HOTPOT_SHAPE = '[{"question": ..., "answer": ..., "context": [[title, [sentence, ...]], ...]}, ...]'


@dataclass(frozen=True)
class QaItem:
    question: str
    answers: tuple[str, ...]
    gold: tuple[int, ...]
    """Documents always in the prompt (SQuAD: the paragraph; HotpotQA: the question's own paragraphs)."""
    related: tuple[int, ...] = ()
    """Documents added first (SQuAD: the other paragraphs of the same article), as RULER."""


@dataclass(frozen=True)
class QaData:
    task: str
    """qa_1 (SQuAD-style) or qa_2 (HotpotQA-style)."""
    path: str
    sha256: str
    documents: tuple[str, ...]
    items: tuple[QaItem, ...] = field(repr=False)


def question_answering(spec: TaskSpec, rng: random.Random, data: QaData, item: QaItem) -> TaskSample:
    """The question's documents among others ("Document i:" each); the haystack unit is one other document."""
    related = list(item.related)
    rng.shuffle(related)
    excluded = set(item.gold) | set(related)
    order = related + [i for i in rng.sample(range(len(data.documents)), len(data.documents)) if i not in excluded]
    order_seed = rng.getrandbits(64)

    def context(n: int) -> str:
        chosen = list(item.gold) + order[:n]
        random.Random(f"{order_seed}-{n}").shuffle(chosen)
        return "\n\n".join(_QA_DOCUMENT.format(i=i, document=data.documents[d]) for i, d in enumerate(chosen, 1))

    def filler(n: int, pieces: int, skip: int = 0) -> str:
        """The next documents, numbered on: other documents than the question's own, which are always whole
        in the prompt, so a cut one takes nothing from the answer. "" when no document is left."""
        first = len(item.gold) + n + 1
        following = enumerate(order[n + skip : n + skip + pieces], first)
        return "".join("\n\n" + _QA_DOCUMENT.format(i=i, document=data.documents[d]) for i, d in following)

    tail = _QA_TAIL.format(question=item.question)
    return TaskSample(spec.name, _QA_HEAD, context, tail, item.answers, max_units=len(order), filler=filler)


def _qa_error(path: str, detail: str) -> RopextError:
    return RopextError(
        f"--qa-data {path}: {detail}; expected SQuAD-style JSON {SQUAD_SHAPE} (for qa_1) "
        f"or HotpotQA-style JSON {HOTPOT_SHAPE} (for qa_2)"
    )


def _text(value: object, path: str, where: str) -> str:
    if not isinstance(value, str):
        raise _qa_error(path, f"{where} is not a string")
    return value


def _list(value: object, path: str, where: str) -> list:
    if not isinstance(value, list):
        raise _qa_error(path, f"{where} is not a list")
    return value


def _field(record: object, key: str, path: str, where: str) -> object:
    if not isinstance(record, dict) or key not in record:
        raise _qa_error(path, f"{where} has no {key!r}")
    return record[key]


def _squad(data: dict, path: str) -> tuple[list[str], list[QaItem]]:
    articles = []
    for a, article in enumerate(_list(data["data"], path, "'data'")):
        paragraphs = _list(_field(article, "paragraphs", path, f"data[{a}]"), path, f"data[{a}].paragraphs")
        articles.append(
            [
                (
                    _text(_field(p, "context", path, f"data[{a}].paragraphs[{i}]"), path, "a context"),
                    _list(_field(p, "qas", path, f"data[{a}].paragraphs[{i}]"), path, "qas"),
                )
                for i, p in enumerate(paragraphs)
            ]
        )
    documents = sorted({context for paragraphs in articles for context, _ in paragraphs})
    index = {document: i for i, document in enumerate(documents)}
    items = []
    for paragraphs in articles:
        article_docs = list(dict.fromkeys(index[context] for context, _ in paragraphs))
        for context, qas in paragraphs:
            for qa in qas:
                question = _text(_field(qa, "question", path, "a qas entry"), path, "a question")
                answers = _list(_field(qa, "answers", path, "a qas entry"), path, "answers")
                texts = tuple(dict.fromkeys(_text(_field(x, "text", path, "an answer"), path, "an answer text")
                                            for x in answers))  # fmt: skip
                if (isinstance(qa, dict) and qa.get("is_impossible")) or not any(t.strip() for t in texts):
                    continue  # SQuAD 2.0's unanswerable questions, as RULER
                gold = index[context]
                items.append(QaItem(question, texts, (gold,), tuple(d for d in article_docs if d != gold)))
    return documents, items


def _hotpot(data: list, path: str) -> tuple[list[str], list[QaItem]]:
    records = []
    for r, record in enumerate(data):
        question = _text(_field(record, "question", path, f"record {r}"), path, f"record {r}'s question")
        answer = _text(_field(record, "answer", path, f"record {r}"), path, f"record {r}'s answer")
        paragraphs = []
        for entry in _list(_field(record, "context", path, f"record {r}"), path, f"record {r}'s context"):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                raise _qa_error(path, f"record {r}'s context holds {entry!r:.60}, not [title, [sentences]]")
            sentences = [_text(s, path, f"record {r}'s sentence") for s in _list(entry[1], path, "sentences")]
            paragraphs.append(f"{entry[0]}\n{''.join(sentences)}")  # RULER's "title\nsentences"
        records.append((question, answer, paragraphs))
    documents = sorted({paragraph for _, _, paragraphs in records for paragraph in paragraphs})
    index = {document: i for i, document in enumerate(documents)}
    items = [
        QaItem(question, (answer,), tuple(dict.fromkeys(index[p] for p in paragraphs)))
        for question, answer, paragraphs in records
        if answer.strip() and paragraphs
    ]
    return documents, items


@functools.lru_cache(maxsize=8)
def _read_qa(path: str, size: int, mtime_ns: int) -> QaData:
    raw = Path(path).read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _qa_error(path, "it is not JSON") from None
    if isinstance(data, dict) and "data" in data:
        task, (documents, items) = "qa_1", _squad(data, path)
    elif isinstance(data, list):
        task, (documents, items) = "qa_2", _hotpot(data, path)
    else:
        raise _qa_error(path, "it is neither")
    if not items:
        raise _qa_error(path, "it holds no answerable question")
    return QaData(task, path, hashlib.sha256(raw).hexdigest(), tuple(documents), tuple(items))


def load_qa_data(paths: Sequence[str | Path]) -> dict[str, QaData]:
    """``{"qa_1": SQuAD-style data, "qa_2": HotpotQA-style data}`` for the files given (one of each at most)."""
    found: dict[str, QaData] = {}
    for given in paths:
        path = Path(given)
        if not path.is_file():
            raise RopextError(f"--qa-data file {path} does not exist")
        stat = path.stat()
        data = _read_qa(str(path), stat.st_size, stat.st_mtime_ns)
        if data.task in found:
            raise RopextError(
                f"--qa-data {path} and {found[data.task].path} are both for {data.task}: "
                "give at most one SQuAD-style (qa_1) and one HotpotQA-style (qa_2) file"
            )
        found[data.task] = data
    return found


QA_UNAVAILABLE = {
    "qa_1": "needs SQuAD-style question data: pass --qa-data FILE (e.g. SQuAD 2.0 dev-v2.0.json)",
    "qa_2": "needs HotpotQA-style question data: pass --qa-data FILE (e.g. hotpot_dev_distractor_v1.json)",
}


@functools.lru_cache(maxsize=16)
def _question_order(seed: int, task: str, count: int) -> tuple[int, ...]:
    """The questions in a seeded order: sample i asks question ``order[i]`` at every length."""
    return tuple(random.Random(f"{seed}-{task}-questions").sample(range(count), count))


# ---------------------------------------------------------------- one sample


@dataclass(frozen=True)
class Resources:
    """What the generators read besides the seed: the essay haystack and the question data."""

    essay: EssayHaystack = field(default_factory=noise_haystack)
    qa: Mapping[str, QaData] = field(default_factory=dict)


def make_sample(task: str, seed: int, length: int, index: int, resources: Resources | None = None) -> TaskSample:
    """Sample ``index`` of ``task`` at ``length``: the same for the same arguments, independent of other samples."""
    spec = SPECS[task]
    resources = resources or Resources()
    rng = random.Random(f"{seed}-{task}-{length}-{index}")
    if spec.family == "niah":
        return niah(spec, rng, resources.essay)
    if spec.family == "vt":
        return variable_tracking(spec, rng)
    if spec.family == "cwe":
        return common_words(spec, rng, length)
    if spec.family == "fwe":
        return frequent_words(spec, rng, length)
    data = resources.qa.get(task)
    if data is None:
        raise RopextError(f"RULER {task} {QA_UNAVAILABLE[task]}")
    order = _question_order(seed, task, len(data.items))
    return question_answering(spec, rng, data, data.items[order[index % len(order)]])


# ---------------------------------------------------------------- words

_ADJECTIVES = """
able absent acid active actual afraid agile alert alive amber ample ancient angry annual anxious aquatic arctic
ardent arid artful autumn awake aware balmy bare basic bitter bland blank bleak blind blond blunt bold bony bouncy
brave breezy brief bright brisk broad bronze brown bulky busy calm candid capable careful casual cheap cheerful
chief chilly civic civil classic clean clear clever close cloudy clumsy coastal cold common cool copper cosmic
costly cozy crisp cruel curly curved cute daily damp dark dear decent deep dense direct dirty distant dizzy double
drowsy dry dual dusty eager early earnest eastern easy elastic elder electric elegant empty endless equal even exact
exotic faint fair faithful false famous fancy fast fatal feeble fertile fierce final fine firm flat fluffy fond
foreign formal fragile frank free fresh friendly frozen frugal full funny fuzzy gentle giant gifted glad global
glossy golden good graceful grand grateful great greedy green grim gritty gross hairy handy happy hard harsh hasty
healthy heavy helpful hidden high hollow holy honest hopeful huge humble hungry icy ideal idle imperial inner
intense ivory jolly jovial joyful junior keen kind large late lavish lazy lean legal level light little lively local
lofty lonely long loose loud lovely loyal lucky lunar lush major marine massive mature meager medium mellow merry
mighty mild minor misty modern modest moist molten moral muddy murky narrow native neat nervous neutral new nimble
noble noisy normal novel numb oblong odd olive open orange ornate outer oval pale patient peaceful perfect petite
placid plain pleasant plump polar polite poor portly precise pretty prime proud public pure purple quick quiet
quirky radiant rapid rare raw ready real regal remote rich rigid ripe robust rocky rosy rough round royal rural
rustic sacred salty sandy scarce secret serene shaggy sharp shiny short shy silent silky silver simple sincere sleek
slender slim slow small smart smooth snowy soft solar solemn solid sour spare spicy splendid square stable stale
steady steep sticky stiff stormy stout strange strict strong sturdy subtle sudden sunny super sweet swift tall tame
tender tense thick thin thirsty tidy tight timid tiny tough tranquil tropical true twin ugly unique upper urban
urgent useful vacant vague valid vast velvet vital vivid warm wary weary wicked wide wild windy wise witty wooden
woolly worthy young zealous
"""

_NOUNS = """
acorn actor admiral agent airport album alley almond altar anchor angle ankle antelope anthem apple apron arch
archive arena armchair arrow artist ash atlas attic auction author avenue award badge bakery balcony ballet balloon
bamboo banana bandit banjo banner barley barn barrel basket bathtub battery beach beacon beaver bee beetle bell
bench berry bicycle billboard biscuit blanket blossom boat bonnet bookcase boot border bottle boulder bracelet
branch bread breeze brick bridge broom bubble bucket buffalo bugle building bulb bundle bunker butter button cabin
cabinet cable cactus camel camera campus canal candle cannon canoe canvas canyon captain caravan carpet carrot cart
castle cathedral cattle cave cellar cello chair chalk channel chapel charcoal cherry chess chimney chorus cider
cinema circus citadel city clam cliff clock cloud clover coat cobra coconut coffee coin comet compass concert cookie
copper coral corner cottage cotton council county courtyard cradle crane crater crayon creek cricket crown crystal
cupboard curtain cushion cycle dagger dairy daisy dancer dawn deer desert diamond diary dinner dolphin donkey
doorway dragon drawer dream drum duck dune eagle earring easel eclipse elbow elephant elm ember emerald engine
envelope falcon farm feather fence ferry festival fiddle field fig filter finger fireplace flag flame flask fleet
flute fog forest fork fortress fossil fountain fox frame frog furnace galaxy gallery garage garden garlic gate
gazelle gem ghost ginger giraffe glacier glove goat gondola gorilla grape grass gravel guitar gull hammer hamster
harbor harp harvest hat hawk hazel hedge helmet herb heron highway hill hive horizon horse hotel island ivy jacket
jaguar jar jasmine jelly jewel journal jungle kangaroo kayak kettle kitchen kite kitten knight koala ladder lagoon
lake lamp lantern laptop lava lawn leaf lemon leopard letter library lighthouse lily lime linen lion lizard lobster
locket lodge lotus lumber magnet mango mantle maple marble market meadow melon mill mirror mitten monastery monkey
moon mosaic moss moth mountain muffin museum mushroom needle nest nickel notebook oak oasis ocean octopus office
olive onion orange orchard orchestra organ ostrich otter oven owl oyster paddle pagoda palace panda panther parade
parrot pasture peach peanut pearl pebble pelican pencil pepper piano pickle pier pigeon pillow pilot pine planet
plaza plum pocket poem pond poppy porch potato pottery prairie prism pumpkin puppet puzzle pyramid quarry quartz
quill rabbit raccoon radio rainbow raven reef ribbon ridge river robin rocket roof rooster rose ruby saddle sailor
salmon sandal satchel saucer scarf school scooter sculpture seal shadow shark shelf shell shield ship shovel shrine
silk sketch sled slipper snail sofa spider spire sponge spoon squirrel stable stadium statue steeple stone storm
stove stream street submarine sugar suitcase summit sundial swan sweater table tablet tavern teapot telescope temple
tent terrace thistle thunder ticket tiger timber toad tomato tower tractor trail train tram treasure trellis trumpet
tulip tunnel turkey turtle umbrella valley vase velvet village vine violin volcano wagon walnut walrus wardrobe
waterfall whale wheat wheel whistle willow window wizard wolf workshop yacht yard zebra
"""

_VERBS = """
accept accuse achieve adapt admire adopt advise agree allow amuse analyze announce answer appear applaud approve
argue arrange arrive assemble assist attach attack attempt attend avoid bake balance bargain bathe behave belong
blame bless blink boast boil borrow bounce breathe brush build bury calculate capture carve celebrate challenge
charge chase cheer choose clap climb collect comb command compare compete complain complete concentrate confess
connect consider construct contain continue cough count crawl create crush cultivate dance decide decorate defend
deliver deny depend describe deserve destroy develop dig discover dissolve divide drag drain dream drift drown dwell
earn educate elect embrace emerge employ encourage endure enjoy enter escape establish examine exchange excite
exercise exist expand expect explain explore express extend fasten fetch fill finish float flood flow fold follow
forgive fry gather gaze glance glide glow grab greet grind grip guard guess guide hammer handle happen harvest hatch
haunt heal hesitate hover hunt hurry identify ignore imagine impress improve include inform inhale inspect inspire
install intend interrupt introduce invent invite irritate jog joke juggle jump kneel knit knock label laugh launch
learn listen march marry match measure melt memorize mend migrate mix multiply murmur negotiate nod notice obey
observe obtain occur offer open operate order organize overflow own paint pause perform persuade pinch plant play
plead polish pour practice praise pray preach predict prefer prepare preserve pretend prevent print proceed produce
promise protect provide pull punish purchase pursue question quiver race rattle reach recite recognize recommend
record recover reduce reflect refuse rejoice relax release remember remind repair repeat replace reply rescue resign
resist respond rinse roam roast rob rotate rub rule sail scatter scold scrape scratch scream scrub search separate
serve settle shave shiver shrug sigh sketch skip slide smash smell smile sneeze snore sparkle speak spill sprinkle
squeeze stamp stare steer stir stitch stretch strive study succeed suggest supply support suppose surprise surround
suspect swallow sway swim tackle taste teach tease tempt thank thrive tickle tolerate travel tremble trust twist
unfold unite unlock vanish visit wander warn wash watch weave whisper wiggle wink wobble wonder worry wrap wrestle
yawn yell zoom
"""
ADJECTIVES: tuple[str, ...] = tuple(_ADJECTIVES.split())
NOUNS: tuple[str, ...] = tuple(_NOUNS.split())
"""NIAH's word keys are ``adjective-noun`` (RULER draws them from wonderwords' lists)."""
CWE_WORDS: tuple[str, ...] = tuple(sorted({*ADJECTIVES, *NOUNS, *_VERBS.split()}))
"""cwe's English words (RULER: wonderwords' nouns, adjectives and verbs)."""
