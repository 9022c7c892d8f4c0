"""Every ``ropext ...`` command line that README.md, docs/*.md and recipes/ show parses with the real command-line
app: no unknown command, no unknown option, no value the option refuses. Nothing is run: each line is parsed
by the Click command Typer builds (``typer.main.get_command``), group by group down to the leaf's
``make_context``.

A documented line may leave out required options it does not discuss (``ropext inspect`` alone, or
``ropext export --factors F``); those are filled with a dummy value so the rest of the line is still checked.
The quick start's commands as written need no filling at all.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
import typer.main
from typer._click import exceptions as click_errors
from typer.core import TyperGroup

from ropext.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "recipes").rglob("*.*")))

PLACEHOLDER_LINES: dict[str, str] = {
    # Lines that are templates rather than command lines; each is listed with why it cannot be parsed.
    "ropext eval ppl|passkey --factors FILE": "`ppl|passkey` names two commands at once",
    "ropext eval ... --model ckpt/": "`...` stands for the subcommand (ppl, passkey or ruler)",
    "ropext eval ... --json": "`...` stands for the subcommand (ppl, passkey or ruler)",
    "ropext eval ppl --skip-docs S --max-docs D --lengths ...,L": "S, D and L stand for numbers",
    "ropext finetune --skip-docs N --skip-length L": "N and L stand for numbers",
}
ELLIPSIS = ("...", "…")
"""Stand for options shown elsewhere (``ropext finetune ... --gpus 2``): dropped, the rest is parsed.
A line that ends in an option without its value (``ropext eval ppl --corpus``) names the option: it gets a dummy
value."""
SHELL_OPERATORS = {"&", "&&", "|", "||", ";", ">", ">>", "2>", "<"}
"""Words after which a documented line is no longer the ropext command."""
DUMMY = "1"
"""Value given to a required option a documented line leaves out: valid for every required option (text, paths,
counts)."""


@dataclass(frozen=True)
class DocumentedLine:
    where: str
    """file:line of the line's start."""
    text: str
    """The command line as documented, continuations joined."""

    def arguments(self) -> list[str]:
        """What follows ``ropext`` (or ``python -m ropext``, ``--module ropext``, ``-m ropext``)."""
        words = shlex.split(self.text, comments=True)
        start = next(i for i, word in enumerate(words) if word == "ropext")
        words = words[start + 1 :]
        # the command ends where the shell goes on (`ropext ... & done`, `ropext ... 2> log`)
        end = next((i for i, word in enumerate(words) if word in SHELL_OPERATORS), len(words))
        return [word for word in words[:end] if word not in ELLIPSIS]


_INLINE = re.compile(r"`([^`]+)`")
_FENCE = re.compile(r"^\s*(```|~~~)")
_COMMAND = re.compile(
    r"^(?:[A-Z_]+=\S+\s+)*(?:ropext(?:\s|$)|\S*(?:deepspeed|torchrun|python3?)\s.*(?:-m|--module)\s+ropext\s)"
)
"""``ropext ...``, or a launcher running it as a module; environment assignments may come first."""


def _starts_command(line: str) -> bool:
    return bool(_COMMAND.match(line.strip().removeprefix("$ ")))


def _code_lines(path: Path) -> list[DocumentedLine]:
    """Command lines in fenced and indented code blocks, ``\\`` continuations joined."""
    found = []
    lines = path.read_text().splitlines()
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
            i += 1
            continue
        is_code = in_fence or line.startswith("    ")
        if is_code and _starts_command(line):
            start = i
            text = line.strip().removeprefix("$ ")
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1].rstrip() + " " + lines[i].strip()
            found.append(DocumentedLine(f"{path.relative_to(ROOT)}:{start + 1}", text))
        i += 1
    return found


def _inline_lines(path: Path) -> list[DocumentedLine]:
    """Inline code spans that are command lines (a span may wrap onto the next line of its paragraph)."""
    text = path.read_text()
    prose = []
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            prose.append("")
        else:
            prose.append("" if in_fence or line.startswith("    ") else line)
    joined = "\n".join(prose)
    found = []
    for match in _INLINE.finditer(joined):
        span = " ".join(match.group(1).split())
        if _starts_command(span):
            line = joined.count("\n", 0, match.start()) + 1
            found.append(DocumentedLine(f"{path.relative_to(ROOT)}:{line}", span))
    return found


def _config_lines(path: Path) -> list[DocumentedLine]:
    """The command a recipe begins with: a JSON ``_comment`` or a ``#`` comment line, up to its first `` (``."""
    found = []
    texts = []
    if path.suffix == ".json":
        texts = [str(value) for key, value in json.loads(path.read_text()).items() if key.startswith("_")]
    else:
        texts = [line.lstrip("# ") for line in path.read_text().splitlines() if line.lstrip().startswith("#")]
    for text in texts:
        if "ropext " in text:
            command = text[text.index("ropext ") :].split(" (")[0].strip()
            found.append(DocumentedLine(str(path.relative_to(ROOT)), command))
    return found


def documented_lines() -> list[DocumentedLine]:
    found: list[DocumentedLine] = []
    for path in DOCUMENTS:
        if path.suffix == ".md":
            found += _code_lines(path) + _inline_lines(path)
        elif path.suffix in (".json", ".yaml", ".yml", ".sh"):
            found += _config_lines(path)
    return [line for line in found if line.text not in PLACEHOLDER_LINES]


def parse_command_line(arguments: list[str]):  # -> the leaf command's click Context
    """Parse ``ropext ARGUMENTS`` as the console entry point would, without running the command."""
    command = typer.main.get_command(app)
    context = command.make_context("ropext", list(arguments))
    rest = list(arguments)
    while isinstance(command, TyperGroup):
        # Groups stop parsing at their subcommand's name: it and what follows are left in context.args.
        rest = rest[len(rest) - len(context.args) - 1 :]
        name, command, rest = command.resolve_command(context, rest)
        assert command is not None, f"no command {name!r}"
        context = command.make_context(name, list(rest), parent=context)
    return context


def parse_filling_required(arguments: list[str]):  # -> the leaf command's click Context
    """`parse_command_line`, with a dummy value for each required option or argument the line leaves out."""
    arguments = list(arguments)
    for _ in range(10):
        try:
            return parse_command_line(arguments)
        except click_errors.MissingParameter as missing:
            param = missing.param
            assert param is not None and param.required, str(missing)
            arguments += [param.opts[0], DUMMY] if param.param_type_name == "option" else [DUMMY]
        except click_errors.BadOptionUsage as bad:
            if not (arguments and bad.option_name == arguments[-1] and "requires an argument" in bad.message):
                raise
            arguments.append(DUMMY)
    raise AssertionError(f"still missing parameters after filling: {arguments}")


LINES = documented_lines()


def test_the_documentation_has_command_lines() -> None:
    # A change in the extraction that finds nothing would pass every parametrised test vacuously.
    assert len(LINES) >= 60, [line.text for line in LINES]
    texts = {line.text for line in LINES}
    assert "ropext ls" in texts
    assert any(text.startswith("ropext finetune --model M --factors F.yaml") for text in texts)  # recipes/ JSON
    assert any("--corpus books-dev.jsonl.gz --lengths 8k,16k,32k --max-docs 10" in text for text in texts)  # joined


def test_placeholder_lines_are_still_documented() -> None:
    """A listed placeholder that no document shows any more is dropped from the list."""
    everywhere = " ".join(" ".join(path.read_text().split()) for path in DOCUMENTS if path.suffix == ".md")
    assert [line for line in PLACEHOLDER_LINES if line not in everywhere] == []


@pytest.mark.parametrize("line", LINES, ids=[line.where for line in LINES])
def test_documented_command_line_parses(line: DocumentedLine) -> None:
    try:
        parse_filling_required(line.arguments())
    except (typer.Exit, click_errors.NoArgsIsHelpError):
        pass  # --help, --version, or a group alone (`ropext eval`): parsed; it would print help and exit
    except click_errors.UsageError as err:
        pytest.fail(f"{line.where}: `{line.text}` does not parse: {err.format_message()}")


def test_design_card_max_len_command_parses() -> None:
    context = parse_command_line(["eval", "passkey", "--max-len", "64k"])
    assert context.command.name == "passkey"
    assert context.params["max_len"] == "64k"
    assert context.params["lengths"] is None
    assert context.params["model"] is None  # chosen when the command runs (ropext/commands/defaults.py)


AS_WRITTEN = ("ropext search --method dcis", "ropext finetune --factors f.yaml", "ropext eval passkey --max-len 64k")


@pytest.mark.parametrize("text", AS_WRITTEN)
def test_quick_start_commands_parse_as_written(text: str) -> None:
    """Documented first in README's quick start, and complete: no required option is left to fill."""
    assert text in {line.text for line in LINES if line.where.startswith("README.md")}
    context = parse_command_line(shlex.split(text)[1:])
    left_out = ("model", "corpus", "target_length", "out", "train_length", "steps")
    assert all(context.params.get(name) is None for name in left_out), context.params


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["eval", "pasky", "--model", "m"], "No such command"),
        (["eval", "passkey", "--model", "m", "--max-length", "64k"], "No such option"),
        (["eval", "ppl", "--model", "m", "--corpus", "c", "--max-docs", "x"], "--max-docs"),
    ],
)
def test_parsing_catches_what_the_documentation_could_get_wrong(arguments: list[str], fragment: str) -> None:
    with pytest.raises(click_errors.UsageError) as raised:
        parse_filling_required(arguments)
    assert fragment in raised.value.format_message()


def test_group_options_before_the_command_are_parsed() -> None:
    # DeepSpeed's launcher puts --local_rank before the command.
    assert parse_command_line(["--local_rank=0", "ls"]).command.name == "ls"


OTHER_PROGRAMS_OPTIONS = {
    # Options the documents name that belong to other programs, with whose they are.
    "--hostfile": "deepspeed's launcher",
    "--master_addr": "deepspeed's launcher",
    "--master_port": "deepspeed's launcher",
    "--num_gpus": "deepspeed's launcher",
    "--module": "deepspeed's launcher",
    "--launcher": "deepspeed's launcher",
    "--nproc_per_node": "torchrun",
    "--max-model-len": "vLLM's server",
}


def _ropext_options() -> set[str]:
    found = {"--help"}
    pending = [typer.main.get_command(app)]
    while pending:
        command = pending.pop()
        for param in command.params:
            found.update(param.opts)
            found.update(param.secondary_opts)
        if isinstance(command, TyperGroup):
            pending.extend(command.commands.values())
    return found


def _bench_options() -> set[str]:
    """The options of the benchmark scripts (bench/*.py, argparse), which docs/results.md runs."""
    pattern = re.compile(r"add_argument\(\s*\"(--[a-z][a-z0-9_-]*)\"")
    # argparse's BooleanOptionalAction also makes --no-NAME
    negated = re.compile(r"add_argument\(\s*\"--([a-z][a-z0-9_-]*)\"[^)]*BooleanOptionalAction")
    sources = [path.read_text() for path in (ROOT / "bench").glob("*.py")]
    return {option for text in sources for option in pattern.findall(text)} | {
        f"--no-{name}" for text in sources for name in negated.findall(text)
    }


def test_every_option_the_documents_name_exists() -> None:
    known = _ropext_options() | _bench_options() | set(OTHER_PROGRAMS_OPTIONS)
    named = {}
    for path in DOCUMENTS:
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", path.read_text()):
            named.setdefault(option, path.relative_to(ROOT).as_posix())
    assert {option: where for option, where in named.items() if option not in known} == {}
