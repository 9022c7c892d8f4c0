"""Registry: lazy "module:attr" targets, aliases, duplicates, "did you mean" errors; the METHODS registry."""

from __future__ import annotations

import math
import sys

import pytest

from ropext.errors import RopextError
from ropext.methods import METHODS
from ropext.methods.base import Method
from ropext.registry import Registry


def _registry() -> Registry[object]:
    registry: Registry[object] = Registry("thing")
    registry.register("sqrt", "math:sqrt", "square root", aliases=("root", "radix"))
    registry.register("answer", 42, "an object registered directly")
    return registry


def test_lazy_string_target_resolves_to_the_attribute() -> None:
    assert _registry().get("sqrt") is math.sqrt


def test_lazy_target_is_not_imported_at_registration() -> None:
    name = "ropext_test_module_that_does_not_exist"
    registry: Registry[object] = Registry("thing")
    registry.register("ghost", f"{name}:attr", "imported only on first use")
    assert name not in sys.modules
    assert "ghost" in registry
    with pytest.raises(ModuleNotFoundError):
        registry.get("ghost")


def test_lazy_target_is_resolved_once_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    original = json.loads
    registry: Registry[object] = Registry("thing")
    registry.register("loads", "json:loads", "a function")
    assert registry.get("loads") is original
    monkeypatch.setattr(json, "loads", lambda text: text)
    assert registry.get("loads") is original


def test_object_target_is_returned_as_is() -> None:
    assert _registry().get("answer") == 42


@pytest.mark.parametrize("spelling", ["root", "radix", "ROOT", "  sqrt ", "Sqrt"])
def test_aliases_and_spellings_resolve_to_the_canonical_entry(spelling: str) -> None:
    registry = _registry()
    assert registry.canonical(spelling) == "sqrt"
    assert registry.get(spelling) is math.sqrt
    assert registry.entry(spelling).name == "sqrt"
    assert spelling in registry


def test_entry_keeps_summary_and_aliases() -> None:
    entry = _registry().entry("root")
    assert entry.summary == "square root"
    assert entry.aliases == ("root", "radix")
    assert entry.target == "math:sqrt"


@pytest.mark.parametrize(
    ("name", "aliases"),
    [("sqrt", ()), ("other", ("sqrt",)), ("root", ()), ("other", ("radix",)), ("answer", ())],
)
def test_duplicate_names_or_aliases_raise_value_error(name: str, aliases: tuple[str, ...]) -> None:
    registry = _registry()
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(name, "math:pi", "duplicate", aliases=aliases)


def test_failed_registration_leaves_registry_unchanged() -> None:
    registry = _registry()
    with pytest.raises(ValueError):
        registry.register("fresh", "math:pi", "alias clashes", aliases=("root",))
    assert "fresh" not in registry


def test_unknown_name_suggests_a_near_miss_and_lists_known_names() -> None:
    with pytest.raises(RopextError) as info:
        _registry().get("sqr")
    message = str(info.value)
    assert "unknown thing 'sqr'" in message
    assert "Did you mean 'sqrt'?" in message
    assert "Known: answer, sqrt" in message


def test_unknown_name_without_near_miss_has_no_suggestion() -> None:
    with pytest.raises(RopextError) as info:
        _registry().get("zzzzzzzz")
    assert "Did you mean" not in str(info.value)
    assert "Known: answer, sqrt" in str(info.value)


def test_unknown_name_is_not_contained() -> None:
    assert "sqr" not in _registry()


def test_iteration_is_sorted_by_name_without_aliases() -> None:
    assert [e.name for e in _registry()] == ["answer", "sqrt"]


def test_methods_registry_holds_the_builtin_methods() -> None:
    names = {entry.name for entry in METHODS}
    assert names == {"none", "pi", "ntk", "dynamic", "yarn", "llama3", "dprope"}
    for name in names:
        method = METHODS.get(name)
        assert isinstance(method, Method)
        assert method.name == name


def test_linear_is_an_alias_of_pi() -> None:
    assert METHODS.canonical("linear") == "pi"
    assert METHODS.get("linear") is METHODS.get("pi")


def test_methods_registry_suggests_near_misses() -> None:
    with pytest.raises(RopextError, match="Did you mean 'yarn'"):
        METHODS.get("yarm")


def test_names_are_case_insensitive_and_stored_lower_case() -> None:
    registry: Registry = Registry("thing")
    registry.register("MyMethod", "math:sqrt", "a plugin written with capitals", aliases=("MM",))
    assert registry.get("MyMethod") is registry.get("mymethod") is registry.get("mm")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("mymethod", "math:floor", "same name, other case")


def test_an_interrupted_command_exits_130_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import ropext.cli as cli

    # Typer returns 130 (instead of raising) when Ctrl-C stops a command run with standalone_mode=False.
    monkeypatch.setattr(cli, "app", lambda standalone_mode: 130)
    monkeypatch.setattr("sys.argv", ["ropext", "eval", "ppl", "--corpus", "my docs"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip() == (
        "error: interrupted; to continue, rerun the same command: ropext eval ppl --corpus 'my docs'"
    )


def test_the_report_orders_methods_as_their_registries_hold_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from ropext.methods import METHODS
    from ropext.report.labels import method_order

    assert method_order() == (
        "original", "none", "pi", "ntk", "dynamic", "yarn", "llama3", "dprope", "dcis", "longrope"
    )  # fmt: skip
    # A plugin method joins after the built-in methods and before the searchers, with no edit in the report.
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    METHODS.register("my-method", "ropext.methods.simple:NONE", "a plugin")
    order = method_order()
    assert order.index("my-method") == order.index("dprope") + 1 == order.index("dcis") - 1
