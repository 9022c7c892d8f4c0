"""RULER's generators, prompt fitting and scoring (ropext.evaluate.ruler), with a small real BPE tokenizer."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from ropext.data.tokenized import encode, special_prefix
from ropext.errors import RopextError
from ropext.evaluate.ruler import prompts as ruler_prompts
from ropext.evaluate.ruler.prompts import Prompt, build_prompt, fit_units
from ropext.evaluate.ruler.run import equal_length_batches
from ropext.evaluate.ruler.scoring import postprocess, score, string_match_all, string_match_part
from ropext.evaluate.ruler.tasks import (
    ALL_TASKS,
    CWE_COMMON,
    DEPTHS,
    NEEDLE,
    NOISE,
    QA_TASKS,
    RULER_PROMPTS,
    SPECS,
    Resources,
    TaskSample,
    corpus_haystack,
    cwe_frequencies,
    default_haystack,
    fwe_counts,
    load_qa_data,
    make_sample,
    noise_haystack,
    parse_tasks,
    split_sentences,
    word_lists,
)

SYNTHETIC = tuple(task for task in ALL_TASKS if task not in QA_TASKS)
NIAH = tuple(task for task in ALL_TASKS if task.startswith("niah"))
SPECIALS = ("<s>", "</s>")
CWE_WORDS = word_lists().cwe
_LISTED = re.compile(r"\d+\. (.+?)(?= \d+\. |\n|$)")
"""A numbered list's words (a few of wonderwords' entries are two words)."""


class _Tokenizer:
    """The two things ropext asks of a tokenizer here, over a `tokenizers` backend (no transformers import)."""

    def __init__(self, backend, byte_tokens: bool = False) -> None:
        self.backend_tokenizer = backend
        self.byte_tokens = byte_tokens
        """Byte-fallback tokens are special tokens here (to put them in the trained vocabulary): decode keeps them."""

    def __call__(self, text: str, add_special_tokens: bool = True, **_) -> dict[str, list[int]]:
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens and not self.byte_tokens)


def _byte_level_bpe(texts: list[str]) -> _Tokenizer:
    """A byte-level BPE of 1500 tokens trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        min_frequency=2,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return _Tokenizer(backend)


@pytest.fixture(scope="module")
def tokenizer() -> _Tokenizer:
    """A byte-level BPE trained on RULER-like text: long prompts are a few thousand tokens."""
    texts = [" ".join(CWE_WORDS), NOISE * 5]
    for task in SYNTHETIC:
        texts.extend(make_sample(task, 99, 4096, i).text(20) for i in range(3))
    return _byte_level_bpe(texts)


@pytest.fixture(scope="module")
def sentencepiece_tokenizer() -> _Tokenizer:
    """A Llama-2-style tokenizer: BPE over "▁"-marked words with byte fallback, pieces free to cross a newline
    (so that the haystack's last word, the newline and the question's first word can be one token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [" ".join(CWE_WORDS), NOISE * 5]
    for task in SYNTHETIC:
        texts.extend(make_sample(task, 99, 4096, i).text(20) for i in range(3))
    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<unk>", *SPECIALS, *byte_tokens], show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    return _Tokenizer(backend, byte_tokens=True)


@pytest.fixture(scope="module")
def bos_tokenizer(tokenizer: _Tokenizer) -> _Tokenizer:
    """The same vocabulary, adding a BOS token in front of every text (as Llama's tokenizers do)."""
    from tokenizers import Tokenizer, processors

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    bos = backend.token_to_id(SPECIALS[0])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return _Tokenizer(backend)


# ---------------------------------------------------------------- scoring


def test_string_match_all_is_the_fraction_of_expected_strings_found() -> None:
    values = ["1234567", "2345678", "3456789", "4567890"]
    assert string_match_all("They are 1234567, 2345678, 3456789 and 4567890.", values) == 1.0
    assert string_match_all("They are 1111111 and 2222222.", values) == 0.0
    assert string_match_all("Only 2345678 and 4567890.", values) == 0.5
    assert string_match_all("HOLLOW Curly", ["hollow", "curly", "wizard", "plaza"]) == 0.5  # case-insensitive


def test_string_match_part_is_one_when_any_answer_is_found() -> None:
    answers = ["Denver Broncos", "the Broncos"]
    assert string_match_part(" the broncos won", answers) == 1.0
    assert string_match_part("Carolina Panthers", answers) == 0.0


def test_outputs_are_postprocessed_as_ruler_does() -> None:
    assert postprocess("  12\x0034\t56 \n") == "12\n34\n56"
    assert string_match_all("abc\x01def", ["abc\ndef"]) == 1.0


@pytest.mark.parametrize("task", ALL_TASKS)
def test_each_task_scores_with_rulers_metric(task: str) -> None:
    expected = ["alpha", "beta"]
    partial = score(SPECS[task].metric, "the answer: beta", expected)
    assert partial == (1.0 if task in QA_TASKS else 0.5)
    assert score(SPECS[task].metric, "Alpha, beta", expected) == 1.0
    assert score(SPECS[task].metric, "gamma", expected) == 0.0


def test_max_new_tokens_are_rulers() -> None:
    per_family = {SPECS[task].family: SPECS[task].max_new_tokens for task in ALL_TASKS}
    assert per_family == {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}


# ---------------------------------------------------------------- task names


def test_task_names_parse_with_all_and_suggestions() -> None:
    assert parse_tasks("all") == ALL_TASKS
    assert len(ALL_TASKS) == 13
    assert parse_tasks("fwe, vt,niah_single_1,vt") == ("niah_single_1", "vt", "fwe")  # RULER's order, once each
    with pytest.raises(RopextError, match="Did you mean 'niah_single_1'"):
        parse_tasks("niah_singel_1")
    with pytest.raises(RopextError, match="no RULER task"):
        parse_tasks(" , ")


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("task", SYNTHETIC)
def test_samples_are_deterministic_for_a_seed_and_differ_across_seeds(task: str) -> None:
    first, again = make_sample(task, 7, 2048, 3), make_sample(task, 7, 2048, 3)
    assert first.expected == again.expected
    for units in (0, 5, 40):
        assert first.text(units) == again.text(units)
    other_seed, other_index = make_sample(task, 8, 2048, 3), make_sample(task, 7, 2048, 4)
    assert other_seed.expected != first.expected and other_seed.text(5) != first.text(5)
    assert other_index.expected != first.expected


# ---------------------------------------------------------------- what the prompts hold

_NEEDLE = re.compile(r"One of the special magic (\w+) for (.+?) is: (\S+)\.")  # a few keys hold a blank


def _needles(text: str) -> list[tuple[str, str, str]]:
    return _NEEDLE.findall(text)


def _asked_keys(sample: TaskSample) -> list[str]:
    query = re.search(r"for (.+?) mentioned in the provided text\?", sample.tail).group(1)
    return re.split(r", and |, ", query)


@pytest.mark.parametrize("task", NIAH)
def test_niah_needles_hold_the_expected_values_for_the_asked_keys(task: str) -> None:
    config = SPECS[task].niah
    sample = make_sample(task, 0, 8192, 1)
    text = sample.text(30)
    needles = _needles(text)
    assert {type_v for type_v, _, _ in needles} == {config.value_type}  # "numbers" / "uuids", as RULER
    asked = _asked_keys(sample)
    assert len(asked) == config.queries
    found = [value for _, key, value in needles if key in asked]
    assert sorted(found) == sorted(sample.expected)
    assert len(sample.expected) == config.queries * config.values
    real = max(config.keys, config.queries) * config.values  # needles of the sample's own keys
    if config.haystack == "needle":
        assert len(needles) == 1 + 30  # the needle and 30 distractors of other keys
        assert NOISE not in text
    else:
        assert len(needles) == real
        assert (NOISE in text) == (config.haystack == "repeat")
        if config.haystack == "essay":  # the prose shipped with ropext, not the noise sentences
            assert sum(sentence in text for sentence in default_haystack().sentences[:40]) >= 20
    value_pattern = {
        "numbers": r"\d{7}",
        "uuids": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
    }
    assert all(re.fullmatch(value_pattern[config.value_type], value) for value in sample.expected)
    if config.key_type == "words":  # an adjective-noun pair of wonderwords' lists, as RULER's keys
        assert all(_is_adjective_noun(key) for key in asked), asked
    else:
        assert all(re.fullmatch(value_pattern["uuids"], key) for key in asked)


def _is_adjective_noun(key: str) -> bool:
    words = word_lists()
    return any(key[:i] in words.adjectives and key[i + 1 :] in words.nouns for i, char in enumerate(key) if char == "-")


def test_niah_wording_is_singular_for_one_value_and_plural_for_several() -> None:
    single, multi = make_sample("niah_single_2", 0, 4096, 0), make_sample("niah_multivalue", 0, 4096, 0)
    assert single.head.startswith("A special magic number is hidden within the following text.")
    assert single.tail.startswith("\nWhat is the special magic number for ")
    assert single.tail.endswith("mentioned in the provided text is")
    assert multi.head.startswith("Some special magic numbers are hidden within the following text.")
    assert multi.tail.endswith("mentioned in the provided text are")
    query = make_sample("niah_multiquery", 0, 4096, 0).tail
    assert re.search(r"for \S+, \S+, \S+, and \S+ mentioned", query)


def test_needles_sit_at_distinct_depths_that_do_not_depend_on_the_haystack_size() -> None:
    # the noise sentences as essay text: one "." each
    sample = make_sample("niah_multikey_1", 3, 8192, 0, Resources(essay=noise_haystack()))

    def positions(units: int) -> list[int]:
        """Haystack sentences before each needle."""
        pieces = re.split(r"One of the special magic numbers for \S+ is: \d+\.", sample.context(units))
        return [sum(piece.count(".") for piece in pieces[: k + 1]) for k in range(len(pieces) - 1)]

    large = positions(400)
    depths = [next(d for d in DEPTHS if int(400 * d / 100) == p) for p in large]
    assert len(large) == 4 and len(set(depths)) == 4
    assert positions(40) == [int(40 * d / 100) for d in depths]
    assert sorted(_needles(sample.context(40))) == sorted(_needles(sample.context(400)))


def _resolve(text: str) -> dict[str, int]:
    """Every VAR's value, following the chain of assignments."""
    direct = dict(re.findall(r"VAR ([A-Z]+) = (\d+)", text))
    refs = dict(re.findall(r"VAR ([A-Z]+) = VAR ([A-Z]+)", text))
    values = {name: int(value) for name, value in direct.items()}
    while refs:
        resolvable = {name: source for name, source in refs.items() if source in values}
        assert resolvable, f"a chain does not resolve: {refs}"
        for name, source in resolvable.items():
            values[name] = values[source]
            del refs[name]
    return values


@pytest.mark.parametrize("length", [1024, 8192])
def test_vt_chain_is_consistent_and_the_answer_is_every_variable_holding_the_value(length: int) -> None:
    sample = make_sample("vt", 5, length, 2)
    text = sample.text(25)  # with the worked example, whose chain holds another value
    value = int(re.search(r"assigned the value (\d+) in the text above\.", sample.tail).group(1))
    holders = {name for name, held in _resolve(text).items() if held == value}
    assert holders == set(sample.expected)
    assert len(sample.expected) == 5 and all(re.fullmatch(r"[A-Z]{5}", name) for name in sample.expected)
    assert sample.answer_prefix == (  # RULER's wording since 2025 (it was "assgined")
        " Answer: According to the chain(s) of variable assignment in the text above, 5 variables are"
        f" assigned the value {value}, they are:"
    )
    assert len(re.findall(r"^VAR [A-Z]{3} = ", sample.shots, re.M)) == 5 and text.startswith(sample.shots)
    for name in sample.expected:  # each assigned exactly once, in the main text
        assert len(re.findall(rf"VAR {name} = ", sample.context(25))) == 1


@pytest.mark.parametrize("length", [2048, 8192])
def test_cwe_answer_is_the_ten_most_common_words_of_the_list(length: int) -> None:
    sample = make_sample("cwe", 1, length, 0)
    common_repeats, rare_repeats, _ = cwe_frequencies(length)
    counts = Counter(_LISTED.findall(sample.context(60)))
    assert len(sample.expected) == CWE_COMMON
    assert {counts[word] for word in sample.expected} == {common_repeats}
    assert set(counts.values()) == {common_repeats, rare_repeats}
    assert len(counts) == CWE_COMMON + 60
    assert set(counts) <= set(CWE_WORDS)  # wonderwords' nouns, adjectives and verbs, as RULER's
    # string_match_all tests substrings: no listed word may contain a common word it is not
    for word in counts:
        assert [common for common in sample.expected if common.lower() in word.lower()] in ([], [word])
    numbers = [int(n) for n in re.findall(r"(\d+)\. ", sample.context(60))]
    assert numbers == list(range(1, len(numbers) + 1))


def test_words_are_wonderwords_lists_as_ruler_reads_them() -> None:
    from wonderwords import RandomWord

    words = word_lists()
    nouns = {word.rstrip() for word in RandomWord().filter(include_categories=["nouns"])}
    assert set(words.nouns) == nouns and len(words.nouns) > 6000 and "aardvark" in words.nouns
    assert len(words.adjectives) > 900 and all(word == word.strip() for word in words.adjectives)
    assert set(words.cwe) == {*words.nouns, *words.adjectives, *(w.rstrip() for w in RandomWord().filter(
        include_categories=["verbs"]))}  # fmt: skip
    assert list(words.cwe) == sorted(words.cwe)


def test_cwe_takes_adjective_noun_pairs_past_the_word_lists() -> None:
    sample = make_sample("cwe", 2, 8192, 0)
    listed = set(_LISTED.findall(sample.context(len(CWE_WORDS) + 50)))
    pairs = listed - set(CWE_WORDS)
    assert pairs and all(_is_adjective_noun(word) for word in pairs)


def test_cwe_example_has_its_own_words_and_answer() -> None:
    sample = make_sample("cwe", 1, 8192, 0)
    example_answer = re.search(r"are: (1\. .*)\n$", sample.shots).group(1)
    example_words = _LISTED.findall(example_answer)
    assert len(example_words) == CWE_COMMON and not set(example_words) & set(sample.expected)
    listed = Counter(_LISTED.findall(sample.shots.split("Question:")[0]))
    assert {listed[word] for word in example_words} == {10}


@pytest.mark.parametrize(("length", "units"), [(256, 0), (256, 40), (4096, 300), (32768, 5000)])
def test_fwe_answer_is_the_three_most_frequent_words_after_the_dots(length: int, units: int) -> None:
    sample = make_sample("fwe", 2, length, 0)
    ranked = Counter(sample.context(units).split()).most_common()
    assert ranked[0][0] == "..."
    assert [word for word, _ in ranked[1:4]] == list(sample.expected)
    counts = [count for _, count in ranked]
    assert counts[0] > counts[1] > counts[2] > counts[3] > (counts[4] if len(counts) > 4 else 0)
    assert all(re.fullmatch(r"[a-z]{6}", word) for word in sample.expected)


def test_fwe_counts_are_rulers_zipf_counts_when_large() -> None:
    counts = fwe_counts(10_000, 200)
    assert counts[:5] == [6079, 1519, 675, 379, 243]  # int(10000 * k^-2 / zeta(2))
    assert fwe_counts(0, 8)[:5] == [4, 3, 2, 1, 0]  # nudged to stay unambiguous


# ---------------------------------------------------------------- question data


def _squad(path: Path) -> Path:
    data = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": "The Broncos defeated the Panthers in Super Bowl 50 at Levi's Stadium.",
                        "qas": [
                            {
                                "question": "Who won Super Bowl 50?",
                                "answers": [{"text": "Broncos"}, {"text": "Denver"}],
                            },
                            {"question": "Who lost?", "answers": [], "is_impossible": True},
                        ],
                    },
                    {"context": "Levi's Stadium is in Santa Clara.", "qas": []},
                ]
            },
            {"paragraphs": [{"context": f"Filler paragraph number {i}.", "qas": []} for i in range(30)]},
        ]
    }
    path.write_text(json.dumps(data))
    return path


def _hotpot(path: Path) -> Path:
    records = [
        {
            "question": f"Which river flows through city {i}?",
            "answer": f"River {i}",
            "context": [[f"City {i}", [f"City {i} lies on River {i}. ", "It is old."]], [f"Other {i}", ["Nothing."]]],
        }
        for i in range(5)
    ]
    path.write_text(json.dumps(records))
    return path


def test_qa_files_are_recognised_by_their_shape(tmp_path: Path) -> None:
    data = load_qa_data([_squad(tmp_path / "squad.json"), _hotpot(tmp_path / "hotpot.json")])
    assert set(data) == {"qa_1", "qa_2"}
    squad = data["qa_1"]
    assert len(squad.items) == 1  # the unanswerable question is left out, as RULER
    assert squad.items[0].answers == ("Broncos", "Denver")
    assert squad.documents[squad.items[0].related[0]] == "Levi's Stadium is in Santa Clara."
    hotpot = data["qa_2"]
    assert len(hotpot.items) == 5 and "City 0\nCity 0 lies on River 0. It is old." in hotpot.documents


FIXTURES = Path(__file__).parent / "fixtures"


def test_qa_reads_the_official_squad_and_hotpotqa_files(tokenizer: _Tokenizer) -> None:
    """Tiny files in the exact shapes of SQuAD 2.0's dev-v2.0.json and HotpotQA's hotpot_dev_distractor_v1.json
    (every field of theirs, values made up): read as they are, no conversion."""
    data = load_qa_data([FIXTURES / "squad-dev-v2.0-tiny.json", FIXTURES / "hotpot_dev_distractor_v1-tiny.json"])
    squad, hotpot = data["qa_1"], data["qa_2"]
    assert [item.question for item in squad.items] == [
        "Who kept the Skerry light in 1871?",
        "What fuel did the Skerry lamp burn?",
        "How many locks climb the Brannock flight?",
    ]  # the unanswerable (is_impossible) question is left out, as RULER
    assert squad.items[0].answers == ("Ada Lorne", "Lorne") and squad.items[2].answers == ("sixteen", "16")
    assert [squad.documents[d] for d in squad.items[0].related] == [
        "Until 1902 the Skerry lamp burned colza oil, then paraffin."
    ]  # the article's other paragraphs
    assert len(squad.documents) == 4
    assert len(hotpot.items) == 2 and len(hotpot.documents) == 4  # the shared paragraph once, as RULER
    first = hotpot.items[0]
    assert first.answers == ("Ada Lorne",) and len(first.gold) == 3  # every paragraph of the record
    assert "Ada Lorne\nAda Lorne was born in Brannock. She kept lights for forty years." in hotpot.documents
    resources = Resources(qa=data)
    for task in QA_TASKS:
        sample = make_sample(task, 0, 1024, 0, resources)
        prompt = build_prompt(tokenizer, sample, 1024, new_tokens=32)
        text = tokenizer.decode(prompt.ids)
        assert prompt.units == sample.max_units and len(prompt.ids) + 32 < 1024  # all documents: a short prompt
        assert text.endswith(sample.question + " Answer:") and text.count("Document ") == 4  # every document


def test_qa_prompts_hold_the_question_and_its_documents(tmp_path: Path) -> None:
    resources = Resources(qa=load_qa_data([_squad(tmp_path / "squad.json"), _hotpot(tmp_path / "hotpot.json")]))
    squad = make_sample("qa_1", 0, 4096, 0, resources)
    assert squad.expected == ("Broncos", "Denver")
    assert squad.tail.endswith("Question: Who won Super Bowl 50? Answer:")
    for units in (0, 1, 10):
        text = squad.context(units)
        assert "Super Bowl 50 at Levi's Stadium" in text and "Broncos" in text
        assert text.count("Document ") == 1 + units
    assert "Santa Clara" in squad.context(1)  # the same article's paragraphs come first, as RULER
    assert squad.max_units == 31
    hotpot = make_sample("qa_2", 0, 4096, 1, resources)
    assert hotpot.expected[0] in hotpot.context(0) and hotpot.context(0).count("Document ") == 2
    assert make_sample("qa_2", 0, 4096, 1, resources).tail == hotpot.tail
    with pytest.raises(RopextError, match="--qa-data"):
        make_sample("qa_1", 0, 4096, 0)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"version": 2}', "neither"),
        ("not json", "not JSON"),
        ('{"data": [{"paragraphs": [{"qas": []}]}]}', "has no 'context'"),
        ('[{"question": "q", "answer": "a", "context": [["t", "not a list"]]}]', "is not a list"),
        ('{"data": []}', "no answerable question"),
    ],
)
def test_qa_files_in_another_shape_are_refused(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(RopextError, match="SQuAD-style") as caught:
        load_qa_data([path])
    assert fragment in str(caught.value)


def test_two_qa_files_of_one_kind_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RopextError, match="both for qa_2"):
        load_qa_data([_hotpot(tmp_path / "a.json"), _hotpot(tmp_path / "b.json")])
    with pytest.raises(RopextError, match="does not exist"):
        load_qa_data([tmp_path / "missing.json"])


# ---------------------------------------------------------------- essay haystack


def test_essay_sentences_come_from_the_corpus_and_wrap_around(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROPEXT_CACHE_DIR", str(tmp_path / "cache"))  # datasets caches what it reads
    assert split_sentences("One. Two!  Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    assert [len(s.split()) for s in split_sentences("word " * 120)] == [50, 50, 20]
    (tmp_path / "essay.txt").write_text("Alpha beta. Gamma delta!\n\nEpsilon zeta?")
    essay = corpus_haystack(str(tmp_path / "essay.txt"), min_chars=10)
    assert essay.sentences == ("Alpha beta.", "Gamma delta!", "Epsilon zeta?")
    assert essay.take(4) == ["Alpha beta.", "Gamma delta!", "Epsilon zeta?", "Alpha beta."]
    sample = make_sample("niah_single_2", 0, 4096, 0, Resources(essay=essay))
    without_needle = re.sub(r" ?One of the special magic number.*?\.( |$)", " ", sample.context(3)).strip()
    assert without_needle == "Alpha beta. Gamma delta! Epsilon zeta?"


# ---------------------------------------------------------------- fitting prompts into a length


def test_fit_units_finds_the_largest_count_within_the_budget() -> None:
    def count(n: int) -> int:
        return 40 + 7 * n + (n * n) // 50 + (3 if n % 11 == 0 else 0)  # growing, uneven, not quite linear

    for budget in (43, 47, 500, 4096, 100_000):
        for hint in (None, 1, 300, 10_000):
            n = fit_units(count, budget, hint=hint)
            assert count(n) <= budget < count(n + 1), (budget, hint, n)
    assert fit_units(count, 42) is None
    assert fit_units(count, 100_000, max_units=12) == 12


def test_fit_units_gallops_over_units_too_small_to_add_a_token() -> None:
    calls = []

    def count(n: int) -> int:
        calls.append(n)
        return 100 + n // 1000

    assert fit_units(count, 150) == 50_999
    assert len(calls) < 40


def test_fit_units_can_stop_at_the_first_count_equal_to_the_budget() -> None:
    calls = []

    def count(n: int) -> int:  # filler characters: a token every 4 to 5 characters, plateaus between
        calls.append(n)
        return 100 + (n * 2) // 9

    assert fit_units(count, 150) == 229  # the last character of the plateau at 150 tokens
    calls.clear()
    n = fit_units(count, 150, hint=220, stop_at_budget=True)
    assert len(calls) <= 3 and count(n) == 150
    assert fit_units(lambda n: 100 + 2 * n, 151, stop_at_budget=True) == 25  # the budget is never met: the most


def _prompt_text(tokenizer: _Tokenizer, sample: TaskSample, prompt: Prompt, prefix: list[int]) -> str:
    """The prompt's text, checked to be the sample's text with its whole units and filler, tokenised as one text."""
    text = sample.text(prompt.units, prompt.shots, prompt.filler)
    assert prompt.ids == prefix + encode(tokenizer, text)  # the tokenizer's own ids for it, no joined token lists
    assert tokenizer.decode(prompt.ids) == text
    assert sample.filler is not None
    assert any(sample.filler(prompt.units, 64, skip).startswith(prompt.filler) for skip in (0, 1, 2))  # a next unit
    assert text.endswith(sample.tail) and text.startswith((sample.shots if prompt.shots else "") + sample.head)
    return text


def _assert_the_answer_stands(sample: TaskSample, prompt: Prompt) -> None:
    """The haystack with the filler after it still gives the sample's expected answer, and nothing else."""
    whole = sample.context(prompt.units)
    haystack = whole + prompt.filler
    family = SPECS[sample.task].family
    if family == "niah":
        assert "magic" not in prompt.filler  # not a needle, not a piece of one
        needles = _needles(haystack)
        assert needles == _needles(whole)
        asked = _asked_keys(sample)
        assert sorted(value for _, key, value in needles if key in asked) == sorted(sample.expected)
    elif family == "vt":
        assert "VAR" not in prompt.filler
        value = int(re.search(r"assigned the value (\d+) in the text above\.", sample.tail).group(1))
        assert {name for name, held in _resolve(haystack).items() if held == value} == set(sample.expected)
    elif family == "cwe":
        added = _LISTED.findall(prompt.filler)
        assert len(set(added)) == len(added)
        assert not any(c.lower() in word.lower() for word in added for c in sample.expected)
        counts = Counter(_LISTED.findall(haystack))
        fewest = min(counts[word] for word in sample.expected)
        assert all(count < fewest for word, count in counts.items() if word not in sample.expected)
    elif family == "fwe":
        assert set(prompt.filler) <= {" ", "."}  # dots only: the question says to ignore them
        coded = Counter(word for word in haystack.split() if word.strip(".")).most_common()
        assert [word for word, _ in coded[:3]] == list(sample.expected)
        assert coded[2][1] > (coded[3][1] if len(coded) > 3 else 0)
    else:
        assert any(answer in whole for answer in sample.expected)


@pytest.mark.parametrize("length", [1024, 2048, 4096])
@pytest.mark.parametrize("task", SYNTHETIC)
def test_prompt_and_answer_fit_the_length_within_one_token(tokenizer: _Tokenizer, task: str, length: int) -> None:
    """As RULER: prompt + tokens to generate <= L; and the prompt takes all the rest but at most one token."""
    new_tokens = SPECS[task].max_new_tokens
    budget = length - new_tokens
    hint = None
    for index in range(3):
        sample = make_sample(task, 0, length, index)
        prompt = build_prompt(tokenizer, sample, length, hint=hint, new_tokens=new_tokens)
        hint = prompt.units
        assert length - 1 <= len(prompt.ids) + new_tokens <= length, f"{task} sample {index}: {len(prompt.ids)}"
        more = [n for n in (1, 2) if len(encode(tokenizer, sample.text(prompt.units + n, prompt.shots))) <= budget]
        # every whole unit that fits, or one fewer where the retries filled closer with the next unit's start
        assert more in ([], [1]), f"{task}: {prompt.units} whole units, and {more} more would fit"
        text = _prompt_text(tokenizer, sample, prompt, [])
        assert all(value in text for value in sample.expected) or task in ("vt", "cwe", "fwe")
        _assert_the_answer_stands(sample, prompt)


@pytest.mark.parametrize("task", SYNTHETIC)
def test_prompts_are_the_length_within_one_token_with_sentencepiece_style_tokens(
    sentencepiece_tokenizer: _Tokenizer, task: str
) -> None:
    """Here the filler's first character can add several tokens (it splits a piece across the haystack's end and
    the question); the prompt then has one whole unit fewer and more filler (`prompts._RETRIES`)."""
    for length in (1024, 2048, 4096):
        for index in range(3):
            sample = make_sample(task, 1, length, index)
            new_tokens = SPECS[task].max_new_tokens
            prompt = build_prompt(sentencepiece_tokenizer, sample, length, new_tokens=new_tokens)
            fill = len(prompt.ids) + new_tokens
            assert length - 1 <= fill <= length, f"{task} at {length}, sample {index}: {len(prompt.ids)}"
            _prompt_text(sentencepiece_tokenizer, sample, prompt, [])
            _assert_the_answer_stands(sample, prompt)


def _qa_resources(folder: Path, paragraphs: int) -> Resources:
    """A SQuAD-style and a HotpotQA-style file of ``paragraphs`` word-salad paragraphs each."""
    rng = random.Random(5)

    def paragraph(i: int) -> str:
        return " ".join(rng.choice(CWE_WORDS) for _ in range(rng.randint(20, 60))) + f". Harbor {i} is old."

    squad = {"data": [{"paragraphs": [
        {"context": paragraph(i), "qas": [{"question": f"Which harbor is {i}?", "answers": [{"text": f"Harbor {i}"}]}]}
        for i in range(paragraphs)
    ]}]}  # fmt: skip
    hotpot = [
        {"question": f"Which harbor is {i}?", "answer": f"Harbor {i}", "context": [[f"Title {i}", [paragraph(i)]]]}
        for i in range(paragraphs)
    ]
    (folder / "squad.json").write_text(json.dumps(squad))
    (folder / "hotpot.json").write_text(json.dumps(hotpot))
    return Resources(qa=load_qa_data([folder / "squad.json", folder / "hotpot.json"]))


@pytest.fixture(scope="module")
def qa_resources(tmp_path_factory: pytest.TempPathFactory) -> Resources:
    """Question files with enough documents for 4k-token prompts."""
    return _qa_resources(tmp_path_factory.mktemp("qa"), 300)


@pytest.fixture(scope="module")
def newline_tokenizer(qa_resources: Resources) -> _Tokenizer:
    """A byte-level BPE with tokens for newline runs, as GPT-2's, Llama 3's and SmolLM2's have: a qa document's
    closing "\n\n" then merges with the question's."""
    texts = [" ".join(CWE_WORDS), NOISE * 5, "\n\n\n\n".join(["x"] * 50)]
    for task in QA_TASKS:
        texts.extend(make_sample(task, 99, 4096, i, qa_resources).text(20) for i in range(3))
    return _byte_level_bpe(texts)


@pytest.mark.parametrize(
    ("tokenizer_name", "task", "retries"),
    [
        ("sentencepiece_tokenizer", "niah_single_2", 1),
        ("newline_tokenizer", "qa_1", 2),
        ("newline_tokenizer", "qa_2", 2),
    ],
)
def test_the_retries_bring_prompts_the_filler_leaves_short_within_one_token(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    qa_resources: Resources,
    tokenizer_name: str,
    task: str,
    retries: int,
) -> None:
    """At the lengths where no cut of the filler after the fitted units comes within a token (SentencePiece-style
    pieces across the newline before the question; a qa document's "\n\n" merged with the question's), the
    first ``retries`` of `prompts._RETRIES` are needed, and bring the prompt within one token."""
    tokenizer = request.getfixturevalue(tokenizer_name)
    every = ruler_prompts._RETRIES

    def prompt_with(tried: tuple[tuple[int, int], ...], sample: TaskSample, length: int) -> Prompt:
        monkeypatch.setattr(ruler_prompts, "_RETRIES", tried)
        return build_prompt(tokenizer, sample, length)

    short = needed = 0
    for length in range(1024, 1224):
        sample = make_sample(task, 0, length, 0, qa_resources)
        if len(prompt_with((), sample, length).ids) >= length - 1:
            continue
        short += 1
        needed += len(prompt_with(every[: retries - 1], sample, length).ids) < length - 1
        prompt = prompt_with(every, sample, length)
        assert length - 1 <= len(prompt.ids) <= length, f"{task} at {length}: {len(prompt.ids)} tokens"
        _prompt_text(tokenizer, sample, prompt, [])
        _assert_the_answer_stands(sample, prompt)
    assert short > 0 and needed > 0  # the case occurs, and the retries before the last do not mend it


@pytest.mark.parametrize("task", QA_TASKS)
@pytest.mark.parametrize("tokenizer_name", ["tokenizer", "newline_tokenizer"])
def test_qa_prompts_are_the_length_within_one_token(
    request: pytest.FixtureRequest, tokenizer_name: str, task: str, qa_resources: Resources
) -> None:
    tokenizer = request.getfixturevalue(tokenizer_name)
    for length in (1024, 2048, 4096):
        for index in range(10):
            sample = make_sample(task, 0, length, index, qa_resources)
            prompt = build_prompt(tokenizer, sample, length, new_tokens=32)
            assert length - 1 <= len(prompt.ids) + 32 <= length, f"{task} at {length}, sample {index}"
            assert prompt.units < sample.max_units
            assert "\n\nDocument ".startswith(prompt.filler[:11])  # the next document ("" if whole units fill it)
            _prompt_text(tokenizer, sample, prompt, [])
            _assert_the_answer_stands(sample, prompt)


def test_a_qa_prompt_is_shorter_when_its_documents_run_out(tokenizer: _Tokenizer, tmp_path: Path) -> None:
    sample = make_sample("qa_1", 0, 4096, 0, _qa_resources(tmp_path, 10))
    prompt = build_prompt(tokenizer, sample, 4096)
    assert prompt.units == sample.max_units and prompt.filler == ""
    assert len(prompt.ids) < 2048


def test_filling_takes_few_tokenisations_of_the_whole_prompt(
    tokenizer: _Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filler search starts from the room left at the filler's characters per token: no character by character."""
    whole: list[int] = []

    def counting(tokenizer_: _Tokenizer, text: str) -> list[int]:
        whole[-1] += len(text) > 2000  # a whole prompt, not the worked example or the filler alone
        return encode(tokenizer_, text)

    monkeypatch.setattr(ruler_prompts, "encode", counting)
    for task in SYNTHETIC:
        hint = None
        for index in range(4):
            whole.append(0)
            prompt = build_prompt(tokenizer, make_sample(task, 3, 4096, index), 4096, hint=hint)
            hint = prompt.units
    assert max(whole) <= 12 and sum(whole) / len(whole) <= 7, whole


@pytest.mark.parametrize("task", ["niah_single_1", "niah_multikey_3", "vt", "cwe", "fwe"])
def test_a_bos_token_counts_towards_the_length(bos_tokenizer: _Tokenizer, task: str) -> None:
    prefix = special_prefix(bos_tokenizer)
    assert prefix == [bos_tokenizer.backend_tokenizer.token_to_id("<s>")]
    sample = make_sample(task, 4, 2048, 1)
    new_tokens = SPECS[task].max_new_tokens
    prompt = build_prompt(bos_tokenizer, sample, 2048, prefix, new_tokens=new_tokens)
    assert prompt.ids[0] == prefix[0] and 2047 <= len(prompt.ids) + new_tokens <= 2048
    assert 1 + len(encode(bos_tokenizer, sample.text(prompt.units + 2, prompt.shots))) + new_tokens > 2048
    _prompt_text(bos_tokenizer, sample, prompt, prefix)


def test_no_special_prefix_without_bos(tokenizer: _Tokenizer) -> None:
    assert special_prefix(tokenizer) == []


def test_the_worked_example_is_kept_only_when_it_takes_at_most_a_quarter(tokenizer: _Tokenizer) -> None:
    for length in (1024, 2048, 8192):
        sample = make_sample("vt", 0, length, 0)
        prompt = build_prompt(tokenizer, sample, length)
        assert prompt.shots == (len(encode(tokenizer, sample.shots)) <= length // 4)
    assert build_prompt(tokenizer, make_sample("vt", 0, 8192, 0), 8192).shots


def test_a_length_too_short_for_the_template_is_a_clear_error(tokenizer: _Tokenizer) -> None:
    with pytest.raises(RopextError, match=r"RULER niah_multiquery does not fit in 64 tokens.*takes \d+ tokens"):
        build_prompt(tokenizer, make_sample("niah_multiquery", 0, 64, 0), 64)
    sample = make_sample("niah_single_1", 0, 256, 0)
    build_prompt(tokenizer, sample, 256)
    with pytest.raises(RopextError, match=r"does not fit in 256 tokens.*and its answer 200 more"):
        build_prompt(tokenizer, sample, 256, new_tokens=200)  # the answer's room counts


# ---------------------------------------------------------------- batches


def test_batches_hold_prompts_of_one_length_in_sample_order() -> None:
    lengths = [8, 7, 8, 8, 6, 7, 8, 8, 7, 8]
    batches = list(equal_length_batches(range(len(lengths)), 3, lambda i: lengths[i]))
    assert batches == [[0, 2, 3], [1, 5, 8], [6, 7, 9], [4]]  # each as soon as it is full, then the rest
    assert all(len({lengths[i] for i in batch}) == 1 for batch in batches)
    assert list(equal_length_batches(range(4), 1, lambda i: 5)) == [[0], [1], [2], [3]]
    assert list(equal_length_batches([], 4, len)) == []


# ---------------------------------------------------------------- options


def test_options_store_what_results_mean_not_what_to_run() -> None:
    from ropext.evaluate.ruler.run import RulerOptions

    options = RulerOptions(lengths=(1024,), samples=3, tasks="vt,cwe", qa_data=("q.json",), batch_size=4)
    assert dataclasses.asdict(options) == {
        "lengths": (1024,),
        "samples": 3,
        "seed": 0,
        "haystack_corpus": None,
        "max_new_tokens": None,
        "chat_template": None,
        "ruler_prompts": RULER_PROMPTS,
    }
    assert (options.tasks, options.qa_data, options.batch_size) == (("vt", "cwe"), ("q.json",), 4)
    assert RulerOptions(lengths=(1024,)).tasks == ALL_TASKS
    for bad, flag in (({"samples": 0}, "--samples"), ({"batch_size": 0}, "--batch-size"),
                      ({"max_new_tokens": 0}, "--max-new-tokens")):  # fmt: skip
        with pytest.raises(RopextError, match=flag):
            RulerOptions(lengths=(1024,), **bad)


def test_needle_format_is_rulers() -> None:
    assert NEEDLE.format(type_v="numbers", key="k", value="v") == "One of the special magic numbers for k is: v."
