"""Summed next-token negative log-likelihood without materialising [L, vocab] float32 logits.

The decoder runs once; the vocabulary projection and the loss run over chunks of its hidden
states, so memory beyond the forward pass is one chunk of logits (4096 × 49k × 4 B ≈ 0.8 GB for
SmolLM2) instead of 13 GB at 64k tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ropext.errors import RopextError

DEFAULT_CHUNK_TOKENS = 4096


def _logit_transform(config: Any):
    """The post-projection steps some architectures apply inside ``forward`` (so we must too)."""
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)  # Cohere multiplies
    divide = getattr(config, "logits_scaling", None)  # Granite divides

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return transform


@torch.inference_mode()
def summed_nll(
    model: Any,
    input_ids: torch.Tensor,
    score_from: int = 0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, int]:
    """NLL summed per row of ``input_ids`` [B, L] over the targets ``input_ids[:, score_from+1:]``;
    each chunk projects ``chunk_tokens`` hidden states in all (B rows × chunk_tokens / B positions).

    Returns (float64 sums of shape [B], number of predicted tokens per row).
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [batch, length >= 2], got {tuple(input_ids.shape)}")
    length = input_ids.shape[1]
    if not 0 <= score_from < length - 1:
        raise ValueError(f"score_from {score_from} outside [0, {length - 2}]")
    decoder = model.base_model
    head = model.get_output_embeddings()
    if head is None:
        raise RopextError(f"{type(model).__name__} has no output projection; it is not a causal language model")
    hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state
    transform = _logit_transform(model.config)
    totals = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=input_ids.device)
    # chunk_tokens bounds the logits of the whole batch: rows × positions per chunk.
    positions = max(1, chunk_tokens // input_ids.shape[0])
    for start in range(score_from, length - 1, positions):
        stop = min(start + positions, length - 1)
        logits = transform(head(hidden[:, start:stop]).float())
        targets = input_ids[:, start + 1 : stop + 1]
        losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        totals += losses.view(input_ids.shape[0], -1).sum(dim=1, dtype=torch.float64)
    return totals, length - 1 - score_from
