"""Pairs that never turn within the original context: which they are, and how far a scaling keeps them trained."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ropext.critical import critical_floors, trained_angle_length, untrained_turn_pairs, wavelengths
from ropext.scaling import original_inv_freq

GRID = list(itertools.product((64, 128, 96), (10000.0, 100000.0, 500000.0), (2048, 4096, 8192), (2.0, 4.0, 8.0)))


def _transformers_yarn(head_dim: int, base: float, original: int, scale: float) -> torch.Tensor:
    config = LlamaConfig(
        vocab_size=16, hidden_size=4 * head_dim, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, head_dim=head_dim,
        max_position_embeddings=int(original * scale),
        rope_parameters={
            "rope_type": "yarn", "rope_theta": base, "factor": scale, "original_max_position_embeddings": original,
        },
    )  # fmt: skip
    inv_freq, _ = ROPE_INIT_FUNCTIONS["yarn"](config, torch.device("cpu"))
    return inv_freq


@pytest.mark.parametrize(("head_dim", "base", "original", "scale"), GRID)
def test_floored_pairs_are_those_transformers_yarn_interpolates_fully(
    head_dim: int, base: float, original: int, scale: float
) -> None:
    # YaRN (beta_slow = 1) divides by s exactly the pairs that do not complete one turn within L0.
    yarn = _transformers_yarn(head_dim, base, original, scale)
    interpolated = original_inv_freq(base, head_dim) / scale
    fully = [i for i in range(head_dim // 2) if torch.isclose(yarn[i], interpolated[i], rtol=1e-6, atol=0)]
    assert untrained_turn_pairs(base, head_dim, original) == fully
    floors = critical_floors(base, head_dim, original, scale)
    assert [i for i, f in enumerate(floors) if f == scale] == fully
    assert all(f == 1.0 for i, f in enumerate(floors) if i not in fully)


def test_wavelengths_come_from_transformers_float32_inverse_frequencies() -> None:
    # YaRN at s = 1 leaves every pair as the model has it.
    inv_freq = _transformers_yarn(64, 100000.0, 8192, 1.0)
    assert wavelengths(100000.0, 64) == [2 * math.pi / x for x in inv_freq.tolist()]


def test_trained_angle_length_is_where_the_first_pair_leaves_its_trained_range() -> None:
    base, dim, original = 100000.0, 64, 8192
    factors = [1.0 + i / 10 for i in range(dim // 2)]  # pairs 20–31 are below s = 4 from pair 20 to 29
    length = trained_angle_length(factors, base, dim, original)
    critical = untrained_turn_pairs(base, dim, original)
    inv = original_inv_freq(base, dim).double()
    trained_max = inv * original  # the largest angle each pair reached in pre-training
    scaled = inv / torch.tensor(factors, dtype=torch.float64)
    at_length = scaled * length
    past = scaled * (length + 1)
    assert all(at_length[i] <= trained_max[i] * (1 + 1e-12) for i in critical)
    assert any(past[i] > trained_max[i] for i in critical)


def test_uniform_factors_cover_their_own_target_and_none_covers_only_the_original() -> None:
    assert trained_angle_length([4.0] * 32, 100000.0, 64, 8192) == 4 * 8192
    assert trained_angle_length([1.0] * 32, 100000.0, 64, 8192) == 8192


def test_a_context_longer_than_every_wavelength_never_limits() -> None:
    assert untrained_turn_pairs(10.0, 4, 1000) == []
    assert trained_angle_length([1.0, 1.0], 10.0, 4, 1000) == math.inf
    assert critical_floors(10.0, 4, 1000, 4.0) == (1.0, 1.0)
