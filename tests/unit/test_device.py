"""``--device`` values are checked before a model loads, against what this machine has."""

from __future__ import annotations

import pytest
import torch

from ropext.errors import RopextError
from ropext.model.device import check_device


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):  # -> a function setting how many CUDA GPUs torch reports
    def set_count(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return set_count


@pytest.mark.parametrize(
    ("spec", "count", "fragments"),
    [
        ("tpu", 0, ["--device 'tpu' is not a device", "use cpu"]),
        ("cuda:x", 1, ["is not a device", "cuda:0"]),
        ("meta", 0, ["ropext runs on cpu, cuda or mps"]),
        ("cuda", 0, ["--device cuda: no CUDA GPU is visible", "use --device cpu"]),
        ("cuda:1", 0, ["no CUDA GPU is visible"]),
        ("cuda:1", 1, ["--device cuda:1: this machine has 1 CUDA GPU", "cuda:0 to cuda:0"]),
        ("cuda:2", 2, ["2 CUDA GPUs", "cuda:0 to cuda:1"]),
    ],
)
def test_unusable_devices_are_one_clear_error(spec: str, count: int, fragments: list[str], gpus) -> None:
    gpus(count)
    with pytest.raises(RopextError) as raised:
        check_device(spec)
    for fragment in fragments:
        assert fragment in str(raised.value)


@pytest.mark.parametrize(("spec", "count"), [("cpu", 0), (" cpu ", 0), ("cuda", 1), ("cuda:1", 2)])
def test_usable_devices_pass(spec: str, count: int, gpus) -> None:
    gpus(count)
    assert check_device(spec) == spec.strip()


def test_the_option_is_named(gpus) -> None:
    gpus(0)
    with pytest.raises(RopextError, match=r"--devices cuda:0: no CUDA GPU.*use --devices cpu"):
        check_device("cuda:0", "--devices")
