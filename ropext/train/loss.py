"""The training loss: mean next-token cross-entropy with autograd, without ever holding [L, vocab] logits.

Evaluation (ropext/evaluate/nll.py) projects hidden states to the vocabulary chunk by chunk under
``inference_mode``. Training needs gradients, and autograd would keep every chunk's float32 logits alive
for the backward pass: 32k positions × 128k vocabulary × 4 B = 16 GB. Each chunk's projection and loss
therefore run under `torch.utils.checkpoint`: only the chunk's scalar loss is kept, and the backward pass
recomputes one chunk's logits at a time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ropext.errors import RopextError
from ropext.evaluate.nll import DEFAULT_CHUNK_TOKENS, _logit_transform
from ropext.train.needles import ANSWER_WEIGHT
from ropext.train.regimes import rows_keep_their_regime
from ropext.train.sequence_parallel import IGNORE, SequenceGroup, shard, shifted_labels


def _hidden_states(model: Any, input_ids: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """The last hidden states of every position, each attending to every earlier one in its row.

    Without a KV cache or an attention mask, transformers reads position ids that jump (PoSE's skipped
    windows) as packed sequences and masks attention across the jump, so the second chunk would never see the
    first and no attention would span the skip. A mask of ones (no padding) turns that inference off; plain
    windows (no position ids) run as before.
    """
    mask = None if position_ids is None else torch.ones_like(input_ids)
    return model.base_model(
        input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state


def _decoded(model: Any, input_ids: torch.Tensor, position_ids: torch.Tensor | None) -> tuple[Any, torch.Tensor, Any]:
    """The output projection, the last hidden states and the model's logit transform (soft-capping, scales)."""
    head = model.get_output_embeddings()
    if head is None:
        raise RopextError(f"{type(model).__name__} has no output projection; it is not a causal language model")
    return head, _hidden_states(model, input_ids, position_ids), _logit_transform(model.config)


def causal_lm_loss(
    model: Any,
    input_ids: torch.Tensor,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of predicting ``input_ids[:, 1:]`` from each prefix (float32, differentiable).

    Equal to transformers' ``model(input_ids, labels=input_ids).loss``; each chunk covers ``chunk_tokens``
    positions of the whole batch (rows × positions per row).
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [batch, length >= 2], got {tuple(input_ids.shape)}")
    head, hidden, transform = _decoded(model, input_ids, position_ids)

    def chunk_loss(states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = transform(head(states).float())
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")

    rows, length = input_ids.shape
    positions = max(1, chunk_tokens // rows)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, length - 1, positions):
        stop = min(start + positions, length - 1)
        # Non-reentrant checkpointing: works with inputs that need no grad and with ZeRO-3's parameter
        # hooks, which fetch the (partitioned) output projection again when backward recomputes the chunk.
        total = total + checkpoint(
            chunk_loss, hidden[:, start:stop], input_ids[:, start + 1 : stop + 1], use_reentrant=False
        )
    return total / (rows * (length - 1))


def causal_lm_losses(
    model: Any,
    input_ids: torch.Tensor,
    answers: torch.Tensor,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`causal_lm_loss` and, beside it, the sum over rows of each row's mean cross-entropy on its answer tokens
    (``answers``: bool [batch, length], True at tokens to be predicted as an answer; a row without any adds 0).

    Both come from one pass over the same chunks: each chunk's logits exist once in the forward and once in
    the backward pass, as for the plain loss.
    """
    if answers.shape != input_ids.shape:
        raise ValueError(f"answers must match input_ids {tuple(input_ids.shape)}, got {tuple(answers.shape)}")
    head, hidden, transform = _decoded(model, input_ids, position_ids)
    # Each answer token's share of its row's mean (float32, like the losses).
    targets_answer = answers[:, 1:].to(torch.float32)
    weights = targets_answer / targets_answer.sum(dim=1, keepdim=True).clamp(min=1)

    def chunk_losses(states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        logits = transform(head(states).float())
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(weight)
        return torch.stack([nll.sum(), (nll * weight).sum()])

    rows, length = input_ids.shape
    positions = max(1, chunk_tokens // rows)
    total = hidden.new_zeros(2, dtype=torch.float32)
    for start in range(0, length - 1, positions):
        stop = min(start + positions, length - 1)
        total = total + checkpoint(
            chunk_losses,
            hidden[:, start:stop],
            input_ids[:, start + 1 : stop + 1],
            weights[:, start:stop],
            use_reentrant=False,
        )
    return total[0] / (rows * (length - 1)), total[1]


def sharded_window_losses(
    model: Any,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    weights: torch.Tensor | None,
    chunk_tokens: int,
    sequence: SequenceGroup,
) -> torch.Tensor:
    """Sequence parallelism: [summed NLL, summed answer-weighted NLL] over the next tokens of whole windows
    [rows, L], this process computing its shard only; differentiable, equal on every process of the group.

    Labels are shifted before the windows are cut (the last token of a shard predicts the first of the next).
    Each shard's sums come from its chunked, checkpointed projection (never [L, vocab] logits) and are added
    across the group with a differentiable all-reduce: its backward adds the group's gradients of the total
    back into every shard, which DeepSpeed's average over all ``dp × sp`` processes turns into the average
    over data-parallel windows, as one process per window would get. ``weights`` [rows, L]: each label's
    share of its row's answer mean (None: no answers; the second sum is 0).
    """
    import torch.distributed.nn.functional as dist_fn

    labels = shard(shifted_labels(input_ids), sequence.rank, sequence.size)
    local_ids = shard(input_ids, sequence.rank, sequence.size)
    local_positions = shard(position_ids, sequence.rank, sequence.size)
    local_weights = None if weights is None else shard(weights, sequence.rank, sequence.size)
    head = model.get_output_embeddings()
    if head is None:
        raise RopextError(f"{type(model).__name__} has no output projection; it is not a causal language model")
    hidden = _hidden_states(model, local_ids, local_positions)
    transform = _logit_transform(model.config)

    def chunk_losses(states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        logits = transform(head(states).float())
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none", ignore_index=IGNORE)
        weighted = nll.new_zeros(()) if weight is None else (nll * weight.flatten()).sum()
        return torch.stack([nll.sum(), weighted])

    rows, length = local_ids.shape
    positions = max(1, chunk_tokens // rows)
    total = hidden.new_zeros(2, dtype=torch.float32)
    for start in range(0, length, positions):
        stop = min(start + positions, length)
        total = total + checkpoint(
            chunk_losses,
            hidden[:, start:stop],
            labels[:, start:stop],
            None if local_weights is None else local_weights[:, start:stop],
            use_reentrant=False,
        )
    return dist_fn.all_reduce(total, group=sequence.group)


def answer_weights(answers: torch.Tensor) -> torch.Tensor:
    """Each predicted token's share of its row's mean answer loss: [rows, L] over labels (shifted by one)."""
    targets = answers[:, 1:].to(torch.float32)
    weights = targets / targets.sum(dim=1, keepdim=True).clamp(min=1)
    return F.pad(weights, (0, 1))


class ChunkedLossModel(nn.Module):
    """A causal LM whose ``forward(input_ids)`` returns `causal_lm_loss`: the module DeepSpeed trains.

    ``config`` is the wrapped model's, so `ropext.model.apply.verify_scaling` runs on this module (and
    on the DeepSpeed engine's ``module``) as on the model itself.

    With ``answers`` (retrieval practice, ropext/train/needles.py) ``forward`` returns three scalars: the loss
    to train, the mean over windows of (mean NLL + ``answer_weight`` × mean NLL of the window's answer tokens);
    the plain language-model loss (what metrics report, comparable across runs); and the sum over windows of
    their mean answer NLL (windows without practice add 0).
    """

    def __init__(
        self,
        model: nn.Module,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        original: int | None = None,
        answer_weight: float = ANSWER_WEIGHT,
        sequence: SequenceGroup | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.original = original
        """The original context length: rows with position ids past it use longrope's long factors."""
        self.answer_weight = answer_weight
        self.sequence = sequence
        """Sequence parallelism: every process of the group gets whole windows and computes its shard."""

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None, answers: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.sequence is not None:
            return self._sharded(input_ids, position_ids, answers)
        if answers is not None:
            return self._with_answers(input_ids, position_ids, answers)
        if position_ids is None or self.original is None:
            return causal_lm_loss(self.model, input_ids, self.chunk_tokens, position_ids)
        # longrope picks one factor set per forward; the rotary modules give each row its own instead.
        with rows_keep_their_regime(self.model, self.original):
            return causal_lm_loss(self.model, input_ids, self.chunk_tokens, position_ids)

    def _with_answers(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, answers: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = input_ids.shape[0]
        if position_ids is not None and self.original is not None:
            # As for the plain loss: every row keeps its own regime within the one forward.
            with rows_keep_their_regime(self.model, self.original):
                lm, answer = causal_lm_losses(self.model, input_ids, answers, self.chunk_tokens, position_ids)
        else:
            lm, answer = causal_lm_losses(self.model, input_ids, answers, self.chunk_tokens, position_ids)
        return lm + self.answer_weight * answer / rows, lm.detach(), answer.detach()

    def _sharded(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, answers: torch.Tensor | None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As the other paths, with each window's positions split over the sequence-parallel group."""
        assert self.sequence is not None
        rows, length = input_ids.shape
        if position_ids is None:
            # Ulysses needs position ids: it gathers them to attend over the whole window.
            position_ids = torch.arange(length, device=input_ids.device).expand(rows, length)
        groups: list[Any] = [slice(None)]
        if self.original is not None:
            # Decided from whole windows, so every process of the group runs the same forwards.
            long = position_ids.amax(dim=1) >= self.original
            if bool(long.any()) and not bool(long.all()):
                groups = [~long, long]
        weights = None if answers is None else answer_weights(answers)
        total = input_ids.new_zeros(2, dtype=torch.float32)
        for chosen in groups:
            total = total + sharded_window_losses(
                self.model,
                input_ids[chosen],
                position_ids[chosen],
                None if weights is None else weights[chosen],
                self.chunk_tokens,
                self.sequence,
            )
        lm = total[0] / (rows * (length - 1))
        if answers is None:
            return lm
        return lm + self.answer_weight * total[1] / rows, lm.detach(), total[1].detach()
