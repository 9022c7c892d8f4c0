"""`ropext eval ruler` on the tiny Llama: the result file, resuming, batches, question data, bad input.

The tiny tokenizer spends about one token per three characters of RULER's English templates, so prompts
are 1024 tokens here (the longest template, niah_multiquery's, takes about 440).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_support import CorpusFiles, assert_clean_error, assert_ok, read_json, run_cli

from ropext.data.tokenized import encode, special_prefix
from ropext.evaluate.ruler import run as ruler_run
from ropext.evaluate.ruler.prompts import build_prompt
from ropext.evaluate.ruler.tasks import ALL_TASKS, NOISE, QA_TASKS, RULER_PROMPTS, make_sample
from ropext.model.prepared import PreparedModel, prepare_model

LENGTH = 1024
FOUR = ("niah_single_1", "vt", "cwe", "fwe")


def _ruler(model: Path, json_out: Path, *extra: str | Path, samples: int = 2) -> dict[str, Any]:
    result = run_cli(
        "eval", "ruler", "--model", model, "--lengths", str(LENGTH), "--samples", str(samples),
        "--max-new-tokens", "4", "--device", "cpu", "--json", json_out, *extra,
    )  # fmt: skip
    assert_ok(result)
    return read_json(json_out)


@pytest.fixture
def generated(monkeypatch: pytest.MonkeyPatch) -> list[list[list[int]]]:
    """Every batch of prompts handed to the model, in order."""
    batches: list[list[list[int]]] = []
    original = ruler_run.generate_batch

    def counting(prepared, prompts, max_new_tokens):
        batches.append(prompts)
        return original(prepared, prompts, max_new_tokens)

    monkeypatch.setattr(ruler_run, "generate_batch", counting)
    return batches


@pytest.fixture(scope="module")
def four_tasks(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _ruler(tiny_model, tmp_path_factory.mktemp("ruler") / "four.json", "--tasks", ",".join(FOUR))


def test_results_hold_a_score_per_task_and_the_average(four_tasks: dict[str, Any], tiny_model: Path) -> None:
    assert four_tasks["task"] == "ruler"
    assert four_tasks["model"] == str(tiny_model)
    assert four_tasks["options"] == {
        "lengths": [LENGTH], "samples": 2, "seed": 0, "haystack_corpus": None, "max_new_tokens": 4,
        "chat_template": False, "ruler_prompts": RULER_PROMPTS,
    }  # fmt: skip
    assert list(four_tasks["results"]) == [str(LENGTH)]
    outcome = four_tasks["results"][str(LENGTH)]
    assert list(outcome["tasks"]) == list(FOUR)
    for task, entry in outcome["tasks"].items():
        assert 0.0 <= entry["score"] <= 1.0
        assert len(entry["samples"]) == 2
        for sample in entry["samples"]:
            assert set(sample) == {"expected", "output", "score", "prompt_tokens"}
            assert isinstance(sample["output"], str) and sample["expected"]
            assert 0.0 <= sample["score"] <= 1.0
            assert LENGTH - 1 <= sample["prompt_tokens"] + 4 <= LENGTH, task  # prompt and answer fit
        assert entry["score"] == pytest.approx(sum(s["score"] for s in entry["samples"]) / 2)
        assert entry["max_new_tokens"] == 4 and entry["metric"] == "string_match_all"
    assert outcome["average"] == pytest.approx(sum(e["score"] for e in outcome["tasks"].values()) / len(FOUR))


def test_results_are_the_generated_samples(four_tasks: dict[str, Any], tiny_tokenizer) -> None:
    """The CLI evaluates exactly the samples the generators make for seed 0, fitted to the length."""
    prefix = special_prefix(tiny_tokenizer)
    for task, entry in four_tasks["results"][str(LENGTH)]["tasks"].items():
        for index, stored in enumerate(entry["samples"]):
            sample = make_sample(task, 0, LENGTH, index)
            assert stored["expected"] == list(sample.expected)
            prompt = build_prompt(tiny_tokenizer, sample, LENGTH, prefix, new_tokens=4)
            assert stored["prompt_tokens"] == len(prompt.ids)


def test_all_tasks_without_question_data_lists_qa_as_unavailable(tiny_model: Path, tmp_path: Path) -> None:
    document = _ruler(tiny_model, tmp_path / "all.json", "--tasks", "all", samples=1)
    tasks = document["results"][str(LENGTH)]["tasks"]
    assert list(tasks) == list(ALL_TASKS)
    for task in QA_TASKS:
        assert tasks[task]["score"] is None
        assert "--qa-data" in tasks[task]["unavailable"]
    scored = [entry["score"] for task, entry in tasks.items() if task not in QA_TASKS]
    assert all(0.0 <= s <= 1.0 for s in scored)
    assert document["results"][str(LENGTH)]["average"] == pytest.approx(sum(scored) / len(scored))


def test_a_rerun_with_an_added_task_generates_only_that_task(
    tiny_model: Path, tmp_path: Path, generated: list[list[list[int]]], tiny_tokenizer
) -> None:
    json_out = tmp_path / "resume.json"
    first = _ruler(tiny_model, json_out, "--tasks", "niah_single_1,cwe")
    assert len(generated) == 4  # 2 tasks x 2 samples, one at a time
    generated.clear()
    second = _ruler(tiny_model, json_out, "--tasks", "niah_single_1,vt,cwe")
    before, after = first["results"][str(LENGTH)]["tasks"], second["results"][str(LENGTH)]["tasks"]
    assert list(after) == ["niah_single_1", "vt", "cwe"]
    assert after["niah_single_1"] == before["niah_single_1"] and after["cwe"] == before["cwe"]  # seconds included
    assert len(generated) == 2
    assert all(tiny_tokenizer.decode(batch[0]).startswith("Memorize and track") for batch in generated)
    generated.clear()
    unchanged = json_out.read_text()
    third = _ruler(tiny_model, json_out, "--tasks", "vt")  # fewer tasks: nothing to do, nothing lost
    assert generated == [] and json_out.read_text() == unchanged and third == second


def test_a_rerun_with_other_samples_is_another_run(tiny_model: Path, tmp_path: Path) -> None:
    json_out = tmp_path / "other.json"
    _ruler(tiny_model, json_out, "--tasks", "fwe", samples=1)
    before = json_out.read_bytes()
    result = run_cli(
        "eval", "ruler", "--model", tiny_model, "--lengths", str(LENGTH), "--samples", "2", "--tasks", "fwe",
        "--max-new-tokens", "4", "--device", "cpu", "--json", json_out,
    )  # fmt: skip
    assert_clean_error(result, "different run")
    assert json_out.read_bytes() == before


@pytest.fixture
def uneven_prompts(monkeypatch: pytest.MonkeyPatch) -> dict[str, itertools.count]:
    """Samples 1, 4, 7, ... of each task fitted to 5 tokens less, so that a task's prompts have two lengths.
    Prompts are built in sample order; clear the counters returned before each run."""
    original = ruler_run.build_prompt
    counters: dict[str, itertools.count] = {}

    def uneven(tokenizer, sample, length, prefix=(), hint=None, new_tokens=0):
        index = next(counters.setdefault(sample.task, itertools.count()))
        return original(tokenizer, sample, length - 5 * (index % 3 == 1), prefix, hint, new_tokens)

    monkeypatch.setattr(ruler_run, "build_prompt", uneven)
    return counters


def test_batches_hold_prompts_of_one_length_and_results_stay_in_sample_order(
    tiny_model: Path, tmp_path: Path, generated: list[list[list[int]]], uneven_prompts: dict[str, itertools.count]
) -> None:
    tasks = ("--tasks", "niah_multikey_3,fwe")
    single = _ruler(tiny_model, tmp_path / "single.json", *tasks, samples=7)
    one_by_one = [batch[0] for batch in generated]  # each task's prompts in sample order
    generated.clear()
    uneven_prompts.clear()
    batched = _ruler(tiny_model, tmp_path / "batched.json", *tasks, "--batch-size", "3", samples=7)
    assert all(len({len(ids) for ids in batch}) == 1 for batch in generated)  # no batch is padded
    for task, first in (("niah_multikey_3", 0), ("fwe", 7)):
        prompts = one_by_one[first : first + 7]
        # Samples 1 and 4 are shorter: full batches go first, then the part-filled ones by their first sample.
        expected = [[prompts[i] for i in batch] for batch in ([0, 2, 3], [1, 4], [5, 6])]
        assert generated[first // 7 * 3 : first // 7 * 3 + 3] == expected, task
        ones, threes = (doc["results"][str(LENGTH)]["tasks"][task]["samples"] for doc in (single, batched))
        assert ones == threes  # outputs, scores and prompt lengths, in sample order
        lengths = [s["prompt_tokens"] for s in ones]
        assert lengths[1] == lengths[4] < lengths[0] and len(set(lengths)) == 2


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> PreparedModel:
    return prepare_model(str(tiny_model), None, device="cpu", dtype="fp32")


def _prompts(prepared: PreparedModel, *spans: tuple[int, int]) -> list[list[int]]:
    ids = encode(prepared.tokenizer, NOISE * 8)
    return [ids[start:end] for start, end in spans]


def test_padded_batches_give_the_answers_of_single_prompts(tiny: PreparedModel) -> None:
    prompts = _prompts(tiny, (0, 60), (3, 40), (7, 31))  # different lengths: left padding, masked
    single = [ruler_run.generate_batch(tiny, [ids], 6)[0] for ids in prompts]
    assert ruler_run.generate_batch(tiny, prompts, 6) == single


def test_a_batch_of_one_length_lets_sdpa_run_causal_without_a_mask(
    tiny: PreparedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers drops the all-ones mask, so SDPA gets ``is_causal`` (its fused kernels) instead of an
    [batch, 1, L, L] mask; a padded batch gets a mask."""
    calls: list[tuple[bool, bool]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, *args, **kwargs):
        calls.append((attn_mask is not None, bool(kwargs.get("is_causal", False))))
        return sdpa(query, key, value, attn_mask, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    ruler_run.generate_batch(tiny, _prompts(tiny, (0, 50), (9, 59)), 3)
    assert calls and not any(masked for masked, _ in calls)
    assert calls[0] == (False, True)  # the prompts' pass: causal, by the flag
    calls.clear()
    ruler_run.generate_batch(tiny, _prompts(tiny, (0, 50), (9, 55)), 3)
    assert calls[0][0]


def _question_files(folder: Path) -> tuple[Path, Path]:
    squad = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": f"Harbor {i} was built by the engineer Mira Vale in the year {1800 + i}.",
                        "qas": [{"question": f"Who built harbor {i}?", "answers": [{"text": "Mira Vale"}]}],
                    }
                    for i in range(40)
                ]
            }
        ]
    }
    hotpot = [
        {
            "question": f"Which river flows past the old mill of town {i}?",
            "answer": f"river {i}",
            "context": [[f"Town {i}", [f"Town {i} has an old mill. ", f"It stands by river {i}."]]],
        }
        for i in range(40)
    ]
    (folder / "squad.json").write_text(json.dumps(squad))
    (folder / "hotpot.json").write_text(json.dumps(hotpot))
    return folder / "squad.json", folder / "hotpot.json"


def test_question_data_given_later_fills_in_the_qa_tasks(tiny_model: Path, tmp_path: Path) -> None:
    squad, hotpot = _question_files(tmp_path)
    json_out = tmp_path / "qa.json"
    first = _ruler(tiny_model, json_out, "--tasks", "qa_1,qa_2")
    assert all("unavailable" in e for e in first["results"][str(LENGTH)]["tasks"].values())
    assert first["results"][str(LENGTH)]["average"] is None
    second = _ruler(tiny_model, json_out, "--tasks", "qa_1,qa_2", "--qa-data", squad, "--qa-data", hotpot)
    tasks = second["results"][str(LENGTH)]["tasks"]
    for task, path in (("qa_1", squad), ("qa_2", hotpot)):
        entry = tasks[task]
        assert entry["metric"] == "string_match_part" and 0.0 <= entry["score"] <= 1.0
        assert entry["data"]["path"] == str(path) and len(entry["data"]["sha256"]) == 64
        assert all(LENGTH - 1 <= s["prompt_tokens"] + 4 <= LENGTH for s in entry["samples"])
    assert tasks["qa_1"]["samples"][0]["expected"] == ["Mira Vale"]
    assert tasks["qa_2"]["samples"][0]["expected"][0].startswith("river ")


def test_essay_haystack_from_a_corpus_is_recorded(tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path) -> None:
    document = _ruler(
        tiny_model, tmp_path / "essay.json", "--tasks", "niah_single_1,niah_single_2",
        "--haystack-corpus", corpus_files.folder, samples=1,
    )  # fmt: skip
    tasks = document["results"][str(LENGTH)]["tasks"]
    assert tasks["niah_single_2"]["haystack"] == str(corpus_files.folder)
    assert "haystack" not in tasks["niah_single_1"]  # noise lines: no corpus involved
    assert document["options"]["haystack_corpus"] == str(corpus_files.folder)


def test_unknown_task_is_a_clean_error_with_a_suggestion(tiny_model: Path) -> None:
    result = run_cli("eval", "ruler", "--model", tiny_model, "--lengths", "1k", "--tasks", "vt,niah_singel_2")
    assert_clean_error(result, "niah_singel_2", "Did you mean 'niah_single_2'")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [('{"questions": []}', "neither"), ('[{"question": "q", "answer": "a"}]', "has no 'context'"), ("{", "not JSON")],
)
def test_question_data_in_the_wrong_format_is_a_clean_error(
    tiny_model: Path, tmp_path: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "questions.json"
    path.write_text(content)
    result = run_cli("eval", "ruler", "--model", tiny_model, "--lengths", "1k", "--tasks", "qa_1", "--qa-data", path)
    assert_clean_error(result, "--qa-data", "SQuAD-style", fragment)


def test_a_length_too_short_for_a_task_is_a_clean_error(tiny_model: Path, tmp_path: Path) -> None:
    result = run_cli(
        "eval", "ruler", "--model", tiny_model, "--lengths", "256", "--tasks", "niah_multiquery",
        "--device", "cpu", "--json", tmp_path / "short.json",
    )  # fmt: skip
    assert_clean_error(result, "niah_multiquery does not fit in 256 tokens")


ESSAY_TASKS = ("niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery")


def test_the_essay_tasks_default_to_the_shipped_prose_and_noise_stays_reachable(
    tiny_model: Path, tmp_path: Path, generated: list[list[list[int]]], tiny_tokenizer
) -> None:
    document = _ruler(tiny_model, tmp_path / "prose.json", "--tasks", ",".join(ESSAY_TASKS), samples=1)
    tasks = document["results"][str(LENGTH)]["tasks"]
    assert {tasks[task]["haystack"] for task in ESSAY_TASKS} == {"treasury-of-david"}
    for batch in generated:
        text = tiny_tokenizer.decode(batch[0])
        assert "The grass is green" not in text and "My Preface shall at least possess" in text  # prose
    generated.clear()
    noise = _ruler(tiny_model, tmp_path / "noise.json", "--tasks", "niah_single_2", "--haystack-corpus", "noise")
    assert noise["results"][str(LENGTH)]["tasks"]["niah_single_2"]["haystack"] == "noise"
    assert all("The grass is green. The sky is blue." in tiny_tokenizer.decode(b[0]) for b in generated)


_TEMPLATE = (
    "{% for message in messages %}<s>[{{ message['role'] }}]\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>[assistant]\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a chat template in its tokenizer."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-chat")
    shutil.copytree(tiny_model, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = _TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def test_a_chat_template_wraps_the_prompt_and_is_recorded(
    chat_model: Path, tmp_path: Path, generated: list[list[list[int]]], tiny_tokenizer
) -> None:
    """RULER's order: template opening, the task's prompt as the user turn, generation prompt, answer prefix.
    The template's tokens count towards the length."""
    document = _ruler(chat_model, tmp_path / "chat.json", "--tasks", "niah_single_1,vt", samples=1)
    assert document["options"]["chat_template"] is True
    bos = tiny_tokenizer.bos_token_id
    for batch, task in zip(generated, ("niah_single_1", "vt"), strict=True):
        ids = batch[0]
        assert ids[0] == bos and ids[1] != bos  # the template's own <s>, no second one
        text = tiny_tokenizer.decode(ids, skip_special_tokens=False)
        sample = make_sample(task, 0, LENGTH, 0)
        assert text.startswith(("<s>[user]\n" + sample.head, "<s>[user]\n" + sample.shots + sample.head))
        assert text.endswith(sample.question + "</s>\n<s>[assistant]\n" + sample.answer_prefix)
        assert LENGTH - 1 <= len(ids) + 4 <= LENGTH
    generated.clear()
    plain = _ruler(chat_model, tmp_path / "plain.json", "--tasks", "niah_single_1", "--no-chat-template", samples=1)
    assert plain["options"]["chat_template"] is False
    text = tiny_tokenizer.decode(generated[0][0], skip_special_tokens=False)
    assert "[user]" not in text and "[assistant]" not in text
    # the other choice on the same file is another run
    result = run_cli(
        "eval", "ruler", "--model", chat_model, "--lengths", str(LENGTH), "--samples", "1", "--tasks",
        "niah_single_1", "--max-new-tokens", "4", "--device", "cpu", "--json", tmp_path / "plain.json",
    )  # fmt: skip
    assert_clean_error(result, "different run")


def test_asking_for_a_chat_template_the_tokenizer_lacks_is_a_clean_error(tiny_model: Path, tmp_path: Path) -> None:
    result = run_cli(
        "eval", "ruler", "--model", tiny_model, "--lengths", str(LENGTH), "--tasks", "vt", "--chat-template",
        "--device", "cpu", "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert_clean_error(result, "--chat-template", "no chat template")
    assert not (tmp_path / "r.json").exists()


def test_a_result_file_of_earlier_prompts_is_refused_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = {
        "task": "ruler",
        "model": "m",
        "scaling": None,
        "options": {"lengths": [1024], "samples": 2, "seed": 0, "haystack_corpus": None, "max_new_tokens": None},
        "results": {"1024": {"tasks": {}, "average": None}},
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    before = path.read_bytes()
    result = run_cli(
        "eval", "ruler", "--model", tmp_path / "no-such-model", "--lengths", "1k", "--json", path
    )  # the model does not even exist: the file is checked first
    assert_clean_error(result, str(path), "earlier RULER prompts", RULER_PROMPTS, "new --json")
    assert path.read_bytes() == before
    old["options"]["ruler_prompts"] = "NVIDIA/RULER@0000000"
    (tmp_path / "ruler.json").write_text(json.dumps(old))
    result = run_cli("eval", "run", "--model", tmp_path / "none", "--tasks", "ruler", "--lengths", "1k",
                     "--json-dir", tmp_path)  # fmt: skip
    assert_clean_error(result, "NVIDIA/RULER@0000000", "new --json")


def test_the_official_question_files_run_as_they_are(tiny_model: Path, tmp_path: Path) -> None:
    """SQuAD 2.0 dev and HotpotQA dev (distractor) files, in their own shapes, enable qa_1 and qa_2."""
    fixtures = Path(__file__).parents[1] / "unit" / "fixtures"
    squad, hotpot = fixtures / "squad-dev-v2.0-tiny.json", fixtures / "hotpot_dev_distractor_v1-tiny.json"
    document = _ruler(tiny_model, tmp_path / "qa.json", "--tasks", "qa_1,qa_2", "--qa-data", squad, "--qa-data", hotpot)
    tasks = document["results"][str(LENGTH)]["tasks"]
    assert tasks["qa_1"]["samples"][0]["expected"] in (["Ada Lorne", "Lorne"], ["colza oil"], ["sixteen", "16"])
    assert tasks["qa_2"]["data"]["path"] == str(hotpot) and 0.0 <= tasks["qa_2"]["score"] <= 1.0


def _task_rows(stdout: str) -> dict[str, str]:
    """RULER task -> the text of its row (cells joined over wrapped lines), from the task table."""
    rows: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) != 3:
            current = None
            continue
        if cells[0]:
            current = cells[0] if cells[0] in ALL_TASKS else None
        if current is not None:
            rows.setdefault(current, []).append(" ".join(cells[1:]))
    return {task: " ".join(parts) for task, parts in rows.items()}


def test_ls_lists_rulers_tasks_with_the_data_they_need(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    for args in (("ls",), ("eval", "ruler", "--tasks", "help")):  # --tasks help needs no --model or --lengths
        result = run_cli(*args)
        assert_ok(result)
        rows = _task_rows(result.stdout)
        assert list(rows) == list(ALL_TASKS), args
        assert "SQuAD 2.0" in rows["qa_1"] and "--qa-data" in rows["qa_1"]
        assert "HotpotQA" in rows["qa_2"] and "--qa-data" in rows["qa_2"]
        assert "prose shipped with ropext" in rows["niah_single_2"] and "variable" in rows["vt"]
        assert not any("--qa-data" in rows[task] for task in ALL_TASKS if task not in QA_TASKS)


def test_eval_run_decides_the_chat_template_as_eval_ruler(chat_model: Path, tmp_path: Path) -> None:
    for flag, chosen in ((), True), (("--no-chat-template",), False):
        folder = tmp_path / str(chosen)
        result = run_cli(
            "eval", "run", "--model", chat_model, "--tasks", "ruler", "--lengths", str(LENGTH), "--ruler-tasks", "fwe",
            "--samples", "1", "--max-new-tokens", "4", "--device", "cpu", "--json-dir", folder, *flag,
        )  # fmt: skip
        assert_ok(result)
        assert read_json(folder / "ruler.json")["options"]["chat_template"] is chosen
