"""Command-line options shared by several commands (one definition, one help text)."""

from pathlib import Path
from typing import Annotated, Any

import typer

from ropext.errors import RopextError

ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="Hub id, local folder, .gguf file, or built-in alias smollm2-135m.")
]
FactorsOption = Annotated[Path | None, typer.Option("--factors", "-f", help="Scaling YAML from `ropext search`.")]
MethodOption = Annotated[
    str | None, typer.Option("--method", help="A closed-form method to apply instead of --factors (see `ropext ls`).")
]
TargetOption = Annotated[
    str | None, typer.Option("--target-length", "-t", help="Target context for --method: 32768, 32k, 1m.")
]
ParamOption = Annotated[
    list[str] | None, typer.Option("--param", "-p", help="Method parameter key=value (repeatable).")
]
DeviceOption = Annotated[str | None, typer.Option(help="cuda, cuda:1 or cpu; default: cuda when present.")]
DtypeOption = Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")]
MaxLenOption = Annotated[
    str | None,
    typer.Option(
        "--max-len",
        help="Instead of --lengths: the model's original context doubling up to this length, which is included "
        "(an 8k model with --max-len 48k: 8k,16k,32k,48k).",
    ),
]
JsonOption = Annotated[
    Path | None, typer.Option("--json", help="Write results here after every length; rerunning resumes.")
]


def passkey_options(lengths: tuple[int, ...], depths: str, trials: int, seed: int) -> Any:
    """PasskeyOptions from command-line values; bad depths or trials fail before any model loads."""
    from ropext.evaluate.passkey import PasskeyOptions

    try:
        depth_values = tuple(float(d) for d in depths.split(",") if d.strip())
    except ValueError:
        raise RopextError(f"--depths {depths!r}: write numbers between 0 and 1, e.g. 0,0.5,1") from None
    if not depth_values or any(not 0 <= d <= 1 for d in depth_values):
        raise RopextError(f"--depths {depths!r}: every depth must be between 0 and 1")
    if trials < 1:
        raise RopextError(f"--trials must be at least 1, got {trials}")
    return PasskeyOptions(lengths=lengths, depths=depth_values, trials=trials, seed=seed)


def ruler_options(
    lengths: tuple[int, ...],
    tasks: str,
    samples: int,
    seed: int,
    haystack_corpus: str | None,
    qa_data: list[Path] | None,
    batch_size: int,
    max_new_tokens: int | None,
    chat_template: bool | None = None,
) -> Any:
    """RulerOptions from command-line values; unreadable QA files or corpora fail before any model loads.
    ``chat_template`` None: decided by the tokenizer once the model is loaded (`resolve_chat_template`)."""
    from ropext.data.corpus import open_corpus
    from ropext.evaluate.ruler.run import RulerOptions
    from ropext.evaluate.ruler.tasks import NOISE_HAYSTACK, load_qa_data

    options = RulerOptions(
        lengths=lengths,
        samples=samples,
        seed=seed,
        haystack_corpus=haystack_corpus,
        max_new_tokens=max_new_tokens,
        chat_template=chat_template,
        tasks=tasks,
        qa_data=tuple(str(path) for path in qa_data or ()),
        batch_size=batch_size,
    )
    load_qa_data(options.qa_data)
    if haystack_corpus not in (None, NOISE_HAYSTACK):
        open_corpus(haystack_corpus)
    return options
