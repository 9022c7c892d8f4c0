"""A rotary module that gives every batch row its own frequencies, so one forward pass scores
several candidate scalings on the same windows.

It wraps the model's own rotary class (built un-scaled) and calls it once per distinct candidate in
the batch with that candidate's ``inv_freq`` and attention factor, so cos/sin keep exactly the
model's layout; computing cos/sin is negligible next to the transformer itself.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ropext.model.layout import rope_dict, text_config
from ropext.model.rope_config import write_scaling
from ropext.model.rotary import build_rotary, rotary_modules
from ropext.scaling import RopeScaling


class BatchedRotary(nn.Module):
    def __init__(self, template: nn.Module, unscaled: RopeScaling, layer_type: str | None) -> None:
        super().__init__()
        config = copy.deepcopy(template.config)
        write_scaling(config, unscaled)
        device = next(template.buffers()).device
        self.inner = build_rotary(type(template), config, device)
        self.layer_type = layer_type
        prefix = f"{layer_type}_" if layer_type else ""
        self._freq_name = f"{prefix}inv_freq"
        self._scale_name = f"{prefix}attention_scaling"
        self.original_inv_freq = getattr(self.inner, self._freq_name).clone()
        self.rows: list[tuple[torch.Tensor, float, int]] = []
        """Per batch row: (float32 inv_freq on the device, attention factor, n̂)."""

    @property
    def inv_freq(self) -> torch.Tensor:  # what verification and introspection read
        return getattr(self.inner, self._freq_name)

    def set_rows(self, rows: list[tuple[torch.Tensor, float, int]]) -> None:
        self.rows = rows

    def _call_inner(self, x, position_ids, inv_freq, attention, args, kwargs):
        getattr(self.inner, self._freq_name).copy_(inv_freq)
        setattr(self.inner, self._scale_name, attention)
        return self.inner(x, position_ids, *args, **kwargs)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args: Any, **kwargs: Any):
        layer_type = args[0] if args else kwargs.get("layer_type")
        if self.layer_type is not None and layer_type != self.layer_type:
            return self.inner(x, position_ids, *args, **kwargs)  # e.g. Gemma 3's sliding layers: unscaled
        batch = x.shape[0]
        assert len(self.rows) == batch, f"{len(self.rows)} candidate rows set for a batch of {batch}"
        positions = position_ids.expand(batch, -1) if position_ids.shape[0] == 1 else position_ids
        groups: dict[int, list[int]] = {}
        for row, (inv_freq, _, _) in enumerate(self.rows):
            groups.setdefault(id(inv_freq), []).append(row)
        cos = sin = None
        for members in groups.values():
            inv_freq, attention, start_tokens = self.rows[members[0]]
            index = torch.tensor(members, device=x.device)
            part_x, part_pos = x.index_select(0, index), positions.index_select(0, index)
            c, s = self._call_inner(part_x, part_pos, inv_freq, attention, args, kwargs)
            if start_tokens > 0:
                c0, s0 = self._call_inner(part_x, part_pos, self.original_inv_freq, 1.0, args, kwargs)
                early = (part_pos < start_tokens)[..., None]
                c, s = torch.where(early, c0, c), torch.where(early, s0, s)
            if cos is None:
                cos = c.new_empty((batch, *c.shape[1:]))
                sin = s.new_empty((batch, *s.shape[1:]))
            cos.index_copy_(0, index, c)
            sin.index_copy_(0, index, s)
        return cos, sin


def install_batched_rotary(model: nn.Module, unscaled: RopeScaling) -> list[BatchedRotary]:
    """Replace every rotary module of ``model`` by a `BatchedRotary`; returns them."""
    existing = [m for m in model.modules() if isinstance(m, BatchedRotary)]
    if existing:
        return existing
    _, layer_type = rope_dict(text_config(model.config))
    installed = []
    for name, module in rotary_modules(model):
        template = module.scaled if hasattr(module, "scaled") else module
        batched = BatchedRotary(template, unscaled, layer_type)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, batched)
        installed.append(batched)
    return installed
