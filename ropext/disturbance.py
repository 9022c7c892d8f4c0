"""Rotary-angle distributions and their disturbance (DPRoPE, Wu et al.).

For pair i with frequency θ_i, the angles (p·θ_i) mod 2π over positions p = 0..N−1 are binned into B
intervals; every bin starts at ε (float16's smallest normal) so the KL divergence stays finite. The
disturbance of pair i is KL(P_i ‖ Q_i) between the original distribution (θ_i over L0 positions) and
the scaled one (θ_i/λ_i over L positions); a scaling's total is 1000 × mean_i D_i.
"""

from __future__ import annotations

import math

import torch

EPSILON = 6.103515625e-05
DEFAULT_INTERVALS = 360
_POSITION_BLOCK = 1 << 20  # positions per block: bounds memory for 1M-token targets


def angle_histograms(inv_freq: torch.Tensor, positions: int, intervals: int = DEFAULT_INTERVALS) -> torch.Tensor:
    """[pairs, intervals] float64 distributions of (p·θ_i) mod 2π for p < positions (angles in float32)."""
    inv_freq = inv_freq.to(torch.float32)
    counts = torch.zeros(inv_freq.numel(), intervals, dtype=torch.float64)
    two_pi = 2 * math.pi
    for start in range(0, positions, _POSITION_BLOCK):
        p = torch.arange(start, min(start + _POSITION_BLOCK, positions), dtype=torch.float32)
        angles = torch.remainder(p[None, :] * inv_freq[:, None], two_pi)
        bins = torch.floor(angles * (intervals / two_pi)).long().clamp_(0, intervals - 1)
        counts.scatter_add_(1, bins, torch.ones_like(bins, dtype=torch.float64))
    return (counts + EPSILON) / positions


def kl_per_pair(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ_bins P (ln P − ln Q) for each pair (the direction the public DPRoPE code reports)."""
    return (p * (p.log() - q.log())).sum(dim=1)


def pair_disturbance(
    original_inv_freq: torch.Tensor,
    scaled_inv_freq: torch.Tensor,
    original_length: int,
    target_length: int,
    intervals: int = DEFAULT_INTERVALS,
) -> torch.Tensor:
    """D_i for each pair: the original angles over L0 against the scaled angles over L."""
    p = angle_histograms(original_inv_freq, original_length, intervals)
    q = angle_histograms(scaled_inv_freq, target_length, intervals)
    return kl_per_pair(p, q)


def total_disturbance(per_pair: torch.Tensor) -> float:
    """The paper's headline number: 1000 × mean_i D_i."""
    return 1000.0 * float(per_pair.mean())
