"""Command-line options shared by several commands (one definition, one help text)."""

from pathlib import Path
from typing import Annotated

import typer

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Hub id, local folder, .gguf file, or built-in alias smollm2-135m (default: the model the factors "
        "file records, else smollm2-135m).",
    ),
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
