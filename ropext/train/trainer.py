"""Fine-tuning a rescaled model on DeepSpeed ZeRO-3: planning (every check that can fail on bad input, before
any model is loaded), the training loop, checkpoints, resuming, metrics and the final Hugging Face folder.

One process per GPU (or one on the CPU). Everything that can be wrong with the input is found by
`plan_finetune`, which the command runs before it starts the launcher or DeepSpeed; `run_finetune` then
runs in every process.

Output folder (``--out``)::

    metrics.jsonl           one JSON line per optimizer step
    checkpoints/latest      DeepSpeed's pointer to the newest checkpoint
    checkpoints/step-N/     a DeepSpeed checkpoint (weights, optimizer, data position) + ropext.json
    config.json, model.safetensors, tokenizer files, rope_scaling.yaml   the fine-tuned model, at the end
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ropext import __version__
from ropext.distributed import World
from ropext.distributed import launcher_world as launcher_world  # where `ropext finetune` looks it up
from ropext.errors import RopextError
from ropext.evaluate.nll import DEFAULT_CHUNK_TOKENS
from ropext.model.layout import RotaryLayout
from ropext.model.loading import ModelSource
from ropext.model.sdpa import check_sdpa_backend, sdpa_context
from ropext.model.sliding_attention import attention_implementation
from ropext.permissions import follow_umask
from ropext.progress import ProgressDisplay
from ropext.scaling import RopeScaling, write_text_atomic
from ropext.train import config as ds_config
from ropext.train.data import (
    PackedWindows,
    PositionPlan,
    check_fills,
    check_positions,
    training_documents,
    with_short_regime,
)
from ropext.train.defaults import (
    AUTO,
    Auto,
    resolve_needle_share,
    resolve_position_skip,
    resolve_short_share,
)
from ropext.train.needles import (
    ANSWER_WEIGHT,
    DEFAULT_PRACTICE,
    NEEDLES,
    NeedlePlan,
    check_needle_share,
    parse_practice,
)
from ropext.train.sequence_parallel import (
    SequenceGroup,
    check_heads,
    check_sequence_parallel,
    hold_window_regime,
    model_heads,
    register_ulysses,
    split_world,
)
from ropext.train.shared_memory import release_allreduce_buffer

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
FINISHED = "finished.json"
"""What a run that reached --steps ended with (steps, tokens, last loss); its presence tells a finished run
whose only other output is metrics.jsonl (--no-save-model) from one that failed before saving anything."""
SCALING_FILE = "rope_scaling.yaml"
SIDECAR = "ropext.json"
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
INITIALISATIONS = ("pretrained", "random")
_PROCESS_GROUP_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE")


@dataclass(frozen=True)
class FinetuneRequest:
    """What `ropext finetune` was asked to do (lengths already parsed to token counts)."""

    model: str
    factors: Path
    corpus: str
    train_length: int
    steps: int
    out: Path
    lr: float | None = None
    """None: the DeepSpeed config's optimizer lr."""
    micro_batch: int | None = None
    """Windows per process and micro step; None: the config's ``train_micro_batch_size_per_gpu``."""
    grad_accum: int | None = None
    """None: the config's ``gradient_accumulation_steps``."""
    deepspeed_config: Path | None = None
    """None: the built-in copy of recipes/deepspeed/zero3.json."""
    save_every: int = 0
    keep_checkpoints: int = 1
    resume: bool = False
    seed: int = 0
    skip_docs: int = 0
    skip_length: int = 1
    attn: str = "sdpa"
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    init: str = "pretrained"
    """"pretrained": the model's weights; "random": its config's random initialisation (throughput runs of a
    shape that has no checkpoint)."""
    sdpa_backend: str = "auto"
    """SDPA kernels (ropext.model.sdpa): cuDNN first by default, as for search and evaluation."""
    save_model: bool = True
    """False: no final Hugging Face folder (throughput runs); checkpoints are still written as asked."""
    position_skip: int | Auto | None = AUTO
    """PoSE: long windows' position ids span up to this length (None: 0 .. train length - 1; `AUTO`: the
    scaling's target where it lies beyond the train and original lengths, ropext/train/defaults.py)."""
    short_share: float | Auto = AUTO
    """Share of windows trained at positions within the original length (short factors); needs position_skip.
    `AUTO`: 0.25 for a scaling with short factors of its own, with position skipping, at a train length within
    the original length; else 0."""
    needle_share: float | Auto = AUTO
    """Share of windows carrying retrieval practice (ropext/train/needles.py); 0: none, plain windows.
    `AUTO`: 0.25 where the train length holds practice windows, else 0."""
    practice: tuple[str, ...] = DEFAULT_PRACTICE
    """What practice windows ask (ropext/train/needles.py `KINDS`), each window one kind drawn uniformly;
    kinds other than the default need practice on (a share above 0)."""
    sequence_parallel: int = 1
    """Processes that train each window together (ropext/train/sequence_parallel.py); the world is
    data-parallel × this."""


@dataclass
class TrainState:
    """Where a run stands; stored in every checkpoint (DeepSpeed client_state and ropext.json)."""

    step: int = 0
    """Optimizer steps done."""
    samples: int = 0
    """Training windows consumed by all processes together: the data position."""
    tokens: int = 0
    seconds: float = 0.0
    """Training time so far, across resumed runs."""


@dataclass
class Plan:
    """A checked request: everything `run_finetune` needs, computed once. Its request holds no `AUTO`: the
    defaults are resolved to the numbers the run trains with."""

    request: FinetuneRequest
    config: dict[str, Any]
    source: ModelSource
    layout: RotaryLayout
    scaling: RopeScaling
    tokenizer: Any
    windows: PackedWindows
    corpus_fingerprint: str
    world_size: int
    positions: PositionPlan
    needles: NeedlePlan
    resume_tag: str | None = None
    resume_state: TrainState | None = None

    @property
    def micro_batch(self) -> int:
        return ds_config.micro_batch(self.config)

    @property
    def grad_accum(self) -> int:
        return ds_config.grad_accum(self.config)

    @property
    def data_parallel(self) -> int:
        """Groups of processes that train different windows (each group of ``sequence_parallel`` processes)."""
        return self.world_size // self.request.sequence_parallel

    @property
    def samples_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.data_parallel

    def settings(self) -> dict[str, Any]:
        """What decides the data and the model's frequencies: a resumed run must agree on all of it."""
        scaling = {k: v for k, v in self.scaling.to_dict().items() if k != "provenance"}
        request = self.request
        return json.loads(
            json.dumps(
                {
                    "scaling": scaling,
                    "corpus_fingerprint": self.corpus_fingerprint,
                    "train_length": request.train_length,
                    "seed": request.seed,
                    "skip_docs": request.skip_docs,
                    "skip_length": request.skip_length,
                    # Only when used, so checkpoints of plain runs (written before these options) still resume.
                    **({"position_skip": request.position_skip} if request.position_skip is not None else {}),
                    **({"short_share": request.short_share} if request.short_share else {}),
                    **({"needle_share": request.needle_share} if request.needle_share else {}),
                    **({"practice": list(request.practice)} if request.practice != DEFAULT_PRACTICE else {}),
                    # ZeRO-3's shards and the data order follow the group layout.
                    **({"sequence_parallel": request.sequence_parallel} if request.sequence_parallel > 1 else {}),
                }
            )
        )


# ---------------------------------------------------------------------------------------------- planning
def plan_finetune(request: FinetuneRequest, world_size: int = 1) -> Plan:
    """Check every input and prepare the data; raises `RopextError` for anything wrong, loads no weights."""
    from ropext.data.corpus import open_corpus
    from ropext.data.tokenized import special_prefix, tokenize_corpus
    from ropext.model.loading import load_config, load_layout, load_tokenizer, materialize
    from ropext.model.prepared import choose_scaling

    _check_numbers(request)
    source_name = str(request.deepspeed_config or "the built-in DeepSpeed config")
    config = ds_config.apply_overrides(
        ds_config.load_config(request.deepspeed_config),
        source=source_name,
        steps=request.steps,
        lr=request.lr,
        micro_batch=request.micro_batch,
        grad_accum=request.grad_accum,
    )
    _check_attention(request.attn)
    check_sequence_parallel(request.sequence_parallel, world_size, request.train_length, request.attn)
    check_sdpa_backend(request.sdpa_backend)
    if request.init not in INITIALISATIONS:
        raise RopextError(f"unknown --init {request.init!r}; use one of {', '.join(INITIALISATIONS)}")
    if not request.factors.is_file():
        raise RopextError(f"factors file {request.factors} does not exist")
    source, layout = load_layout(request.model)
    if request.sequence_parallel > 1:
        heads, kv_heads = model_heads(load_config(source))
        check_heads(heads, kv_heads, request.sequence_parallel, request.model)
    scaling = choose_scaling(layout, factors=request.factors)
    assert scaling is not None
    original = scaling.original_max_position_embeddings
    # The defaults become numbers here, once: the resume identity, metrics and the saved provenance see them.
    position_skip = resolve_position_skip(
        request.position_skip, request.train_length, original, scaling.max_position_embeddings
    )
    request = replace(
        request,
        position_skip=position_skip,
        short_share=resolve_short_share(
            request.short_share, scaling.short_factors is not None, position_skip, request.train_length, original
        ),
    )
    check_positions(
        request.train_length, original, scaling.max_position_embeddings, request.position_skip, request.short_share
    )
    if request.needle_share != AUTO:
        check_needle_share(request.needle_share)
    request = replace(request, practice=parse_practice(",".join(request.practice)))  # known kinds, in order
    if request.needle_share == 0:
        _check_practice_used(request, "--needle-share 0")
    if request.short_share > 0:
        scaling = with_short_regime(scaling)
    if request.init == "pretrained":
        _check_weights(source)
    resume_tag, resume_state = _check_out(request, world_size)

    source = materialize(source)
    tokenizer = load_tokenizer(source)
    separator = tokenizer.eos_token_id
    if separator is None:
        raise RopextError(f"the tokenizer of {request.model} has no eos token to put between training documents")
    chosen_share = request.needle_share != AUTO
    if not chosen_share:  # needs the tokenizer: practice's length is counted in its tokens
        shortest = NeedlePlan(request.train_length, tokenizer=tokenizer, kinds=request.practice).shortest_length()
        request = replace(request, needle_share=resolve_needle_share(AUTO, request.train_length, shortest))
        if request.needle_share == 0:
            _check_practice_used(
                request,
                f"--needle-share auto is 0: --train-length {request.train_length} is below the {shortest} "
                "tokens these practice windows need",
            )
    assert AUTO not in (request.position_skip, request.short_share, request.needle_share), request
    needles = NeedlePlan(request.train_length, request.needle_share, request.seed, tokenizer, request.practice)
    if chosen_share:  # auto already chose practice only where it fits (counting is half a second's tokenising)
        needles.check_length()  # before the corpus is tokenised, the slow part of planning
    corpus_files = open_corpus(request.corpus)
    corpus = tokenize_corpus(tokenizer, corpus_files)
    documents = training_documents(corpus, request.skip_docs, request.skip_length)
    prefix = tuple(special_prefix(tokenizer))
    windows = PackedWindows(corpus, documents, request.train_length, int(separator), request.seed, prefix)
    check_fills(windows, ds_config.micro_batch(config), request.corpus, request.skip_docs)
    plan = Plan(
        request=request,
        config=config,
        source=source,
        layout=layout,
        scaling=scaling,
        tokenizer=tokenizer,
        windows=windows,
        corpus_fingerprint=corpus_files.fingerprint,
        world_size=world_size,
        positions=PositionPlan(
            request.train_length, original, request.position_skip, request.short_share, request.seed
        ),
        needles=needles,
        resume_tag=resume_tag,
        resume_state=resume_state,
    )
    if resume_tag is not None:
        _check_resumable(plan)
    return plan


def _check_practice_used(request: FinetuneRequest, why_off: str) -> None:
    """Kinds asked for in a run without practice would change nothing: refused rather than ignored, since
    whoever typed them expects the windows to hold them (docs/finetune.md)."""
    if request.practice != DEFAULT_PRACTICE:
        raise RopextError(
            f"--practice {','.join(request.practice)} has no effect without retrieval practice ({why_off}); "
            "pass a --needle-share above 0 (and a --train-length that holds practice windows), or leave out --practice"
        )


def _check_numbers(request: FinetuneRequest) -> None:
    if request.steps < 1:
        raise RopextError(f"--steps must be at least 1, got {request.steps}")
    if request.train_length < 2:
        raise RopextError(f"--train-length must be at least 2 tokens, got {request.train_length}")
    if request.save_every < 0:
        raise RopextError(f"--save-every must be 0 (only when interrupted) or more, got {request.save_every}")
    if request.keep_checkpoints < 1:
        raise RopextError(f"--keep-checkpoints must be at least 1, got {request.keep_checkpoints}")
    if request.chunk_tokens < 1:
        raise RopextError(f"--chunk-tokens must be at least 1, got {request.chunk_tokens}")
    if request.lr is not None and not request.lr > 0:
        raise RopextError(f"--lr must be positive, got {request.lr}")
    if request.grad_accum is not None and request.grad_accum < 1:
        raise RopextError(f"--grad-accum must be at least 1, got {request.grad_accum}")


def _check_attention(attn: str) -> None:
    import importlib.util

    import torch

    if attn not in ATTENTION_IMPLEMENTATIONS:
        raise RopextError(f"unknown --attn {attn!r}; use one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    if attn.startswith("flash_attention"):
        module = "flash_attn" if attn == "flash_attention_2" else "flash_attn_interface"
        if importlib.util.find_spec(module) is None:
            raise RopextError(f"--attn {attn} needs the {module} package (pip install 'ropext[flash]'); or use sdpa")
        if not torch.cuda.is_available():
            raise RopextError(f"--attn {attn} needs a CUDA GPU; use --attn sdpa on the CPU")


def _check_weights(source: ModelSource) -> None:
    if source.is_local and not source.gguf_file:
        folder = Path(source.path)
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise RopextError(f"model folder {folder} has a config but no weights (*.safetensors) to fine-tune")


def checkpoint_dir(out: Path) -> Path:
    return out / CHECKPOINTS


def latest_tag(out: Path) -> str | None:
    """The tag DeepSpeed's ``latest`` file names, if a checkpoint was completed."""
    pointer = checkpoint_dir(out) / "latest"
    return pointer.read_text().strip() if pointer.is_file() else None


def _check_out(request: FinetuneRequest, world_size: int) -> tuple[str | None, TrainState | None]:
    out = request.out
    if out.exists() and not out.is_dir():
        raise RopextError(f"--out {out} is a file; give a folder for the checkpoints and the fine-tuned model")
    if not request.resume:
        # A folder holding only the metrics of a run that failed before saving anything is started over; a
        # finished run always leaves FINISHED beside them, so its metrics are never overwritten.
        if out.is_dir() and any(p.name != METRICS for p in out.iterdir()):
            raise RopextError(
                f"--out {out} already holds files; pass --resume to continue its run, or choose a new folder"
            )
        return None, None
    tag = latest_tag(out)
    if tag is None:
        raise RopextError(f"--resume: {checkpoint_dir(out)} holds no checkpoint; run without --resume to start")
    sidecar = checkpoint_dir(out) / tag / SIDECAR
    try:
        saved = json.loads(sidecar.read_text())
        state = TrainState(**saved["state"])
    except (OSError, ValueError, KeyError, TypeError):
        raise RopextError(f"--resume: checkpoint {sidecar.parent} is incomplete (no readable {SIDECAR})") from None
    if saved.get("world_size") != world_size:
        raise RopextError(
            f"--resume: checkpoint {tag} was written by {saved.get('world_size')} process(es), this run has "
            f"{world_size}; ZeRO-3 keeps optimizer shards per process, so resume with --gpus {saved.get('world_size')}"
        )
    if state.step >= request.steps:
        raise RopextError(
            f"--resume: checkpoint {tag} is already at step {state.step}; pass --steps above {state.step} to continue"
        )
    return tag, state


def _check_resumable(plan: Plan) -> None:
    assert plan.resume_tag is not None
    saved = json.loads((checkpoint_dir(plan.request.out) / plan.resume_tag / SIDECAR).read_text())
    before, now = saved.get("settings", {}), plan.settings()
    # Keys of either side: an option the checkpoint was trained with and this run leaves out differs too.
    for key in [*now, *(k for k in before if k not in now)]:
        value = now.get(key)
        if before.get(key) == value:
            continue
        if key == "scaling":
            what = f"other factors than {plan.request.factors}"
        else:
            shown = _SHOWN.get(key, _shown)
            what = f"{key} {shown(before.get(key))}, not {shown(value)}"
        if key in _WINDOW_OPTIONS:  # the option that gives the checkpoint's windows (its default may differ)
            option = f"--{key.replace('_', '-')}"
            raise RopextError(
                f"--resume: checkpoint {plan.resume_tag} was trained with {what}; resume with "
                f"{option} {_WINDOW_OPTIONS[key](before.get(key))}, or choose a new --out"
            )
        raise RopextError(
            f"--resume: checkpoint {plan.resume_tag} was trained with {what}; resume with the same "
            "--factors, --corpus, --train-length, --seed, --skip-docs, --position-skip, --short-share, "
            "--needle-share, --practice and --sequence-parallel, "
            "or choose a new --out"
        )


def _shown(setting: Any) -> str:
    return "off" if setting is None else repr(setting)


_WINDOW_OPTIONS = {
    "position_skip": lambda value: "off" if value is None else str(value),
    "short_share": lambda value: str(value or 0),
    "needle_share": lambda value: str(value or 0),
    "practice": lambda value: ",".join(value or DEFAULT_PRACTICE),
}
"""Settings a checkpoint holds only when used: the command-line value that gives the checkpoint's (absent: off/0,
or the default practice)."""
_SHOWN = {"practice": _WINDOW_OPTIONS["practice"]}
"""Settings shown in a refusal as their command-line value rather than `_shown`'s."""


# ---------------------------------------------------------------------------------------------- training
class Interrupted(Exception):
    """Training stopped on Ctrl-C or SIGTERM after saving a checkpoint; the message says where."""


@dataclass
class FinetuneResult:
    out: Path
    state: TrainState
    first_step: int
    """The step this run started from (0, or the checkpoint's)."""
    last_loss: float | None
    world: World = field(default_factory=World)


def run_finetune(plan: Plan, world: World | None = None, console: Any = None) -> FinetuneResult:
    """Train ``plan`` in this process (one of ``world``; None: a single process without a launcher)."""
    with _process_group_env(world), warnings.catch_warnings():
        # DeepSpeed calls torch.distributed functions that torch has renamed; the warnings say nothing to users.
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"barrier\(\): using the device under current context")
        return _train(plan, world or World(), console)


@contextmanager
def _process_group_env(world: World | None) -> Iterator[None]:
    """Without a launcher, the environment torch.distributed reads, for a world of one process on a free port.
    Restored afterwards, so a later run in the same process does not mistake it for a launcher's."""
    if world is not None:
        yield
        return
    saved = {key: os.environ.get(key) for key in _PROCESS_GROUP_KEYS}
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_SIZE="1"
    )
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _init_deepspeed(world: World) -> bool:
    """Start torch.distributed through DeepSpeed; True on DeepSpeed's CPU accelerator."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    cpu = accelerator.device_name() == "cpu"
    if cpu and world.size == 1:
        # DeepSpeed compiles a shared-memory all-reduce for CPU ranks on first use (a C++ build of ~30 s);
        # a single process never reduces across ranks, so plain gloo is enough.
        compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
        if isinstance(compatible, dict):
            compatible["deepspeed_shm_comm"] = False
    if not cpu:
        accelerator.set_device(world.local_rank)
    deepspeed.init_distributed(dist_backend="gloo" if cpu else None, verbose=False)
    if cpu and world.size > 1:
        release_allreduce_buffer(world.rank)
    return cpu


def _train(plan: Plan, world: World, console: Any) -> FinetuneResult:
    import deepspeed
    import torch

    from ropext.model.apply import apply_scaling
    from ropext.model.loading import quiet_transformers
    from ropext.train.loss import ChunkedLossModel

    quiet_transformers()
    cpu = _init_deepspeed(world)
    config = ds_config.for_accelerator(plan.config, cpu)
    request = plan.request
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[ds_config.precision(config)]
    model, zero3_loading = _load_model(plan, config, dtype)
    apply_scaling(model, plan.scaling, source=str(request.factors))
    _enable_activation_checkpointing(model)
    model.config.use_cache = False  # no KV cache while training (and no warning about it per step)
    original = plan.scaling.original_max_position_embeddings if plan.positions.active else None
    mpu, sequence = _sequence_parallel(model, plan, world)
    module = ChunkedLossModel(model, request.chunk_tokens, original, sequence=sequence)
    engine, *_ = deepspeed.initialize(
        model=module, model_parameters=[p for p in module.parameters() if p.requires_grad], config=config, mpu=mpu
    )
    del zero3_loading  # transformers' ZeRO-3 loading hook is needed by from_pretrained only
    verify_after_zero3(engine.module, plan.scaling)
    engine.train()

    state = TrainState()
    if plan.resume_tag is not None:
        loaded, client = engine.load_checkpoint(str(checkpoint_dir(request.out)), tag=plan.resume_tag)
        if loaded is None or "ropext" not in (client or {}):
            raise RopextError(f"--resume: DeepSpeed could not load checkpoint {plan.resume_tag}")
        state = TrainState(**client["ropext"])
    first_step = state.step
    # Creates --out. Safe only now: init_distributed is a rendezvous that every process reaches after its
    # own plan_finetune has checked that --out was empty (or resumable).
    reporter = _Reporter(plan, world, console, state)
    last_loss: float | None = None
    try:
        with _StopOnSignal() as stop, reporter:
            while state.step < request.steps:
                began = time.perf_counter()
                loss, answers, practice = _optimizer_step(engine, plan, world, state.samples)
                # One small all-reduce per step: the mean loss over processes, whether any process was asked
                # to stop (so that all of them save the same checkpoint and stop together), and the answer
                # losses and count of the practice windows.
                summary = torch.tensor(
                    [loss, float(stop.requested), answers, practice], dtype=torch.float64, device=engine.device
                )
                torch.distributed.all_reduce(summary)
                last_loss = float(summary[0]) / world.size
                needle_loss = float(summary[2]) / float(summary[3]) if float(summary[3]) > 0 else None
                seconds = time.perf_counter() - began
                step_tokens = plan.samples_per_step * request.train_length
                state.step += 1
                state.samples += plan.samples_per_step
                state.tokens += step_tokens
                state.seconds += seconds
                reporter.step(state, last_loss, float(engine.get_lr()[0]), step_tokens / seconds, plan, needle_loss)
                if float(summary[1]) > 0:
                    tag = save_checkpoint(engine, plan, state, world)
                    raise Interrupted(
                        f"interrupted at step {state.step}; saved checkpoint {checkpoint_dir(request.out) / tag}"
                    )
                if request.save_every and state.step % request.save_every == 0:
                    tag = save_checkpoint(engine, plan, state, world)
                    reporter.note(f"step {state.step}: saved checkpoint {tag}")
        # The newest checkpoint is the end of the run whenever checkpoints are kept (periodic or resumed from).
        if (request.save_every or plan.resume_tag is not None) and latest_tag(request.out) != _tag(state.step):
            save_checkpoint(engine, plan, state, world)
        if request.save_model:
            save_pretrained(engine, model, plan, state, world)
        if world.is_main:
            finished = {"steps": state.step, "tokens": state.tokens, "last_loss": last_loss}
            (request.out / FINISHED).write_text(json.dumps({**finished, "model_saved": request.save_model}) + "\n")
    finally:
        reporter.close()
    return FinetuneResult(request.out, state, first_step, last_loss, world)


def _load_model(plan: Plan, config: dict[str, Any], dtype: Any) -> tuple[Any, Any]:
    """The model, partitioned across processes while it loads (transformers' ZeRO-3 path), so no process
    ever holds all of its weights. The returned hook object must stay alive until the engine exists."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    zero3_loading = HfDeepSpeedConfig(json.loads(json.dumps(config)))
    try:
        model_config = AutoConfig.from_pretrained(plan.source.path, **plan.source.pretrained_kwargs())
        # sdpa on a model with sliding layers becomes ropext_sdpa (no length x length mask), as in evaluation. With
        # --sequence-parallel, Ulysses wraps it too: Ulysses drops every mask, and ropext_sdpa is what still keeps
        # a sliding layer to its window then (plain sdpa would let it attend over the whole gathered window).
        attn = attention_implementation(model_config, plan.request.attn)
        if plan.request.init == "random":
            # from_config initialises under deepspeed.zero.Init too (HfDeepSpeedConfig is alive), so a model
            # larger than one GPU is created already partitioned.
            model = AutoModelForCausalLM.from_config(model_config, dtype=dtype, attn_implementation=attn)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                plan.source.path, dtype=dtype, attn_implementation=attn, **plan.source.pretrained_kwargs()
            )
    except (OSError, ValueError, KeyError, ImportError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RopextError(f"cannot load model {plan.request.model}: {text}") from None
    return model, zero3_loading


def _sequence_parallel(model: Any, plan: Plan, world: World) -> tuple[Any, SequenceGroup | None]:
    """With --sequence-parallel N > 1: DeepSpeed's Ulysses attention and groups (its ``mpu``), and this process's
    group, whose processes all use the window's RoPE regime; (None, None) otherwise."""
    size = plan.request.sequence_parallel
    if size == 1:
        return None, None
    # the implementation the model was loaded with (ropext_sdpa for sdpa on a sliding-window model): DeepSpeed
    # wraps that one, and refuses a name other than the model's
    attn = model.config._attn_implementation
    mpu = register_ulysses(model, size, plan.micro_batch, plan.request.train_length, attn)
    group = SequenceGroup(mpu.get_sequence_parallel_group(), mpu.get_sequence_parallel_rank(), size)
    # The data order (_optimizer_step) assumes DeepSpeed's layout: groups of consecutive ranks.
    assert group.rank == split_world(world.rank, world.size, size)[2], (group.rank, world.rank, size)
    hold_window_regime(model, group)
    return mpu, group


def _enable_activation_checkpointing(model: Any) -> None:
    # Non-reentrant checkpointing recomputes each decoder layer in backward; transformers renamed the method
    # (activation_checkpointing_enable, the old name warns), older 5.x releases have only the old one.
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def verify_after_zero3(module: Any, scaling: RopeScaling) -> None:
    """ZeRO-3 partitions parameters and casts them to bf16; RoPE's inv_freq is a (non-persistent) buffer and
    must come through untouched: not partitioned, still float32, still the scaling's values."""
    from ropext.model.apply import rotary_modules, verify_scaling

    for name, rotary in rotary_modules(module):
        for buffer_name, buffer in rotary.named_buffers():
            if buffer_name.endswith("inv_freq") and hasattr(buffer, "ds_id"):
                raise RopextError(f"DeepSpeed partitioned {name}.{buffer_name}; RoPE buffers must stay whole")
    verify_scaling(module, scaling)


def _optimizer_step(engine: Any, plan: Plan, world: World, samples: int) -> tuple[float, float, int]:
    """One optimizer step: ``grad_accum`` micro batches on this process; returns their mean language-model
    loss, and the sum of the mean answer losses of their practice windows and how many there were.

    Micro step m of data-parallel rank r (of d) reads samples ``samples + (m · d + r) · micro`` onwards, so the
    processes and micro steps together consume ``samples_per_step`` consecutive samples. Without sequence
    parallelism each process is its own data-parallel rank; with it, every process of a group reads the same
    windows (with their positions and practice, pure functions of the seed and the sample) and trains its shard.
    """
    import torch

    micro = plan.micro_batch
    dp_rank, dp_size, _ = split_world(world.rank, world.size, plan.request.sequence_parallel)
    total, answer_total, practice = 0.0, 0.0, 0
    for m in range(plan.grad_accum):
        first = samples + (m * dp_size + dp_rank) * micro
        windows = plan.windows.batch(first, micro)
        answers = None
        if plan.needles.active:
            windows, mask = plan.needles.batch(windows, first)
            answers = torch.from_numpy(mask).to(engine.device)
            practice += int(mask.any(axis=1).sum())
        batch = torch.from_numpy(windows).to(engine.device)
        positions = None
        if plan.positions.active:
            positions = torch.from_numpy(plan.positions.batch(first, micro)).to(engine.device)
        # The backward pass recomputes each layer's forward (activation checkpointing): it needs the same kernels.
        with sdpa_context(plan.request.sdpa_backend, str(engine.device)):
            if answers is not None:
                loss, lm, answer = engine(batch, positions, answers)
            else:
                loss = engine(batch) if positions is None else engine(batch, positions)
                lm, answer = loss, None
            engine.backward(loss)
        engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary only
        total += float(lm.detach())
        if answer is not None:
            answer_total += float(answer)
    return total / plan.grad_accum, answer_total, practice


def _tag(step: int) -> str:
    return f"step-{step}"


def save_checkpoint(engine: Any, plan: Plan, state: TrainState, world: World) -> str:
    """A DeepSpeed checkpoint (every process saves its shards) with the data position in client_state.

    ropext.json is written first and DeepSpeed's ``latest`` last, so ``latest`` never names a checkpoint
    that resuming cannot read; older checkpoints are deleted only once the new one is complete.
    """
    import torch

    folder = checkpoint_dir(plan.request.out)
    tag = _tag(state.step)
    if world.is_main:
        sidecar = {"state": asdict(state), "world_size": world.size, "settings": plan.settings()}
        write_text_atomic(folder / tag / SIDECAR, json.dumps(sidecar, indent=2) + "\n")
    torch.distributed.barrier()
    engine.save_checkpoint(str(folder), tag=tag, client_state={"ropext": asdict(state)})
    torch.distributed.barrier()
    if world.local_rank == 0:
        _prune_checkpoints(folder, keep=plan.request.keep_checkpoints)
    torch.distributed.barrier()
    return tag


def _prune_checkpoints(folder: Path, keep: int) -> None:
    tags = []
    for path in folder.glob("step-*"):
        suffix = path.name.removeprefix("step-")
        if path.is_dir() and suffix.isdigit():
            tags.append((int(suffix), path))
    for _, path in sorted(tags)[:-keep]:
        # Several nodes may prune one shared folder at once: whoever is second finds less to delete.
        shutil.rmtree(path, ignore_errors=True)


def save_pretrained(engine: Any, model: Any, plan: Plan, state: TrainState, world: World) -> None:
    """The fine-tuned model as a Hugging Face folder in ``--out``, with the scaling YAML beside it.

    Each parameter is gathered from its ZeRO-3 shards in turn (every process takes part; only the first
    keeps a CPU copy), so no GPU ever holds the whole model. The config already carries the scaling in
    ``rope_parameters`` (written by apply_scaling), so plain transformers loads the same frequencies.
    """
    import deepspeed
    import torch

    state_dict: dict[str, Any] = {}
    for name, parameter in model.named_parameters():
        with deepspeed.zero.GatheredParameters([parameter]):
            if world.is_main:
                state_dict[name] = parameter.detach().to("cpu", copy=True).contiguous()
    if world.is_main:
        out = plan.request.out
        model.config.use_cache = True
        model.save_pretrained(out, state_dict=state_dict)
        plan.tokenizer.save_pretrained(out)
        follow_umask(*out.glob("*.safetensors"))  # safetensors creates them 0600 whatever the umask
        request = plan.request
        finetuned = {
            "from_model": request.model,
            "corpus": request.corpus,
            "train_length": request.train_length,
            "steps": state.step,
            "tokens": state.tokens,
            "lr": plan.config["optimizer"]["params"]["lr"],
            "seed": request.seed,
            "skip_docs": request.skip_docs,
            "skip_length": request.skip_length,
            **({"position_skip": request.position_skip} if request.position_skip is not None else {}),
            **({"short_share": request.short_share} if request.short_share else {}),
            **(
                {
                    "needle_share": request.needle_share,
                    "practice": list(request.practice),
                    "needles": NEEDLES,
                    "answer_weight": ANSWER_WEIGHT,
                }
                if request.needle_share
                else {}
            ),
            "ropext_version": __version__,
        }
        plan.scaling.with_provenance(finetuned=finetuned).save(out / SCALING_FILE)
    torch.distributed.barrier()


class _StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current optimizer step and save a
    checkpoint; a second Ctrl-C aborts at once. A SIGTERM never aborts: DeepSpeed's launcher sends one to
    every process right after the terminal's SIGINT, and both must count as one request."""

    def __init__(self) -> None:
        self.requested = False
        self._interrupts = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt("interrupted again: stopped without saving a checkpoint")
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class _Reporter:
    """Rank 0's view: progress (``ropext.progress``: a rich bar with loss, tokens/s and ETA on a terminal, plain
    lines in a batch job's log) and metrics.jsonl, one line per step."""

    def __init__(self, plan: Plan, world: World, console: Any, state: TrainState) -> None:
        self.active = world.is_main
        self.steps = plan.request.steps
        self.path = plan.request.out / METRICS
        self.console = console
        self.shown: ProgressDisplay | None = None
        if not self.active:
            return
        plan.request.out.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(self.path, state.step)
        self.file = self.path.open("a")
        self.first_step = state.step

    def __enter__(self) -> _Reporter:
        if self.active and self.console is not None:
            self.shown = ProgressDisplay(
                "finetune", total=self.steps, completed=self.first_step, unit="step", console=self.console
            ).start()
        return self

    def step(
        self, state: TrainState, loss: float, lr: float, tokens_per_s: float, plan: Plan, needle_loss: float | None
    ) -> None:
        if not self.active:
            return
        positions = plan.positions
        record = {
            "step": state.step,
            "loss": loss,
            "lr": lr,
            "tokens": state.tokens,
            "tokens_per_s": tokens_per_s,
            "seconds": state.seconds,
            "peak_memory_gb": _peak_memory_gb(),
        }
        if positions.target is not None:
            # This step's windows (all processes): state.samples is already past them.
            first = state.samples - plan.samples_per_step
            short = sum(positions.is_short(k) for k in range(first, state.samples))
            record.update(position_skip=positions.target, short_windows=short, windows=plan.samples_per_step)
        if plan.needles.active:
            # The answers' mean NLL over this step's practice windows (null when none carried practice); the
            # loss above stays the plain language-model loss, so runs with and without practice compare.
            first = state.samples - plan.samples_per_step
            carrying = [k for k in range(first, state.samples) if plan.needles.carries(k)]
            kinds = Counter(plan.needles.kind(k) for k in carrying)
            record.update(
                needle_windows=len(carrying),
                needle_kinds={kind: kinds[kind] for kind in plan.needles.kinds},
                needle_loss=needle_loss,
                windows=plan.samples_per_step,
            )
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.shown is not None:
            self.shown.update(state.step, detail=f"loss {loss:.4f}, {tokens_per_s:,.0f} tokens/s, lr {lr:.3g}")

    def note(self, message: str) -> None:
        if self.active and self.console is not None:
            self.console.print(message, highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self.shown is not None:
            self.shown.stop()
            self.shown = None

    def close(self) -> None:
        self.__exit__()
        if self.active:
            self.file.close()


def _peak_memory_gb() -> float | None:
    """Peak GPU memory this process allocated so far (None on the CPU)."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines after ``step``: a resumed run repeats the steps its last checkpoint did not include."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(kept))
