"""The defaults of `ropext finetune`'s windows (--position-skip, --short-share, --needle-share `auto`): what
`plan_finetune` resolves them to on the tiny random Llama (original length 256), checked at the plan, where
they are decided; a run on the defaults trains and resumes in test_finetune.py."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
from integration_support import ORIGINAL_CONTEXT, CorpusFiles, assert_clean_error, run_cli

from ropext.errors import RopextError
from ropext.methods import METHODS
from ropext.model.loading import load_layout, load_tokenizer
from ropext.scaling import RopeScaling
from ropext.train.defaults import AUTO, describe, parse_position_skip, parse_share
from ropext.train.needles import NeedlePlan
from ropext.train.trainer import FinetuneRequest, Plan, plan_finetune

TARGET = 1024


@pytest.fixture(scope="module")
def factors(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """YaRN to 1k (no short factors), the same with short factors of its own, and YaRN to 512."""
    _, layout = load_layout(str(tiny_model))
    yarn = METHODS.get("yarn")(layout, TARGET)
    kept = dataclasses.replace(yarn, short_factors=(1.0,) * layout.pairs)  # what --keep-short-context gives
    folder = tmp_path_factory.mktemp("defaults")
    paths = {"yarn": folder / "yarn-1k.yaml", "kept": folder / "kept-1k.yaml", "yarn-512": folder / "yarn-512.yaml"}
    yarn.save(paths["yarn"])
    kept.save(paths["kept"])
    METHODS.get("yarn")(layout, 512).save(paths["yarn-512"])
    return paths


@pytest.fixture(scope="module")
def shortest(tiny_model: Path) -> int:
    """The shortest train length that holds retrieval practice with the tiny tokenizer (between 128 and 256)."""
    source, _ = load_layout(str(tiny_model))
    length = NeedlePlan(1, tokenizer=load_tokenizer(source)).shortest_length()
    assert 128 < length <= 256, length
    return length


def _plan(model: Path, corpus: CorpusFiles, factors: Path, out: Path, length: int, **options: object) -> Plan:
    request = FinetuneRequest(
        model=str(model), factors=factors, corpus=str(corpus.folder), train_length=length, steps=2, out=out, **options
    )
    return plan_finetune(request)


def _windows(plan: Plan) -> tuple[int | None, float, float]:
    return plan.request.position_skip, plan.request.short_share, plan.request.needle_share


CASES = {
    # name: (factors, train length, explicit options, (position_skip, short_share, needle_share))
    "short factors, short windows, room for practice": ("kept", 256, {}, (TARGET, 0.25, 0.25)),
    "no short factors": ("yarn", 256, {}, (TARGET, 0.0, 0.25)),
    "too short for practice": ("kept", 128, {}, (TARGET, 0.25, 0.0)),
    "windows longer than the original length": ("kept", 512, {}, (TARGET, 0.0, 0.25)),
    "train length at the target": ("yarn-512", 512, {}, (None, 0.0, 0.25)),
    "off": ("kept", 256, {"position_skip": None}, (None, 0.0, 0.25)),
    "explicit numbers stay": ("kept", 256, {"position_skip": 512, "short_share": 0.5, "needle_share": 0.0},
                              (512, 0.5, 0.0)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_auto_resolves_from_the_scaling_and_the_train_length(
    case: str, tiny_model: Path, corpus_files: CorpusFiles, factors: dict[str, Path], shortest: int, tmp_path: Path
) -> None:
    name, length, options, expected = CASES[case]
    plan = _plan(tiny_model, corpus_files, factors[name], tmp_path / "out", length, **options)
    assert _windows(plan) == expected
    # what the run trains with follows the resolved request
    assert (plan.positions.target, plan.positions.short_share, plan.needles.share) == expected
    assert plan.positions.original == ORIGINAL_CONTEXT
    assert (plan.scaling.short_factors is not None) == (name == "kept" or expected[1] > 0)


def test_the_request_defaults_are_the_command_line_defaults() -> None:
    request = FinetuneRequest(model="m", factors=Path("f"), corpus="c", train_length=8, steps=1, out=Path("o"))
    assert (request.position_skip, request.short_share, request.needle_share) == (AUTO, AUTO, AUTO)
    from ropext.commands.finetune_command import finetune

    defaults = {k: p.default for k, p in inspect.signature(finetune).parameters.items()}
    assert (defaults["position_skip"], defaults["short_share"], defaults["needle_share"]) == (AUTO, AUTO, AUTO)


def test_resume_identity_holds_the_resolved_numbers(
    tiny_model: Path, corpus_files: CorpusFiles, factors: dict[str, Path], tmp_path: Path
) -> None:
    plan = _plan(tiny_model, corpus_files, factors["kept"], tmp_path / "out", 256)
    settings = plan.settings()
    assert (settings["position_skip"], settings["short_share"], settings["needle_share"]) == (TARGET, 0.25, 0.25)
    assert AUTO not in json.dumps(settings)
    # plain windows chosen explicitly leave the keys out, as checkpoints written before these options have them
    plain = _plan(tiny_model, corpus_files, factors["kept"], tmp_path / "plain", 256,
                  position_skip=None, short_share=0.0, needle_share=0.0)  # fmt: skip
    assert not {"position_skip", "short_share", "needle_share"} & set(plain.settings())


def test_a_checkpoint_of_plain_windows_names_the_options_that_resume_it(
    tiny_model: Path, corpus_files: CorpusFiles, factors: dict[str, Path], tmp_path: Path
) -> None:
    """A run trained before the defaults changed (plain windows) resumed on the defaults: the error says what
    to pass."""
    from ropext.data.corpus import open_corpus

    out = tmp_path / "out"
    (out / "checkpoints" / "step-2").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step-2")
    settings = {
        "scaling": {k: v for k, v in RopeScaling.load(factors["yarn"]).to_dict().items() if k != "provenance"},
        "corpus_fingerprint": open_corpus(str(corpus_files.folder)).fingerprint,
        "train_length": 128, "seed": 0, "skip_docs": 0, "skip_length": 1,
    }  # fmt: skip
    sidecar = {"state": {"step": 2, "samples": 2, "tokens": 256, "seconds": 1.0}, "world_size": 1,
               "settings": json.loads(json.dumps(settings))}  # fmt: skip
    (out / "checkpoints" / "step-2" / "ropext.json").write_text(json.dumps(sidecar))
    command = ["finetune", "--model", tiny_model, "--factors", factors["yarn"], "--corpus", corpus_files.folder,
               "--train-length", "128", "--steps", "4", "--out", out, "--resume"]  # fmt: skip
    assert_clean_error(run_cli(*command), "position_skip off, not 1024", "resume with --position-skip off")
    # with it, the checkpoint's settings agree (the tiny tokenizer holds no practice at 128: needle share 0)
    plan = plan_finetune(
        FinetuneRequest(model=str(tiny_model), factors=factors["yarn"], corpus=str(corpus_files.folder),
                        train_length=128, steps=4, out=out, resume=True, position_skip=None)
    )  # fmt: skip
    assert plan.resume_tag == "step-2" and _windows(plan) == (None, 0.0, 0.0)


def test_option_values_parse_to_auto_off_or_numbers() -> None:
    assert parse_position_skip("auto") == AUTO and parse_position_skip("off") is None
    assert parse_position_skip("64k") == 65536 and parse_position_skip(" OFF ") is None
    assert parse_share("auto", "--needle-share") == AUTO and parse_share("0.25", "--needle-share") == 0.25
    with pytest.raises(RopextError, match=r"--needle-share must be a number in \[0, 1\) or auto, got 'most'"):
        parse_share("most", "--needle-share")
    assert describe(65536, 0.25, 0.25) == (
        "PoSE positions up to 65536, 25% of windows at short positions, retrieval practice in 25% of windows"
    )
    assert describe(None, 0.0, 0.0) == "plain positions, no retrieval practice"
    assert describe(4096, 0.0, 0.125) == "PoSE positions up to 4096, retrieval practice in 12.5% of windows"
    # the practice kinds are said when they are not the default, and only where practice is on
    assert describe(4096, 0.0, 0.125, ("single",)) == describe(4096, 0.0, 0.125)
    assert describe(None, 0.0, 0.25, ("single", "multi-value")) == (
        "plain positions, retrieval practice (single, multi-value) in 25% of windows"
    )
    assert describe(None, 0.0, 0.0, ("multi-query",)) == "plain positions, no retrieval practice"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--needle-share", "some"], "--needle-share must be a number in [0, 1) or auto, got 'some'"),
        (["--short-share", "half"], "--short-share must be a number in [0, 1) or auto, got 'half'"),
        (["--position-skip", "far"], "--position-skip"),
    ],
)
def test_bad_option_values_are_one_clean_line(
    extra: list[str], fragment: str, tiny_model: Path, corpus_files: CorpusFiles, factors: dict[str, Path],
    tmp_path: Path,
) -> None:  # fmt: skip
    out = tmp_path / "out"
    command = ["finetune", "--model", tiny_model, "--factors", factors["yarn"], "--corpus", corpus_files.folder,
               "--train-length", "128", "--steps", "2", "--out", out, *extra]  # fmt: skip
    assert_clean_error(run_cli(*command), fragment)
    assert not out.exists()
