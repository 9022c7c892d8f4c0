"""`ropext finetune --position-skip` (PoSE) and `--short-share` (mixed short/long windows) on the tiny random
Llama through DeepSpeed's CPU accelerator: the position ids of each window, the factors the rotary module
uses for them, training, resuming and bad input."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from integration_support import (
    ORIGINAL_CONTEXT,
    CorpusFiles,
    assert_clean_error,
    assert_ok,
    run_cli,
    run_cli_subprocess,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from ropext.methods import METHODS
from ropext.model.apply import apply_scaling, rotary_modules, verify_scaling
from ropext.model.loading import load_layout
from ropext.scaling import RopeScaling
from ropext.train.data import PositionPlan, with_short_regime
from ropext.train.loss import ChunkedLossModel, _hidden_states, causal_lm_loss
from ropext.train.regimes import rows_keep_their_regime

TRAIN_LENGTH, TARGET = 128, 1024
STEPS, HALF = 8, 4


@pytest.fixture(scope="module")
def scaling(tiny_model: Path) -> RopeScaling:
    """A 1k scaling whose short factors differ from its long ones: written as transformers' longrope."""
    _, layout = load_layout(str(tiny_model))
    long = METHODS.get("yarn")(layout, TARGET)
    return dataclasses.replace(long, short_factors=tuple(1.0 + 0.05 * i for i in range(layout.pairs)))


@pytest.fixture(scope="module")
def factors(scaling: RopeScaling, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("positions") / "longrope-1k.yaml"
    scaling.save(path)
    return path


def test_skipped_window_spans_the_target_in_two_chunks_deterministically() -> None:
    plan = PositionPlan(TRAIN_LENGTH, ORIGINAL_CONTEXT, TARGET, seed=3)
    lasts, splits = set(), set()
    for sample in range(200):
        ids = plan.positions(sample)
        assert ids.shape == (TRAIN_LENGTH,) and ids.dtype == np.int64
        steps = np.diff(ids)
        jumps = np.flatnonzero(steps != 1)
        # two chunks of consecutive ids: the first from 0, the second shifted up by one skip
        assert ids[0] == 0 and len(jumps) <= 1 and (steps >= 1).all()
        assert ORIGINAL_CONTEXT <= ids[-1] <= TARGET - 1  # past the original length: longrope's long factors
        lasts.add(int(ids[-1]))
        splits.add(int(jumps[0]) if len(jumps) else -1)
        np.testing.assert_array_equal(
            ids, PositionPlan(TRAIN_LENGTH, ORIGINAL_CONTEXT, TARGET, seed=3).positions(sample)
        )
    assert len(lasts) > 50 and len(splits) > 50  # skips and split points vary from window to window
    assert max(lasts) > TARGET - 100
    other = PositionPlan(TRAIN_LENGTH, ORIGINAL_CONTEXT, TARGET, seed=4)
    assert any((other.positions(k) != plan.positions(k)).any() for k in range(5))
    np.testing.assert_array_equal(plan.batch(7, 3), np.stack([plan.positions(k) for k in (7, 8, 9)]))


def test_short_share_is_honoured_and_short_windows_keep_plain_positions() -> None:
    plan = PositionPlan(TRAIN_LENGTH, ORIGINAL_CONTEXT, TARGET, short_share=0.3, seed=0)
    short = [plan.is_short(k) for k in range(4000)]
    assert abs(np.mean(short) - 0.3) < 0.03
    for k in range(200):
        ids = plan.positions(k)
        if short[k]:
            np.testing.assert_array_equal(ids, np.arange(TRAIN_LENGTH))
        else:
            assert ids[-1] >= ORIGINAL_CONTEXT
    plain = PositionPlan(TRAIN_LENGTH, ORIGINAL_CONTEXT)
    assert not plain.active and not any(plain.is_short(k) for k in range(100))
    np.testing.assert_array_equal(plain.positions(5), np.arange(TRAIN_LENGTH))


def _expected_cos(scaling: RopeScaling, factors: tuple[float, ...], ids: np.ndarray) -> torch.Tensor:
    exponents = torch.arange(0, scaling.rotary_dim, 2, dtype=torch.float32) / scaling.rotary_dim
    inv_freq = 1.0 / (torch.tensor(factors) * scaling.rope_theta**exponents)
    angles = torch.from_numpy(ids).float()[:, None] * inv_freq[None]
    return torch.cat([angles, angles], dim=-1).cos()


def test_rotary_module_uses_long_factors_for_skipped_windows(tiny_model: Path, scaling: RopeScaling) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    apply_scaling(model, scaling)
    (_, rotary), *_ = rotary_modules(model)
    plan = PositionPlan(TRAIN_LENGTH, ORIGINAL_CONTEXT, TARGET, short_share=0.5, seed=1)
    seen = {True: 0, False: 0}
    x = torch.zeros(1, TRAIN_LENGTH, 8)
    for sample in range(8):
        ids = plan.positions(sample)
        short = plan.is_short(sample)
        seen[short] += 1
        cos, _ = rotary(x, torch.from_numpy(ids)[None])
        chosen = scaling.short_factors if short else scaling.factors
        unchosen = scaling.factors if short else scaling.short_factors
        got = cos[0] / cos[0, 0, 0]  # without longrope's attention factor (position 0: cos 0 = 1)
        assert torch.allclose(got, _expected_cos(scaling, chosen, ids), atol=1e-4), (sample, short)
        assert not torch.allclose(got, _expected_cos(scaling, unchosen, ids), atol=1e-2)
    assert seen[True] and seen[False]


def test_mixed_micro_batch_matches_each_window_alone(tiny_model: Path, scaling: RopeScaling) -> None:
    # longrope picks one factor set per forward: a micro batch of a short and a long window must train
    # each with its own factors, as if it were alone.
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    apply_scaling(model, scaling)
    module = ChunkedLossModel(model, chunk_tokens=64, original=ORIGINAL_CONTEXT)
    ids = torch.randint(0, model.config.vocab_size, (2, TRAIN_LENGTH))
    plan = PositionPlan(TRAIN_LENGTH, ORIGINAL_CONTEXT, TARGET, seed=0)
    positions = torch.stack([torch.arange(TRAIN_LENGTH), torch.from_numpy(plan.positions(0))])
    with torch.no_grad():
        together = module(ids, positions).item()
        alone = [causal_lm_loss(model, ids[i : i + 1], 64, positions[i : i + 1]).item() for i in range(2)]
        one_forward = causal_lm_loss(model, ids, 64, positions).item()
    assert together == pytest.approx(sum(alone) / 2, rel=1e-5)
    # and not what one forward of both rows (long factors for both) would give
    assert together != pytest.approx(one_forward, rel=1e-4)


def test_a_mixed_batch_runs_one_forward_with_each_rows_own_regime(tiny_model: Path, scaling: RopeScaling) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    apply_scaling(model, scaling)
    (_, rotary), *_ = rotary_modules(model)
    plan = PositionPlan(TRAIN_LENGTH, ORIGINAL_CONTEXT, TARGET, seed=0)
    # long, short, long: the short row sits between two long ones
    positions = torch.stack(
        [torch.from_numpy(plan.positions(0)), torch.arange(TRAIN_LENGTH), torch.from_numpy(plan.positions(1))]
    )
    x = torch.zeros(3, TRAIN_LENGTH, 8)
    with rows_keep_their_regime(model, ORIGINAL_CONTEXT):
        cos, sin = rotary(x, positions)
    for row in range(3):
        alone_cos, alone_sin = rotary(x[row : row + 1], positions[row : row + 1])
        assert torch.equal(cos[row], alone_cos[0]) and torch.equal(sin[row], alone_sin[0]), row
    shared, _ = rotary(x, positions)  # without the block: one regime (the long one) for every row
    assert not torch.allclose(shared[1], cos[1], atol=1e-3)
    assert "forward" not in vars(rotary)  # the class's forward is back
    forwards = []
    hook = model.model.register_forward_hook(lambda *_: forwards.append(1))
    module = ChunkedLossModel(model, chunk_tokens=64, original=ORIGINAL_CONTEXT)
    ids = torch.randint(0, model.config.vocab_size, (3, TRAIN_LENGTH), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        module(ids, positions)
    hook.remove()
    assert len(forwards) == 1  # the decoder ran once for the mixed batch


def test_skipped_windows_attend_across_the_skip(tiny_model: Path, scaling: RopeScaling) -> None:
    # transformers reads jumping position ids without an attention mask as packed sequences and masks
    # attention across the jump; PoSE needs the second chunk to see the first, at the skipped distance.
    model = apply_scaling(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), scaling)
    ids = torch.randint(0, model.config.vocab_size, (1, TRAIN_LENGTH), generator=torch.Generator().manual_seed(1))
    positions = torch.from_numpy(PositionPlan(TRAIN_LENGTH, ORIGINAL_CONTEXT, TARGET, seed=0).positions(0))[None]
    split = int(np.flatnonzero(np.diff(positions[0].numpy()) != 1)[0]) + 1
    assert 1 < split < TRAIN_LENGTH - 1
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % model.config.vocab_size  # a token of the first chunk only
    with torch.no_grad():
        before = _hidden_states(model, ids, positions)[0]
        after = _hidden_states(model, changed, positions)[0]
        # the same as transformers' own forward with a cache, where no packing is inferred
        cached = model.base_model(input_ids=ids, position_ids=positions, use_cache=True).last_hidden_state[0]
    assert not torch.allclose(before[split:], after[split:], atol=1e-4)  # the second chunk sees the change
    torch.testing.assert_close(before, cached, rtol=1e-4, atol=1e-5)


def _finetune(model: Path, corpus: Path, factors: Path, out: Path, steps: int, *extra: str | Path) -> list:
    return [
        "finetune", "--model", model, "--factors", factors, "--corpus", corpus, "--train-length", str(TRAIN_LENGTH),
        "--steps", str(steps), "--lr", "1e-3", "--out", out, *extra,
    ]  # fmt: skip


MODES = {
    # the scaling has short factors, so --short-share would default to 0.25: 0 keeps every window long
    "position-skip": ("--position-skip", "1k", "--short-share", "0"),
    "mixed": ("--position-skip", "1k", "--short-share", "0.5", "--batch-tokens", "256"),
    # YaRN has no short factors: mixed training gives it the original frequencies as its short regime
    "mixed without short factors": ("--position-skip", "1k", "--short-share", "0.5", "--batch-tokens", "256", "YARN"),
    # retrieval practice in mixed windows, at a train length that holds the needles (the last --train-length wins)
    "needles": (
        "--position-skip",
        "1k",
        "--short-share",
        "0.5",
        "--train-length",
        "256",
        "--batch-tokens",
        "512",
        "--needle-share",
        "0.5",
    ),
}


def _args(mode: str) -> tuple[str, ...]:
    return tuple(a for a in MODES[mode] if a != "YARN")


@pytest.mark.parametrize("mode", list(MODES))
def test_loss_falls_and_resume_is_bit_identical(
    mode: str, tiny_model: Path, corpus_files: CorpusFiles, factors: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    if MODES[mode][-1] == "YARN":
        _, layout = load_layout(str(tiny_model))
        factors = tmp_path / "yarn-1k.yaml"
        METHODS.get("yarn")(layout, TARGET).save(factors)
    base = _finetune(tiny_model, corpus_files.folder, factors, tmp_path, STEPS)  # --out last: replaced below
    with ThreadPoolExecutor(max_workers=2) as pool:
        # the straight run and the interrupted chain side by side (one per core)
        straight_job = pool.submit(run_cli_subprocess, *base[:-1], tmp_path / "straight", *_args(mode))
        chain = [
            run_cli_subprocess(
                *base[:-1], tmp_path / "resumed", *_args(mode), "--steps", str(HALF), "--save-every", "4"
            )
        ]
        chain.append(run_cli_subprocess(*base[:-1], tmp_path / "resumed", *_args(mode), "--resume"))
        straight = straight_job.result()
    for result in (straight, *chain):
        assert_ok(result)
    metrics = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics]
    assert len(losses) == STEPS and np.mean(losses[:3]) > np.mean(losses[-3:]) + 0.1, losses
    assert all(m["position_skip"] == TARGET for m in metrics)
    windows = sum(m["windows"] for m in metrics)
    short = sum(m["short_windows"] for m in metrics)
    assert (short == 0) if mode == "position-skip" else (0 < short < windows), (short, windows)
    resumed = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in resumed] == pytest.approx(losses, rel=1e-5)
    needles = "--needle-share" in MODES[mode]
    assert all(("needle_loss" in m) == needles for m in metrics)
    if needles:  # per step: practice windows and their answers' loss (null in a step without any)
        practice = [m["needle_windows"] for m in metrics]
        assert 0 < sum(practice) < windows, practice
        assert all((m["needle_loss"] is None) == (m["needle_windows"] == 0) for m in metrics)
        assert all(m["needle_loss"] > 0 for m in metrics if m["needle_loss"] is not None)
        expected = [None if m["needle_loss"] is None else pytest.approx(m["needle_loss"], rel=1e-5) for m in metrics]
        assert [m["needle_loss"] for m in resumed] == expected
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    provenance = (tmp_path / "straight" / "rope_scaling.yaml").read_text()
    assert "position_skip: 1024" in provenance
    options = dict(zip(_args(mode)[::2], _args(mode)[1::2], strict=True))
    assert ("short_share: 0.5" in provenance) == (options["--short-share"] == "0.5")
    assert ("short_share" in provenance) == (options["--short-share"] != "0")  # a share of 0 is left out
    assert ("needle_share: 0.5" in provenance) == needles and ("answer_weight: 1.0" in provenance) == needles
    saved = RopeScaling.load(tmp_path / "straight" / "rope_scaling.yaml")
    if MODES[mode][-1] == "YARN":  # mixed windows gave YaRN the original frequencies as its short regime
        assert saved.short_factors == (1.0,) * len(saved.factors)
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    assert rope["short_factor"] == list(saved.short_factors or saved.factors)


BAD = {
    "target below the train length": (["--position-skip", "64"], ("--position-skip 64 is below --train-length 128",)),
    "target within the original length": (["--position-skip", "200"], ("within the model's original length 256",)),
    "target above the scaling": (["--position-skip", "2k"], ("above the scaling's max_position_embeddings 1024",)),
    "share of 1": (["--position-skip", "1k", "--short-share", "1"], ("--short-share must be in [0, 1)",)),
    "negative share": (["--position-skip", "1k", "--short-share", "-0.1"], ("--short-share must be in [0, 1)",)),
    "share without skip": (
        ["--position-skip", "off", "--short-share", "0.2"],
        ("--short-share needs --position-skip TARGET",),
    ),
    "share with long windows": (
        ["--position-skip", "1k", "--short-share", "0.2", "--train-length", "512"],
        ("--train-length 512 is longer",),
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_position_options_are_one_clean_line(
    case: str, tiny_model: Path, corpus_files: CorpusFiles, factors: Path, tmp_path: Path
) -> None:
    extra, fragments = BAD[case]
    out = tmp_path / "out"
    result = run_cli(*_finetune(tiny_model, corpus_files.folder, factors, out, 3), *extra)
    assert_clean_error(result, *fragments)
    assert not out.exists()


def test_short_windows_of_a_scaling_without_short_factors_train_as_transformers_runs_the_saved_model(
    tiny_model: Path,
) -> None:
    """Mixed training gives YaRN short factors of 1; short windows then see the original frequencies with
    the scaling's one attention factor, exactly what transformers' longrope runs on short inputs."""
    _, layout = load_layout(str(tiny_model))
    yarn = METHODS.get("yarn")(layout, TARGET)
    assert yarn.short_factors is None and yarn.attention_factor > 1
    mixed = with_short_regime(yarn)
    assert mixed.short_factors == (1.0,) * len(yarn.factors)
    assert mixed.factors == yarn.factors and mixed.attention_factor == yarn.attention_factor
    assert with_short_regime(mixed) is mixed
    scaled = apply_scaling(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), mixed)
    # The original frequencies with the attention factor: what the short regime must equal.
    unstretched = dataclasses.replace(yarn, factors=(1.0,) * len(yarn.factors))
    reference = apply_scaling(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), unstretched)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    module = ChunkedLossModel(scaled, 64, ORIGINAL_CONTEXT)
    ids = torch.randint(0, plain.config.vocab_size, (2, TRAIN_LENGTH), generator=torch.Generator().manual_seed(0))
    short = torch.arange(TRAIN_LENGTH).expand(2, -1)
    long = torch.from_numpy(PositionPlan(TRAIN_LENGTH, ORIGINAL_CONTEXT, TARGET).batch(0, 2))
    with torch.no_grad():
        expected_short = causal_lm_loss(reference, ids, 64).item()
        assert module(ids, short).item() == pytest.approx(expected_short, rel=1e-5)
        assert expected_short != pytest.approx(causal_lm_loss(plain, ids, 64).item(), rel=1e-4)  # the factor acts
        # long windows use the long factors: equal to YaRN's own model on them
        yarn_model = apply_scaling(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), yarn)
        expected_long = causal_lm_loss(yarn_model, ids, 64, long).item()
        assert module(ids, long).item() == pytest.approx(expected_long, rel=1e-5)
        both = torch.stack([short[0], long[1]])
        expected = (
            causal_lm_loss(reference, ids[:1], 64).item() + causal_lm_loss(yarn_model, ids[1:], 64, long[1:]).item()
        ) / 2
        assert module(ids, both).item() == pytest.approx(expected, rel=1e-5)
    verify_scaling(scaled, mixed)
