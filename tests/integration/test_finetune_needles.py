"""`ropext finetune --needle-share` (retrieval practice) on the tiny random Llama and its tokenizer: what a
practice window holds, which windows carry it, the loss with the answers' term, and bad input. Training,
metrics and resuming through the CLI are in test_finetune_positions.py (mode "needles")."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from integration_support import ORIGINAL_CONTEXT, CorpusFiles, assert_clean_error, run_cli
from practice_support import check_practice_window
from transformers import AutoModelForCausalLM

from ropext.evaluate.passkey import NEEDLE as PASSKEY_NEEDLE
from ropext.evaluate.passkey import QUESTION as PASSKEY_QUESTION
from ropext.evaluate.ruler.tasks import NEEDLE as RULER_NEEDLE
from ropext.methods import METHODS
from ropext.model.apply import apply_scaling
from ropext.model.loading import load_layout
from ropext.scaling import RopeScaling
from ropext.search.objectives import NEEDLE_TEXT as OBJECTIVE_NEEDLE
from ropext.search.objectives import QUESTION_TEXT as OBJECTIVE_QUESTION
from ropext.train.data import PositionPlan
from ropext.train.loss import ChunkedLossModel, causal_lm_loss
from ropext.train.needles import (
    ANSWER_TEXT,
    ANSWER_WEIGHT,
    NEEDLE_TEXT,
    NEEDLES,
    QUESTION_TEXT,
    NeedlePlan,
    practice_words,
)

LENGTH, TARGET = 256, 1024


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _windows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, 500, (count, LENGTH), dtype=np.int64)


def test_a_practice_window_holds_the_needles_at_stratified_depths_then_question_and_answer(tiny_tokenizer) -> None:
    plan = NeedlePlan(LENGTH, 0.5, seed=0, tokenizer=tiny_tokenizer)
    windows = _windows(40)
    ids, answers = plan.batch(windows, 100)
    carried = [plan.carries(100 + row) for row in range(40)]
    assert 5 < sum(carried) < 35
    for row in range(40):
        assert ids[row].dtype == np.int64 and ids[row].shape == (LENGTH,)
        if not carried[row]:  # untouched: today's window, no answer tokens
            np.testing.assert_array_equal(ids[row], windows[row])
            assert not answers[row].any()
            continue
        window, practice = plan.insert(windows[row], 100 + row)
        np.testing.assert_array_equal(ids[row], window)
        assert len(set(practice.words)) == NEEDLES
        assert all(100_000 <= n <= 999_999 for n in practice.numbers)
        # the window's own text in order, with each needle spliced in at its stratified depth; question, answer
        assert check_practice_window(plan, windows[row], 100 + row, tiny_tokenizer) == practice
        (asked,) = practice.asked
        asked_word, asked_number = practice.words[asked], practice.numbers[asked]
        question = _encode(tiny_tokenizer, QUESTION_TEXT.format(word=asked_word))
        answer = _encode(tiny_tokenizer, ANSWER_TEXT.format(number=asked_number))
        assert list(window[LENGTH - len(question) - len(answer) :]) == question + answer
        assert tiny_tokenizer.decode(window[LENGTH - len(question) - len(answer) :]) == (
            f" What is the code for {asked_word}? The code for {asked_word} is {asked_number}."
        )
        assert answers[row].sum() == len(answer) and answers[row, LENGTH - len(answer) :].all()


def test_the_share_is_honoured_deterministic_and_apart_from_short_windows(tiny_tokenizer) -> None:
    plan = NeedlePlan(LENGTH, 0.3, seed=0, tokenizer=tiny_tokenizer)
    carried = np.array([plan.carries(k) for k in range(4000)])
    assert abs(carried.mean() - 0.3) < 0.03
    again = NeedlePlan(LENGTH, 0.3, seed=0, tokenizer=tiny_tokenizer)
    assert all(again.carries(k) == carried[k] for k in range(200))
    windows = _windows(8)
    first, mask = plan.batch(windows, 0)
    second, mask_again = again.batch(windows, 0)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(mask, mask_again)
    other = NeedlePlan(LENGTH, 0.3, seed=1, tokenizer=tiny_tokenizer)
    assert any(other.carries(k) != carried[k] for k in range(50))
    both = [k for k in range(200) if plan.carries(k) and other.carries(k)]
    assert both and any(
        (plan.insert(windows[0], k)[0] != other.insert(windows[0], k)[0]).any() for k in both
    )  # same window, other seed: other words, numbers or depths
    # a stream of its own: at the same share and seed, practice and short windows are drawn independently
    shorts = PositionPlan(LENGTH, ORIGINAL_CONTEXT, TARGET, short_share=0.5, seed=0)
    halves = NeedlePlan(LENGTH, 0.5, seed=0, tokenizer=tiny_tokenizer)
    agree = np.mean([shorts.is_short(k) == halves.carries(k) for k in range(2000)])
    assert 0.45 < agree < 0.55
    off = NeedlePlan(LENGTH, 0.0, seed=0, tokenizer=tiny_tokenizer)
    assert not off.active and not any(off.carries(k) for k in range(100))


def test_wording_differs_from_every_evaluation() -> None:
    ours = (NEEDLE_TEXT + QUESTION_TEXT).lower()
    for phrase in ("pass key", "magic number", "special magic"):
        assert phrase not in ours
    for theirs in (PASSKEY_NEEDLE, PASSKEY_QUESTION, RULER_NEEDLE, OBJECTIVE_NEEDLE, OBJECTIVE_QUESTION):
        assert "code for" not in theirs.lower() and "remember this" not in theirs.lower()
    words = practice_words()
    assert len(words) > 1000 and all(w.isalpha() and w.islower() for w in words)
    assert list(words) == sorted(words)


@pytest.fixture(scope="module")
def scaling(tiny_model: Path) -> RopeScaling:
    _, layout = load_layout(str(tiny_model))
    long = METHODS.get("yarn")(layout, TARGET)
    return dataclasses.replace(long, short_factors=tuple(1.0 + 0.05 * i for i in range(layout.pairs)))


def _direct_loss(model, ids: torch.Tensor, positions: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Each window alone through transformers' forward (longrope picks its factors per forward), then the
    mean over windows of (mean NLL of all next tokens + ANSWER_WEIGHT x mean NLL of the answer tokens)."""
    per_window = []
    for row in range(ids.shape[0]):
        logits = model(input_ids=ids[row : row + 1], position_ids=positions[row : row + 1]).logits[0, :-1].float()
        nll = F.cross_entropy(logits, ids[row, 1:], reduction="none")
        loss = nll.mean()
        if answers[row].any():
            loss = loss + ANSWER_WEIGHT * nll[answers[row, 1:]].mean()
        per_window.append(loss)
    return torch.stack(per_window).mean()


def test_loss_equals_a_direct_computation_in_mixed_micro_batches(
    tiny_model: Path, tiny_tokenizer, scaling: RopeScaling
) -> None:
    plan = NeedlePlan(LENGTH, 0.5, seed=0, tokenizer=tiny_tokenizer)
    carrying = [k for k in range(40) if plan.carries(k)][:2]
    plain = [k for k in range(40) if not plan.carries(k)][:2]
    samples = [carrying[0], plain[0], carrying[1], plain[1]]
    windows = _windows(4, seed=3)
    rows = [plan.batch(windows[i : i + 1], k) for i, k in enumerate(samples)]
    ids = torch.from_numpy(np.concatenate([r[0] for r in rows]))
    answers = torch.from_numpy(np.concatenate([r[1] for r in rows]))
    assert answers.any(dim=1).tolist() == [True, False, True, False]
    # a short and a long window of each kind: the micro batch runs as two forwards
    skipped = PositionPlan(LENGTH, ORIGINAL_CONTEXT, TARGET, seed=0)
    positions = torch.stack(
        [torch.arange(LENGTH), torch.from_numpy(skipped.positions(1)), torch.from_numpy(skipped.positions(2)),
         torch.arange(LENGTH)]
    )  # fmt: skip
    reference = apply_scaling(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), scaling)
    model = apply_scaling(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), scaling)
    expected = _direct_loss(reference, ids, positions, answers)
    expected.backward()
    module = ChunkedLossModel(model, chunk_tokens=100, original=ORIGINAL_CONTEXT)  # 50 positions per row and chunk
    loss, lm, answer = module(ids, positions, answers)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for (name, theirs), mine in zip(reference.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        plain_lm = module(ids, positions)  # the reported loss: the plain language-model loss, as without practice
        assert lm.item() == pytest.approx(plain_lm.item(), rel=1e-6)
        assert loss.item() == pytest.approx(lm.item() + ANSWER_WEIGHT * answer.item() / 4, rel=1e-6)
        answer_only = 0.0
        for row in (0, 2):
            logits = reference(input_ids=ids[row : row + 1], position_ids=positions[row : row + 1]).logits[0, :-1]
            answer_only += F.cross_entropy(logits[answers[row, 1:]], ids[row, 1:][answers[row, 1:]]).item()
        assert answer.item() == pytest.approx(answer_only, rel=1e-5)
        # no position ids, no scaling split: one forward, the same terms
        same, same_lm, _ = module(ids, None, answers)
        assert same_lm.item() == pytest.approx(causal_lm_loss(model, ids, 100).item(), rel=1e-6)
        assert same.item() > same_lm.item()


def test_answer_loss_falls_over_a_short_run(tiny_model: Path, tiny_tokenizer) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    module = ChunkedLossModel(model, chunk_tokens=512)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    plan = NeedlePlan(LENGTH, 0.99, seed=0, tokenizer=tiny_tokenizer)
    losses = []
    for step in range(20):
        ids, answers = plan.batch(_windows(2, seed=step), 2 * step)
        loss, _, answer = module(torch.from_numpy(ids), None, torch.from_numpy(answers))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(answer.item() / max(1, int(answers.any(axis=1).sum())))
    assert np.mean(losses[:3]) > np.mean(losses[-3:]) + 0.5, losses


def _finetune(model: Path, corpus: Path, factors: Path, out: Path, *extra: str) -> list:
    return [
        "finetune", "--model", model, "--factors", factors, "--corpus", corpus, "--train-length", str(LENGTH),
        "--steps", "3", "--out", out, *extra,
    ]  # fmt: skip


BAD = {
    "share of 1": (["--needle-share", "1"], ("--needle-share must be in [0, 1)",)),
    "negative share": (["--needle-share", "-0.2"], ("--needle-share must be in [0, 1)", "got -0.2")),
    "train length too short": (
        ["--needle-share", "0.2", "--train-length", "128"],
        ("--needle-share needs --train-length of at least ", "got 128"),
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_needle_options_are_one_clean_line(
    case: str, tiny_model: Path, tiny_tokenizer, corpus_files: CorpusFiles, scaling: RopeScaling, tmp_path: Path
) -> None:
    factors = tmp_path / "factors.yaml"
    scaling.save(factors)
    extra, fragments = BAD[case]
    out = tmp_path / "out"
    result = run_cli(*_finetune(tiny_model, corpus_files.folder, factors, out, *extra))
    assert_clean_error(result, *fragments)
    assert not out.exists()
    if case == "train length too short":  # the length named is the shortest that works
        shortest = int(result.last_stderr_line.split("at least ")[1].split()[0])
        assert shortest == NeedlePlan(128, 0.2, tokenizer=tiny_tokenizer).shortest_length()
        assert 128 < shortest <= LENGTH
        NeedlePlan(shortest, 0.2, tokenizer=tiny_tokenizer).check_length()
        with pytest.raises(Exception, match=f"at least {shortest} tokens"):
            NeedlePlan(shortest - 1, 0.2, tokenizer=tiny_tokenizer).check_length()


def test_resume_refuses_another_needle_share(
    tiny_model: Path, corpus_files: CorpusFiles, scaling: RopeScaling, tmp_path: Path
) -> None:
    from ropext.data.corpus import open_corpus

    factors = tmp_path / "factors.yaml"
    scaling.save(factors)
    out = tmp_path / "out"
    (out / "checkpoints" / "step-2").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step-2")
    settings = {
        "scaling": {k: v for k, v in scaling.to_dict().items() if k != "provenance"},
        "corpus_fingerprint": open_corpus(str(corpus_files.folder)).fingerprint,
        "train_length": LENGTH,
        "seed": 0,
        "skip_docs": 0,
        "skip_length": 1,
        "needle_share": 0.5,
    }
    sidecar = {"state": {"step": 2, "samples": 2, "tokens": 512, "seconds": 1.0}, "world_size": 1,
               "settings": json.loads(json.dumps(settings))}  # fmt: skip
    (out / "checkpoints" / "step-2" / "ropext.json").write_text(json.dumps(sidecar))
    # plain positions, as the checkpoint has (the defaults would skip positions and mix short windows)
    command = _finetune(tiny_model, corpus_files.folder, factors, out, "--resume", "--position-skip", "off")
    assert_clean_error(run_cli(*command, "--needle-share", "0.25"), "needle_share 0.5, not 0.25", "--needle-share")
    assert_clean_error(run_cli(*command, "--needle-share", "0"), "needle_share 0.5, not off", "--needle-share 0.5")
    # the default resolves to 0.25 at this train length: not the checkpoint's either
    assert_clean_error(run_cli(*command), "needle_share 0.5, not 0.25", "resume with --needle-share 0.5")
