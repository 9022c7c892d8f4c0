"""RULER's synthetic tasks (NVIDIA/RULER, ``scripts/data/synthetic``): one generator per task family.

A generator draws everything random about one sample from ``random.Random(f"{seed}-{task}-{length}-{index}")``
and returns a `TaskSample`: the text before and after the haystack, a function that renders the haystack
with ``n`` units (noise lines, essay sentences, distractor needles, words or documents), the filler text that
may follow those ``n`` units without changing the answer, and the expected answers.
`ropext.evaluate.ruler.prompts` then picks the largest ``n`` whose prompt fits the length (less the tokens to
generate) in the model's own tokens, then the start of the filler that brings it to that budget. Needles are
placed at depths (fractions) drawn once, so a sample is the same whichever ``n`` the fit tries.

Templates, answer prefixes, needle format, value types, word lists (wonderwords) and task parameters are RULER's
as of `RULER_PROMPTS` (``constants.py``, ``synthetic.yaml``); docs/ruler.md lists where this implementation
has to choose, and where it differs.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
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

RULER_PROMPTS = "NVIDIA/RULER@c3f5e3b (2026-07-22)"
"""The RULER version whose prompts (templates, answer prefixes, word lists, task parameters) these follow; stored
in every result, so that results of other prompts are never mixed into one file."""
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
"""RULER's noise haystack: one unit of niah_single_1 and vt (and the essay text with --haystack-corpus noise)."""
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

    @property
    def data(self) -> str:
        """What the task reads besides its generator: shown by ``ropext ls`` and ``--tasks help``."""
        if self.family == "qa":
            return QA_DATA[self.name]
        if self.niah is not None and self.niah.haystack == "essay":
            return "none (prose shipped with ropext)"
        return "none"


QA_DATA = {
    "qa_1": "SQuAD 2.0 dev: --qa-data dev-v2.0.json",
    "qa_2": "HotpotQA dev: --qa-data hotpot_dev_distractor_v1.json",
}
"""The question file each QA task needs (docs/ruler.md says where to get them)."""


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
    TaskSpec("qa_1", "qa", 32, "string_match_part", "question answering over SQuAD paragraphs"),
    TaskSpec("qa_2", "qa", 32, "string_match_part", "multi-hop question answering over HotpotQA paragraphs"),
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
    question: str
    """The question after the haystack: the end of the task's prompt (RULER's ``template``)."""
    answer_prefix: str
    """RULER's ``answer_prefix``: the start of the answer, after the chat template's generation prompt when there
    is one; the model continues from the end of it."""
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

    opening: str = ""
    """The chat template's text before the user's turn ("" without one)."""
    closing: str = ""
    """The chat template's text after the user's turn, its generation prompt included ("" without one)."""

    def in_chat(self, opening: str, closing: str) -> TaskSample:
        """This sample as the user's turn of a chat template (its text before and after the user's message)."""
        return dataclasses.replace(self, opening=opening, closing=closing)

    @property
    def tail(self) -> str:
        """Everything after the haystack: question, the chat template's closing, answer prefix."""
        return self.question + self.closing + self.answer_prefix

    def text(self, units: int, shots: bool = True, filler: str = "") -> str:
        """The prompt's text with ``units`` haystack units, then ``filler`` (a start of `filler`'s text)."""
        return self.opening + (self.shots if shots else "") + self.head + self.context(units) + filler + self.tail


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
    if kind == "words":  # RULER: a uniform draw from every adjective-noun pair
        words = word_lists()
        return f"{rng.choice(words.adjectives)}-{rng.choice(words.nouns)}"
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
    """`DEFAULT_HAYSTACK`, `NOISE_HAYSTACK` or the --haystack-corpus given."""
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


NOISE_HAYSTACK = "noise"
"""``--haystack-corpus noise``: the essay tasks on RULER's noise sentences (ropext's haystack before it shipped
prose)."""
DEFAULT_HAYSTACK = "treasury-of-david"
"""The essay text shipped with ropext, used without --haystack-corpus (docs/ruler.md says why this text)."""
_DEFAULT_HAYSTACK_FILE = "treasury_of_david.txt.gz"


def noise_haystack() -> EssayHaystack:
    """The noise sentences, one sentence a unit (``--haystack-corpus noise``)."""
    return EssayHaystack(NOISE_HAYSTACK, tuple(split_sentences(NOISE)))


@functools.cache
def default_haystack() -> EssayHaystack:
    """RULER's essay tasks read Paul Graham's essays, which are not public domain; ropext ships public-domain
    essay-like prose instead: the first two volumes (about 1.3M characters, 310k SmolLM2 tokens) of C. H.
    Spurgeon's *The Treasury of David*, a commentary. It is read once, and wraps around past its end as any
    haystack text does."""
    from importlib.resources import files

    raw = files("ropext.evaluate.ruler").joinpath("data", _DEFAULT_HAYSTACK_FILE).read_bytes()
    return EssayHaystack(DEFAULT_HAYSTACK, tuple(split_sentences(gzip.decompress(raw).decode("utf-8"))))


def essay_haystack(spec: str | None, min_chars: int) -> EssayHaystack:
    """The essay tasks' haystack for ``--haystack-corpus``: the shipped prose (None), the noise sentences
    (``noise``), or a corpus."""
    if spec is None:
        return default_haystack()
    if spec == NOISE_HAYSTACK:
        return noise_haystack()
    return corpus_haystack(spec, min_chars)


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
_NIAH_QUESTION = "\nWhat are all the special magic {type_v} for {query} mentioned in the provided text?"
_NIAH_ANSWER = " The special magic {type_v} for {query} mentioned in the provided text are"


def _singular(template: str) -> str:
    """RULER's rewording when one value is asked (applied to the template, before keys are filled in)."""
    return template.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


def niah_wording(type_v: str, query: str, single: bool) -> tuple[str, str, str]:
    """Instruction, question and answer prefix, singular where one value is asked (as RULER)."""
    parts = (_NIAH_HEAD, _NIAH_QUESTION, _NIAH_ANSWER)
    if single:
        parts, type_v = tuple(_singular(part) for part in parts), type_v.removesuffix("s")
    head, question, answer = (part.format(type_v=type_v, query=query) for part in parts)
    return head, question, answer


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
    if config.haystack == "essay":  # RULER: distinct depths out of its 40, between sentences
        fractions = [depth / 100 for depth in sorted(rng.sample(DEPTHS, len(needles)))]
    else:  # RULER: uniform positions among the lines; drawn as fractions, so they do not depend on the size
        fractions = sorted(rng.random() for _ in needles)
    inserts = list(zip(fractions, needles, strict=True))
    asked = rng.sample(range(key_count), config.queries)
    queries = [keys[i] for i in asked]
    expected = tuple(value for i in asked for value in per_key[i])
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    head, question, answer = niah_wording(config.value_type, query, single=len(expected) == 1)

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

    return TaskSample(spec.name, head, context, question, answer, expected, filler=filler)


# ---------------------------------------------------------------- vt


VT_CHAINS = 1
VT_HOPS = 4
VT_EXAMPLE_NOISES = 8
"""Noise lines in vt's worked example (RULER fits its example to about 500 tokens)."""
_VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
_VT_QUESTION = "\nQuestion: Find all variables that are assigned the value {value} in the text above."
_VT_ANSWER = (
    " Answer: According to the chain(s) of variable assignment in the text above, {count} variables are"
    " assigned the value {value}, they are:"
)  # RULER's wording since 2025 ("assgined" before)


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
        # RULER's lines, the trailing blank of a copy included
        [f"VAR {group[0]} = {value}"] + [f"VAR {group[j + 1]} = VAR {group[j]} " for j in range(hops)]
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
    question = _VT_QUESTION.format(value=values[0])
    answer = _VT_ANSWER.format(value=values[0], count=VT_HOPS + 1)

    def context(n: int) -> str:
        return "\n".join(_weave([NOISE] * n, inserts))

    # RULER's one-shot example: its own chain (3-letter names, another value) in a few noise lines, answered.
    ex_groups, ex_lines, ex_values = _chains(rng, 1, VT_HOPS, 3, set(values))
    ex_context = "\n".join(_weave([NOISE] * VT_EXAMPLE_NOISES, _chain_inserts(rng, ex_lines)))
    ex_tail = _VT_QUESTION.format(value=ex_values[0]) + _VT_ANSWER.format(value=ex_values[0], count=VT_HOPS + 1)
    shots = _VT_HEAD + ex_context + ex_tail + " " + " ".join(ex_groups[0]) + "\n\n"
    # The next units are noise lines, after every assignment: cut, they add no variable and no value.
    return TaskSample(spec.name, _VT_HEAD, context, question, answer, tuple(groups[0]), shots=shots, filler=noise_lines)


# ---------------------------------------------------------------- cwe


CWE_COMMON = 10
_CWE_HEAD = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n"
)
_CWE_QUESTION = "\nQuestion: What are the 10 most common words in the above list?"
_CWE_ANSWER = " Answer: The top 10 words that appear most often in the list are:"


def cwe_frequencies(length: int) -> tuple[int, int, tuple[int, int, int]]:
    """RULER's repeats by length: common, uncommon, and the example's (words, common repeats, uncommon repeats)."""
    if length < 4096:
        return 6, 1, (20, 3, 1)
    return 30, 3, (40, 10, 3)


def _numbered(words: Sequence[str], start: int = 1) -> str:
    return " ".join(f"{i}. {word}" for i, word in enumerate(words, start))


def _contains(word: str, part: str) -> bool:
    """Whether string_match_all would find ``part`` in ``word`` (it ignores case)."""
    return part.lower() in word.lower()


def common_words(spec: TaskSpec, rng: random.Random, length: int) -> TaskSample:
    """A numbered list where 10 words repeat often and the rest rarely; the answer is the 10 common words.

    Words are wonderwords' nouns, adjectives and verbs, as RULER's; past those, adjective-noun pairs. No word of
    the sample contains a common word, so a listed word never counts as a common one it merely contains.
    """
    freq_common, freq_rare, (ex_words, ex_common, ex_rare) = cwe_frequencies(length)
    singles = list(word_lists().cwe)
    rng.shuffle(singles)
    common: list[str] = []
    for word in singles:
        if len(common) == CWE_COMMON:
            break
        if not any(_contains(word, other) or _contains(other, word) for other in common):
            common.append(word)
    draw = _child(rng)

    def others() -> Iterator[str]:
        seen = set(common)
        for word in singles:
            if word not in seen and not any(_contains(word, c) for c in common):
                seen.add(word)
                yield word
        while True:
            pair = _random_value(draw, "words")
            if pair not in seen and not any(_contains(pair, c) for c in common):
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
    ex_tail = _CWE_QUESTION + _CWE_ANSWER
    shots = _CWE_HEAD + _numbered(ex_listed) + ex_tail + " " + _numbered(example[:CWE_COMMON]) + "\n"
    return TaskSample(
        spec.name, _CWE_HEAD, context, _CWE_QUESTION, _CWE_ANSWER, tuple(common), shots=shots, filler=filler
    )


# ---------------------------------------------------------------- fwe


FWE_ALPHA = 2.0
_ZETA_ALPHA = math.pi**2 / 6  # ζ(2): RULER normalises the Zipf counts by ζ(alpha)
FWE_LETTERS = 6
FWE_MIN_VOCABULARY = 8
_FWE_HEAD = (
    "Read the following coded text and track the frequency of each coded word. "
    "Find the three most frequently appeared coded words. "
)
_FWE_QUESTION = (
    "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
_FWE_ANSWER = " Answer: According to the coded text above, the three most frequently appeared words are:"


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

    return TaskSample(
        spec.name, _FWE_HEAD, context, _FWE_QUESTION, _FWE_ANSWER, tuple(vocabulary[1:4]), filler=_fwe_dots
    )


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
_QA_QUESTION = "\n\n" + _QA_INSTRUCTION + "\n\nQuestion: {question}"
_QA_ANSWER = " Answer:"
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

    question = _QA_QUESTION.format(question=item.question)
    return TaskSample(
        spec.name, _QA_HEAD, context, question, _QA_ANSWER, item.answers, max_units=len(order), filler=filler
    )


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
    "qa_1": "needs SQuAD-style question data: pass --qa-data FILE (SQuAD 2.0 dev-v2.0.json; docs/ruler.md)",
    "qa_2": "needs HotpotQA-style question data: pass --qa-data FILE (hotpot_dev_distractor_v1.json; docs/ruler.md)",
}


@functools.lru_cache(maxsize=16)
def _question_order(seed: int, task: str, count: int) -> tuple[int, ...]:
    """The questions in a seeded order: sample i asks question ``order[i]`` at every length."""
    return tuple(random.Random(f"{seed}-{task}-questions").sample(range(count), count))


# ---------------------------------------------------------------- one sample


@dataclass(frozen=True)
class Resources:
    """What the generators read besides the seed: the essay haystack and the question data."""

    essay: EssayHaystack = field(default_factory=default_haystack)
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


@dataclass(frozen=True)
class WordLists:
    """wonderwords' English word lists, read as RULER reads them (one entry a line, trailing blanks dropped; a few
    entries are two words or hyphenated, as in RULER)."""

    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    cwe: tuple[str, ...]
    """Nouns, adjectives and verbs, each once, sorted: RULER's cwe words."""


@functools.cache
def word_lists() -> WordLists:
    """The lists of the installed wonderwords (a dependency), read once. RULER builds its NIAH keys from the
    adjectives and nouns and its cwe words from all three lists."""
    from wonderwords import RandomWord

    def read(category: str) -> tuple[str, ...]:
        words = RandomWord().filter(include_categories=[category])
        return tuple(sorted({word.rstrip() for word in words if word.strip()}))

    adjectives, nouns, verbs = read("adjectives"), read("nouns"), read("verbs")
    return WordLists(adjectives, nouns, tuple(sorted({*adjectives, *nouns, *verbs})))
