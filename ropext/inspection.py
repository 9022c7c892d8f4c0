"""What ``ropext inspect`` shows: per-pair factors, wavelengths, regimes, and the angle disturbance."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ropext.critical import trained_angle_length, untrained_turn_pairs
from ropext.disturbance import pair_disturbance, total_disturbance
from ropext.errors import RopextError
from ropext.scaling import RopeScaling, original_inv_freq


def regime(factor: float, scale: float) -> str:
    """How pair i treats positions beyond L0: unchanged (extrapolated), squeezed into the trained angle
    range (interpolated: λ ≥ s), or in between."""
    if math.isclose(factor, 1.0, rel_tol=1e-9):
        return "extrapolated"
    if factor >= scale * (1 - 1e-9):
        return "interpolated"
    return "partial"


def describe(scaling: RopeScaling, intervals: int = 360) -> dict[str, Any]:
    original = original_inv_freq(scaling.rope_theta, scaling.rotary_dim)
    scaled = scaling.inv_freq()
    per_pair = pair_disturbance(
        original, scaled, scaling.original_max_position_embeddings, scaling.max_position_embeddings, intervals
    )
    l0 = scaling.original_max_position_embeddings
    pairs = []
    for i, (factor, inv0, inv1, d) in enumerate(
        zip(scaling.factors, original.tolist(), scaled.tolist(), per_pair.tolist(), strict=True)
    ):
        wavelength = 2 * math.pi / inv0
        pairs.append(
            {
                "index": i,
                "wavelength": wavelength,
                "scaled_wavelength": 2 * math.pi / inv1,
                "turns_in_original_length": l0 / wavelength,
                "factor": factor,
                "regime": regime(factor, scaling.scale),
                "disturbance": d,
            }
        )
    theta, dim = scaling.rope_theta, scaling.rotary_dim
    trained = trained_angle_length(scaling.factors, theta, dim, l0)
    return {
        "method": scaling.method,
        "original_max_position_embeddings": l0,
        "max_position_embeddings": scaling.max_position_embeddings,
        "scale": scaling.scale,
        "attention_factor": scaling.attention_factor,
        "start_tokens": scaling.start_tokens,
        "disturbance": total_disturbance(per_pair),
        "untrained_turn_pairs": untrained_turn_pairs(theta, dim, l0),
        # JSON has no infinity: None when no pair limits it.
        "trained_angle_length": None if math.isinf(trained) else trained,
        "factors": list(scaling.factors),
        "short_factors": None if scaling.short_factors is None else list(scaling.short_factors),
        "pairs": pairs,
    }


def render_table(scaling: RopeScaling, report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"{scaling.method}: {report['original_max_position_embeddings']} -> {report['max_position_embeddings']} "
        f"(s = {report['scale']:.4g}), attention factor {scaling.attention_factor:.4g}, "
        f"start tokens {scaling.start_tokens}"
    )
    table = Table(title=title)
    for column in ("pair", "wavelength", "turns in L0", "factor", "regime", "D_i"):
        table.add_column(column, justify="right")
    for pair in report["pairs"]:
        table.add_row(
            str(pair["index"]),
            f"{pair['wavelength']:.1f}",
            f"{pair['turns_in_original_length']:.3g}",
            f"{pair['factor']:.4f}",
            pair["regime"],
            f"{pair['disturbance']:.4f}",
        )
    console = Console()
    console.print(table)
    console.print(f"disturbance (1000 × mean D_i): {report['disturbance']:.2f}")
    console.print(trained_angle_summary(report))


def trained_angle_summary(report: dict[str, Any]) -> str:
    """One line: up to which position every angle stays within the range pre-training saw."""
    pairs = report["untrained_turn_pairs"]
    if not pairs:
        return "every pair completes a turn within the original context: no position leaves the trained angles"
    length, target = report["trained_angle_length"], report["max_position_embeddings"]
    verdict = "covers" if length >= target else "falls short of"
    return (
        f"pairs {pairs[0]}–{pairs[-1]} never complete a turn within {report['original_max_position_embeddings']}"
        f" tokens; their angles stay trained up to position {length:,.0f}, which {verdict} the target {target:,}"
    )


def render_plot(scaling: RopeScaling, report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RopextError("--plot needs matplotlib: pip install 'ropext[plot]'") from None
    pairs = report["pairs"]
    index = [p["index"] for p in pairs]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(index, [p["factor"] for p in pairs], marker="o", markersize=3, label="λ_i (long)")
    if scaling.short_factors is not None:
        top.plot(index, scaling.short_factors, marker="x", markersize=3, label="λ_i (short)")
    top.axhline(scaling.scale, color="grey", linestyle=":", label=f"s = {scaling.scale:g}")
    top.set_ylabel("factor λ_i")
    top.set_title(f"{scaling.method}: disturbance {report['disturbance']:.2f}")
    top.legend()
    bottom.semilogy(index, [p["wavelength"] for p in pairs], label="original wavelength")
    bottom.semilogy(index, [p["scaled_wavelength"] for p in pairs], label="scaled wavelength")
    bottom.axhline(report["original_max_position_embeddings"], color="grey", linestyle=":", label="L0")
    bottom.set_xlabel("pair index i")
    bottom.set_ylabel("tokens")
    bottom.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
