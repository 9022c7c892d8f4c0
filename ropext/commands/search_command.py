"""``ropext search``: per-pair RoPE scaling factors as YAML, closed-form at once or searched by perplexity
(docs/search.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ropext import __version__
from ropext.commands.common import console
from ropext.commands.options import DtypeOption, ModelOption, ParamOption
from ropext.errors import Interrupted, RopextError
from ropext.search.racing import DEFAULT_MARGIN, RACE_BY_DEFAULT


def search(
    method: Annotated[str, typer.Option("--method", help="A method or searcher (see `ropext ls`).")],
    model: ModelOption = None,
    target_length: Annotated[
        str | None,
        typer.Option("--target-length", "-t", help="Target context: 32768, 32k, 1m (default: 4 x the original)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write the scaling YAML (default: METHOD-TARGET.yaml).")
    ] = None,
    param: ParamOption = None,
    corpus: Annotated[
        str | None, typer.Option(help="Searchers: text whose perplexity guides the search (default: python-stdlib).")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Searchers: documents (one window each) per evaluation.")] = 5,
    skip_docs: Annotated[int, typer.Option(min=0, help="Searchers: skip this many long-enough documents first.")] = 0,
    budget: Annotated[int | None, typer.Option(min=1, help="Searchers: stop after this many evaluations.")] = None,
    seed: Annotated[int, typer.Option(help="Searchers: random seed.")] = 0,
    devices: Annotated[str | None, typer.Option(help="Searchers: e.g. cuda:0,cuda:1 (default: every GPU).")] = None,
    start_from: Annotated[
        Path | None, typer.Option("--from", help="Searchers: start from these factors (progressive extension).")
    ] = None,
    short_length: Annotated[
        str | None, typer.Option(help="Searchers: search short_factors of --from for inputs up to this length.")
    ] = None,
    journal: Annotated[Path | None, typer.Option(help="Searchers: journal file (default OUT.journal.jsonl).")] = None,
    attention_factor: Annotated[
        str | None,
        typer.Option(help="Searchers: yarn, longrope, none, a number, or search (dcis varies it, from its default)."),
    ] = None,
    max_batch_tokens: Annotated[int, typer.Option(min=1, help="Searchers: tokens per forward pass.")] = 131072,
    sdpa_backend: Annotated[
        str, typer.Option(help="Searchers: auto, cudnn, flash, efficient, math, default.")
    ] = "auto",
    critical_floor: Annotated[
        bool,
        typer.Option(
            help="Searchers: keep pairs that never turn within the original context at factor ≥ s, so no "
            "position up to the target has untrained angles (--no-critical-floor: the papers' bounds only)."
        ),
    ] = True,
    dtype: DtypeOption = "auto",
    objective: Annotated[
        str, typer.Option(help="Searchers: what scores a candidate: ppl, needle or a plugin's (see `ropext ls`).")
    ] = "ppl",
    race: Annotated[
        bool,
        typer.Option(
            help="Searchers: stop scoring a candidate once its first windows show it cannot beat the one it "
            "must beat (--no-race: every candidate on every window)."
        ),
    ] = RACE_BY_DEFAULT,
    race_margin: Annotated[
        float,
        typer.Option(help="Searchers: nats per scored token a candidate may trail by on its first windows."),
    ] = DEFAULT_MARGIN,
    keep_short_context: Annotated[
        bool,
        typer.Option(
            "--keep-short-context",
            help="Inputs up to the original context run exactly as the original model (short factors 1, "
            "attention factor 1; a searcher searches the long factors with attention factor 1).",
        ),
    ] = False,
) -> None:
    """Produce per-pair RoPE scaling factors as YAML: closed-form at once, or searched by perplexity."""
    from ropext.commands import defaults
    from ropext.lengths import parse_length
    from ropext.methods import METHODS
    from ropext.model.loading import load_layout
    from ropext.model.sdpa import check_sdpa_backend
    from ropext.paths import check_output_file
    from ropext.registry import load_plugins
    from ropext.scaling import check_scaling_file
    from ropext.search import SEARCHERS

    load_plugins()
    # An unknown method fails before a model is chosen (the default one may have to be fetched first).
    name = SEARCHERS.canonical(method) if method in SEARCHERS else METHODS.canonical(method)
    length = parse_length(target_length, "--target-length") if target_length is not None else None
    check_output_file(out, "--out")
    check_sdpa_backend(sdpa_backend)
    if keep_short_context:
        attention_factor = _short_context_attention(attention_factor, short_length)
    model = defaults.choose_model(model, start_from, "--from")
    if length is None:  # the model's config is what knows its original context
        length = defaults.search_target(load_layout(model)[1].original_max_position_embeddings)
    if out is None:
        out = defaults.search_out(name, length)
        check_output_file(out, "--out")
    if start_from is not None and start_from.resolve() == out.resolve():
        raise RopextError(
            f"--out {out} is the --from file: the search would overwrite its own starting factors; "
            "write to another file, e.g. --out " + str(out.with_name(out.stem + "-extended" + out.suffix))
        )
    if method in SEARCHERS:
        from ropext.search.engine import EngineOptions
        from ropext.search.objectives import OBJECTIVES
        from ropext.search.run import SearchRequest

        corpus = defaults.choose_corpus(corpus)
        from ropext.model.device import check_device

        chosen_devices = tuple(check_device(d, "--devices") for d in (devices or "").split(",") if d.strip())
        if start_from is not None:
            check_scaling_file(start_from, "--from file")
        journal = journal or out.with_name(out.name + ".journal.jsonl")
        check_output_file(journal, "--journal")
        request = SearchRequest(
            model=model,
            searcher=method,
            params=tuple(param or ()),
            corpus=corpus,
            target_length=length,
            samples=samples,
            skip_docs=skip_docs,
            budget=budget,
            seed=seed,
            devices=chosen_devices,
            start_from=start_from,
            short_length=parse_length(short_length, "--short-length") if short_length else None,
            attention=attention_factor,
            dtype=dtype,
            critical_floor=critical_floor,
            engine=EngineOptions(max_batch_tokens=max_batch_tokens, sdpa_backend=sdpa_backend),
            objective=OBJECTIVES.canonical(objective),  # unknown: one line with the known names, nothing loaded
            race=race,
            race_margin=race_margin,
        )
        _run_searcher(request, out, journal, keep_short_context)
        return
    chosen = METHODS.get(method)  # unknown names fail before the model is touched
    params = chosen.parse_params(param or [])
    began = time.perf_counter()
    _, layout = load_layout(model)
    scaling = chosen.run(layout, length, params).with_provenance(
        model=model, ropext_version=__version__, seconds=round(time.perf_counter() - began, 3)
    )
    if keep_short_context:
        scaling = scaling.keeping_short_context()
    scaling.save(out)
    low, high = min(scaling.factors), max(scaling.factors)
    typer.echo(
        f"wrote {out}: {scaling.method} for {layout.name}, {layout.original_max_position_embeddings} -> "
        f"{length} tokens, {len(scaling.factors)} factors in [{low:.4g}, {high:.4g}], "
        f"attention factor {scaling.attention_factor:.4g}"
    )


def _short_context_attention(attention_factor: str | None, short_length: str | None) -> str:
    """The attention spec a --keep-short-context search uses (1), or one error line for what contradicts it."""
    if short_length:
        raise RopextError(
            "--keep-short-context gives inputs up to the original context the original frequencies; "
            "--short-length searches other ones: give one of them"
        )
    if attention_factor is not None and attention_factor.strip() not in ("none", "1", "1.0"):
        raise RopextError(
            f"--keep-short-context needs attention factor 1 (transformers' longrope has one for short and long "
            f"inputs), but --attention-factor is {attention_factor}: drop one of them"
        )
    return "none"


def _run_searcher(request, out: Path, journal: Path, keep_short_context: bool = False) -> None:
    from ropext.commands.rerun import command_line
    from ropext.distributed import environment_world
    from ropext.model.loading import load_layout
    from ropext.progress import ProgressDisplay
    from ropext.search.journal import saved_evaluations
    from ropext.search.run import run_search

    source, layout = load_layout(request.model)
    _check_search_fits(request, source)
    if not environment_world().is_main:
        # Another process of a torchrun launch: it scores its share; rank 0 reports and writes the file.
        run_search(request, source, layout, journal, None)
        return
    with ProgressDisplay(f"{request.searcher} search", unit="evaluation", console=console()) as shown:

        def on_progress(done: int, expected: int, best: float) -> None:
            best_text = f"{best:.4f}" if best != float("inf") else "-"
            shown.update(done, total=max(expected, done), detail=f"best ppl {best_text}")

        try:
            scaling = run_search(request, source, layout, journal, on_progress)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted; {saved_evaluations(journal)} evaluations are saved in {journal}; to continue, "
                f"rerun the same command: {command_line()}"
            ) from None
    if keep_short_context:
        scaling = scaling.keeping_short_context()
    scaling.save(out)
    prov = scaling.provenance
    raced = prov.get("racing")
    typer.echo(
        f"wrote {out}: {request.searcher} for {request.model}, best perplexity {prov['score']:.4f} after "
        f"{prov['evaluations']} evaluations ({prov['replayed_evaluations']} replayed from {journal}"
        + (f", {raced['raced_out']} raced out" if raced else "")
        + f"), {prov['seconds']:.0f} s"
        + (" (stopped at --budget)" if prov["stopped_by_budget"] else "")
    )


def _check_search_fits(request, source) -> None:
    """A target length whose windows cannot fit on the search's device fails before the model loads."""
    from ropext.model.loading import default_device, load_config, resolve_dtype
    from ropext.model.memory import check_lengths_fit

    device = request.devices[0] if request.devices else default_device()
    lengths = [request.target_length, *([request.short_length] if request.short_length else [])]
    check_lengths_fit(lengths, load_config(source), device, resolve_dtype(request.dtype, device), "--target-length")
