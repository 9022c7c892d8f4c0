"""Short- and long-position windows of one micro batch in one forward pass.

transformers' ``longrope`` picks one factor set per forward, from the largest position id of the whole
batch, so a micro batch of mixed windows (``finetune --short-share``) would give its short windows the long
factors. Running the two kinds as separate forwards is correct but pays DeepSpeed ZeRO-3's per-forward cost
twice (measured: 1.85× the training time of a plain run; docs/results.md). Instead, while a mixed batch
runs, each rotary module computes cos/sin for its short rows and its long rows separately, with its own
unmodified forward, and stitches them back in row order: every row gets exactly the frequencies it would
get alone, and the decoder runs once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ropext.model.rotary import rotary_modules


def _per_regime(forward: Any, original: int) -> Any:
    def forward_by_regime(x: torch.Tensor, position_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if position_ids.shape[0] != x.shape[0]:  # one row of ids shared by the batch: a single regime
            return forward(x, position_ids, *args, **kwargs)
        long = position_ids.amax(dim=1) >= original
        if bool(long.all()) or not bool(long.any()):
            return forward(x, position_ids, *args, **kwargs)
        cos = sin = None
        for rows in (long.nonzero().flatten(), (~long).nonzero().flatten()):
            part_cos, part_sin = forward(x.index_select(0, rows), position_ids.index_select(0, rows), *args, **kwargs)
            if cos is None:
                cos = part_cos.new_empty((x.shape[0], *part_cos.shape[1:]))
                sin = part_sin.new_empty((x.shape[0], *part_sin.shape[1:]))
            cos.index_copy_(0, rows, part_cos)
            sin.index_copy_(0, rows, part_sin)
        return cos, sin

    return forward_by_regime


@contextmanager
def rows_keep_their_regime(model: nn.Module, original: int) -> Iterator[None]:
    """Inside the block, rows whose largest position id is below ``original`` get the short regime and the
    others the long one, whatever the rest of the batch holds."""
    patched = []
    for _, module in rotary_modules(model):
        patched.append(module)
        module.forward = _per_regime(module.forward, original)
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward
