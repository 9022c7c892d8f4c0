"""The table an eval prints names what ran: a checkpoint's own rope type is not in the result document."""

from __future__ import annotations

import pytest

from ropext.commands.common import print_table


def _document(scaling: dict | None) -> dict:
    return {"task": "ppl", "model": "ckpt/", "scaling": scaling, "results": {"1024": {"ppl": 12.5}}}


@pytest.mark.parametrize(
    ("scaling", "label", "expected"),
    [
        (None, "its config's yarn", "ppl — ckpt/ — its config's yarn"),
        (None, None, "ppl — ckpt/ — original"),
        ({"method": "dcis"}, None, "ppl — ckpt/ — dcis"),
    ],
)
def test_the_title_names_what_ran(capsys, scaling, label, expected) -> None:
    print_table(_document(scaling), ("ppl",), label=label)
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps a title to the table's width
    assert expected in printed
