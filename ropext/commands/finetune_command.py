"""``ropext finetune``: fine-tune a rescaled model on DeepSpeed ZeRO-3 (see docs/finetune.md).

Heavy imports (torch, transformers, DeepSpeed) happen inside the command, so registering it costs nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from contextlib import nullcontext
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any

import typer

from ropext.commands.common import console
from ropext.commands.options import ModelOption
from ropext.commands.rerun import command_line
from ropext.errors import RopextError
from ropext.train.defaults import AUTO, AUTO_NEEDLE_SHARE, AUTO_SHORT_SHARE

LAUNCHER = "deepspeed"
LauncherRankOption = Annotated[int | None, typer.Option("--local_rank", "--local-rank", hidden=True)]
"""The ``--local_rank=N`` DeepSpeed's launcher passes; accepted and ignored (ranks come from the environment)."""


def finetune(
    factors: Annotated[Path, typer.Option("--factors", "-f", help="Scaling YAML to train with (`ropext search`).")],
    model: ModelOption = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            help="Training text: files/folder (.txt .jsonl[.gz] .parquet), hub dataset, python-stdlib (the default)."
        ),
    ] = None,
    train_length: Annotated[
        str | None,
        typer.Option("--train-length", "-t", help="Tokens per training window: 8k, 32k (default: the original)."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Optimizer steps to train to, counting resumed ones (default: 200).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for checkpoints, metrics and the final model (default: F-finetuned)."),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the DeepSpeed config's, 2e-5).")] = None,
    batch_tokens: Annotated[
        str | None,
        typer.Option(help="Tokens per micro batch and GPU, a multiple of --train-length (default: one window)."),
    ] = None,
    grad_accum: Annotated[
        int | None, typer.Option(min=1, help="Micro batches per optimizer step (default: the config's, 1).")
    ] = None,
    deepspeed: Annotated[
        Path | None,
        typer.Option("--deepspeed", help="DeepSpeed JSON config (default: recipes/deepspeed/zero3.json, built in)."),
    ] = None,
    gpus: Annotated[
        int | None, typer.Option(min=1, help="Data-parallel GPUs on this machine; above 1 runs the deepspeed launcher.")
    ] = None,
    save_every: Annotated[
        int, typer.Option(min=0, help="Save a DeepSpeed checkpoint every N steps (0: only when interrupted).")
    ] = 0,
    keep_checkpoints: Annotated[int, typer.Option(min=1, help="Keep the newest N checkpoints.")] = 1,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the document and window order.")] = 0,
    skip_docs: Annotated[
        int,
        typer.Option(min=0, help="Train after the first N documents of --skip-length+ tokens (hold out eval docs)."),
    ] = 0,
    skip_length: Annotated[
        str, typer.Option(help="Only documents this long count for --skip-docs (eval's longest --lengths).")
    ] = "1",
    attn: Annotated[str, typer.Option(help="Attention: sdpa, eager, flash_attention_2 (needs flash-attn).")] = "sdpa",
    chunk_tokens: Annotated[
        int, typer.Option(min=1, help="Positions per chunk of the loss's vocabulary projection.")
    ] = 4096,
    sdpa_backend: Annotated[
        str, typer.Option(help="SDPA kernels: auto (cuDNN first), cudnn, flash, efficient, math, default.")
    ] = "auto",
    init: Annotated[
        str, typer.Option(help="pretrained (the model's weights) or random (the config's initialisation; benchmarks).")
    ] = "pretrained",
    save_model: Annotated[
        bool, typer.Option(help="Write the final Hugging Face model folder (--no-save-model for throughput runs).")
    ] = True,
    position_skip: Annotated[
        str,
        typer.Option(
            help="PoSE: skip position ids so each window spans up to this length (64k); off: plain positions; "
            "auto: the scaling's max_position_embeddings when above the train length and the original length."
        ),
    ] = AUTO,
    short_share: Annotated[
        str,
        typer.Option(
            help="Share of windows at positions within the original length (short factors); needs --position-skip. "
            f"auto: {AUTO_SHORT_SHARE} when the scaling has its own short factors, positions are skipped and "
            "--train-length is within the original length; else 0."
        ),
    ] = AUTO,
    needle_share: Annotated[
        str,
        typer.Option(
            help="Share of windows with retrieval practice: word-number needles, a question, its answer. "
            f"auto: {AUTO_NEEDLE_SHARE} when --train-length holds them; else 0."
        ),
    ] = AUTO,
    practice: Annotated[
        str,
        typer.Option(
            help="What practice windows ask, a comma list (each window draws one): single (one code among 4 "
            "needles), multi-query (two codes in one question), multi-value (every code of a word that has 2-3). "
            "Needs --needle-share above 0 for anything but single."
        ),
    ] = "single",
    sequence_parallel: Annotated[
        int,
        typer.Option(
            min=1, help="Processes that train each window together (DeepSpeed Ulysses); --gpus must be a multiple."
        ),
    ] = 1,
    local_rank: LauncherRankOption = None,
) -> None:
    """Fine-tune a model with a RoPE scaling applied, on DeepSpeed ZeRO-3; writes a Hugging Face folder."""
    from ropext.lengths import format_length, parse_length
    from ropext.paths import check_output_folder
    from ropext.registry import load_plugins
    from ropext.train.defaults import describe, parse_position_skip, parse_share
    from ropext.train.needles import parse_practice
    from ropext.train.trainer import FinetuneRequest, Interrupted, launcher_world, plan_finetune, run_finetune

    load_plugins()
    check_output_folder(out, "--out")
    length = parse_length(train_length, "--train-length") if train_length is not None else None
    left_out = [option for option, value in _defaulted(model, corpus, length, steps, out) if value is None]
    model, corpus, length, steps, out = _with_defaults(factors, model, corpus, length, steps, out)
    request = FinetuneRequest(
        model=model,
        factors=factors,
        corpus=corpus,
        train_length=length,
        steps=steps,
        out=out,
        lr=lr,
        micro_batch=_micro_batch(batch_tokens, length),
        grad_accum=grad_accum,
        deepspeed_config=deepspeed,
        save_every=save_every,
        keep_checkpoints=keep_checkpoints,
        resume=resume,
        seed=seed,
        skip_docs=skip_docs,
        skip_length=parse_length(skip_length, "--skip-length"),
        attn=attn,
        chunk_tokens=chunk_tokens,
        init=init,
        sdpa_backend=sdpa_backend,
        save_model=save_model,
        position_skip=parse_position_skip(position_skip),
        short_share=parse_share(short_share, "--short-share"),
        needle_share=parse_share(needle_share, "--needle-share"),
        practice=parse_practice(practice),
        sequence_parallel=sequence_parallel,
    )
    world = launcher_world()
    if gpus is not None and gpus < 1:
        raise RopextError(f"--gpus must be at least 1, got {gpus}")
    if world is None and gpus is not None and gpus > 1:
        launcher = _find_launcher(gpus)
        with console().status("checking the inputs"):
            plan_finetune(request, world_size=gpus)  # bad input fails here, once, not in every process
        # The launched processes get the defaults filled in here, so they neither choose nor state them again.
        given = _defaulted(model, corpus, length, steps, out)
        filled = [f"{option}={value}" for option, value in given if option in left_out]
        sys.exit(_relaunch(launcher, gpus, filled))

    shown = console()
    is_main = world is None or world.is_main
    try:
        with shown.status(f"preparing {model} and {corpus}") if is_main else nullcontext():
            plan = plan_finetune(request, world_size=world.size if world is not None else 1)
        if is_main:  # the windows as resolved (the defaults are chosen from the scaling and the train length)
            chosen = plan.request
            shown.print(
                "training windows: "
                + describe(chosen.position_skip, chosen.short_share, chosen.needle_share, chosen.practice),
                highlight=False,
                soft_wrap=True,  # one line in a log, too
            )
        result = run_finetune(plan, world, shown)
    except _out_of_memory() as err:
        raise RopextError(
            f"out of GPU memory ({str(err).splitlines()[0][:120]}); use a shorter --train-length, a smaller "
            "--batch-tokens, --chunk-tokens 1024, more GPUs, or ZeRO-3 offload in the DeepSpeed config"
        ) from None
    except (Interrupted, KeyboardInterrupt) as err:
        # Exit 130 like any interrupted command, stating what was saved and the command that continues
        # (typer would turn a KeyboardInterrupt into a silent exit status here).
        if is_main:
            if isinstance(err, Interrupted):  # a checkpoint was saved: --resume continues from it
                message = f"{err}; to continue, run: {command_line(['--resume'])}"
            else:
                said = str(err) or "interrupted before training started; nothing was saved"
                message = f"{said}; to start again, rerun: {command_line()}"
            print(f"error: {message}", file=sys.stderr)
        sys.exit(130)
    if result.world.is_main:
        started = f" (resumed at step {result.first_step})" if result.first_step else ""
        loss = f", last loss {result.last_loss:.4f}" if result.last_loss is not None else ""
        trained = (
            f"{result.state.step} steps{started} at {format_length(length)} tokens, "
            f"{result.state.tokens} tokens trained{loss}"
        )
        if save_model:
            typer.echo(
                f"wrote {out}: {trained}; load it with `ropext eval ppl --model {out}` or transformers' from_pretrained"
            )
        else:
            typer.echo(f"trained {trained}; metrics in {out / 'metrics.jsonl'} (--no-save-model: no model folder)")


def _defaulted(*values: Any) -> zip:
    """The options `_with_defaults` fills, paired with their values in its order."""
    return zip(("--model", "--corpus", "--train-length", "--steps", "--out"), values, strict=True)


def _with_defaults(
    factors: Path, model: str | None, corpus: str | None, length: int | None, steps: int | None, out: Path | None
) -> tuple[str, str, int, int, Path]:
    """What was left out, filled in (docs/finetune.md) and stated once: the model the factors file records,
    the built-in text, the model's original context, 200 steps, ``<factors stem>-finetuned``."""
    from ropext.commands import defaults
    from ropext.paths import check_output_folder
    from ropext.scaling import RopeScaling

    model = defaults.choose_model(model, factors)
    corpus = defaults.choose_corpus(corpus)
    if length is None:
        length = defaults.finetune_train_length(RopeScaling.load(factors))
    steps = defaults.finetune_steps(steps)
    if out is None:
        out = defaults.finetune_out(factors)
        check_output_folder(out, "--out")
    return model, corpus, length, steps, out


def _out_of_memory() -> type[BaseException]:
    import torch

    return torch.OutOfMemoryError


def _micro_batch(batch_tokens: str | None, length: int) -> int | None:
    from ropext.lengths import parse_length

    if batch_tokens is None:
        return None
    tokens = parse_length(batch_tokens, "--batch-tokens")
    if tokens % length:
        raise RopextError(
            f"--batch-tokens {batch_tokens} is not a multiple of --train-length ({length} tokens); "
            "each micro batch holds whole windows"
        )
    return tokens // length


def _find_launcher(gpus: int) -> str:
    """The ``deepspeed`` launcher, then the GPUs it needs; both checked before anything is loaded."""
    import torch

    launcher = shutil.which(LAUNCHER)
    if launcher is None:
        raise RopextError(
            f"--gpus {gpus} runs DeepSpeed's launcher, but the `{LAUNCHER}` executable was not found on PATH; "
            f"activate the environment where deepspeed is installed (pip install 'ropext[train]')"
        )
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < gpus:
        raise RopextError(f"--gpus {gpus} needs {gpus} CUDA GPUs; this machine has {found}")
    return launcher


def _relaunch(launcher: str, gpus: int, filled: list[str]) -> int:
    """Run this same command under ``deepspeed --num_gpus N --module ropext``; its exit status.

    The launcher starts one process per GPU with LOCAL_RANK, RANK and WORLD_SIZE set. It runs in a session
    of its own, so the terminal's Ctrl-C reaches this process alone, which hands it to the training
    processes: they finish the step, save a checkpoint (however long that takes) and exit, and the
    launcher exits with them. Sent to the launcher itself, the signal would end it at once with a
    traceback, and its helper would give the training processes 30 s to save before killing them.
    """
    from ropext.train.trainer import free_port

    arguments = [a for a in sys.argv[1:] if not a.startswith("--local_rank")] + filled
    command = [launcher, "--num_gpus", str(gpus), "--master_port", str(free_port()), "--module", "ropext", *arguments]
    process = subprocess.Popen(command, start_new_session=True)

    def forward(signum: int, frame: Any) -> None:
        ranks = _training_processes(process.pid)
        try:
            if ranks:
                for rank in ranks:
                    rank.send_signal(signum)
            else:  # still starting: no training process to save anything yet
                os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _training_processes(launcher_pid: int) -> list[Any]:
    """The launcher's descendants that run ``python -m ropext`` (the launcher's own processes name ropext
    only after ``--module``)."""
    import psutil  # a DeepSpeed dependency

    found = []
    try:
        descendants = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.Error:
        return []
    for child in descendants:
        try:
            line = child.cmdline()
        except psutil.Error:
            continue
        if any(a == "-m" and b == "ropext" for a, b in pairwise(line)):
            found.append(child)
    return found


def _accept_launcher_rank(local_rank: LauncherRankOption = None) -> None:
    # Accepted and ignored: each process reads its rank from the LOCAL_RANK / RANK environment.
    return None


def register(app: typer.Typer) -> None:
    """Add ``finetune`` to ``app``, and accept the ``--local_rank=N`` that DeepSpeed's launcher puts before the
    command (``python -m ropext --local_rank=0 finetune ...``) when a user runs ``deepspeed --module ropext``."""
    app.command()(finetune)
    if app.registered_callback is None:
        app.callback()(_accept_launcher_rank)
