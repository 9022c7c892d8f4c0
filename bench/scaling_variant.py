"""A scaling YAML with its attention factor or short factors changed, for comparing regimes.

    python bench/scaling_variant.py bench/results/search-h100/dcis-64k.yaml \
        --attention-factor 1 --short-factors original --out bench/results/retrieval-h200/dcis-64k-a1.yaml

``--short-factors original`` gives inputs within the original context the model's own frequencies (factors of
1); ``none`` removes the short factors (long factors at every length); the long factors never change. The
provenance names the source file and what was changed.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ropext.scaling import RopeScaling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("--attention-factor", type=float, default=None)
    parser.add_argument("--short-factors", choices=("keep", "original", "none"), default="keep")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    scaling = RopeScaling.load(args.source)
    changed = {}
    if args.attention_factor is not None:
        scaling = replace(scaling, attention_factor=args.attention_factor)
        changed["attention_factor"] = args.attention_factor
    if args.short_factors != "keep":
        short = (1.0,) * len(scaling.factors) if args.short_factors == "original" else None
        scaling = replace(scaling, short_factors=short)
        changed["short_factors"] = args.short_factors
    scaling.with_provenance(derived_from=str(args.source), changed=changed).save(args.out)
    print(f"wrote {args.out}: {changed or 'unchanged'}")


if __name__ == "__main__":
    main()
