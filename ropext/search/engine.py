"""The perplexity objective: many candidate scalings scored on the same windows, fast.

- Several candidates share one forward pass: windows are repeated along the batch and every row
  gets its candidate's frequencies (`BatchedRotary`). Every forward has the same shape (the last
  batch is padded with a repeated row whose result is dropped), so a candidate's score does not
  depend on which candidates it was batched with: a resumed search sees the same numbers.
- The loss is chunked (`summed_nll`), weights are bf16 on a GPU, and SDPA runs with the backend
  chosen for the hardware (``sdpa_backend``).
- A candidate is never scored twice: scores are cached by content hash (`frequencies_key`).
- Several GPUs each take whole batches; each GPU holds its own copy of the (small) model.
- With racing (``ropext.search.racing``), a call may name a bound: windows are scored in stages and a
  candidate clearly worse than the bound's candidate on the windows seen so far stops there.
- An objective may score only each window's last tokens (``answer_lengths``: the needle objective),
  alone or mixed with every token's loss (``mix_weight``); see ``ropext.search.objectives``.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ropext.distributed import joined_world
from ropext.evaluate.nll import DEFAULT_CHUNK_TOKENS, summed_nll
from ropext.model.sdpa import sdpa_context
from ropext.scaling import RopeScaling
from ropext.search.batched_rotary import install_batched_rotary
from ropext.search.racing import Racing, Scoring, stages


@dataclass(frozen=True)
class EngineOptions:
    max_batch_tokens: int = 131072
    """Tokens per forward pass (rows × window length); at least one window."""
    candidates_per_batch: int = 4
    """Candidates the searcher usually scores together (DCIS: k); with the windows per candidate and
    max_batch_tokens it fixes the batch shape, so small calls are not padded to a huge batch."""
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    sdpa_backend: str = "auto"
    """``auto`` (cuDNN, then flash, then the rest, on CUDA), ``cudnn``, ``flash``, ``efficient``, ``math``,
    or ``default`` (PyTorch's own choice)."""


@dataclass(frozen=True)
class WindowValues:
    """A candidate's NLL summed per window, in window order (and every next token's, for a mix)."""

    nll: tuple[float, ...]
    whole: tuple[float, ...] | None = None


class PerplexityEngine:
    """``engine(scalings) -> perplexities`` over fixed windows, for one or more model replicas."""

    def __init__(
        self,
        replicas: Sequence[tuple[Any, str]],
        windows: torch.Tensor,
        unscaled: RopeScaling,
        options: EngineOptions = EngineOptions(),
        answer_lengths: Sequence[int] | None = None,
        mix_weight: float | None = None,
        racing: Racing | None = None,
    ) -> None:
        if windows.dim() != 2 or windows.shape[1] < 2:
            raise ValueError(f"windows must be [count, length >= 2], got {tuple(windows.shape)}")
        self.options = options
        self.length = windows.shape[1]
        if answer_lengths is not None:
            answer_lengths = tuple(answer_lengths)
            if len(answer_lengths) != windows.shape[0] or not all(0 < n < self.length for n in answer_lengths):
                raise ValueError(f"answer_lengths must give 1 .. length-1 tokens per window, got {answer_lengths}")
        self.answer_lengths = answer_lengths
        if mix_weight is not None and (answer_lengths is None or not 0 <= mix_weight <= 1):
            raise ValueError(f"mix_weight must be in [0, 1] and needs answer_lengths, got {mix_weight}")
        self.mix_weight = mix_weight
        """With answer_lengths: score exp((1 - w) · mean NLL of every token + w · mean NLL of the answers)."""
        """Per window, how many trailing tokens are scored (the needle objective); None: every next token."""
        fits = max(1, options.max_batch_tokens // self.length)
        # Racing scores a call window by window (its first stage: one window per candidate), so its usual
        # call is that stage: a batch shape sized for every window would pad the small stages to a whole
        # evaluation's cost. Without racing the shape is the one used before racing existed.
        usual_rows = (1 if racing is not None else windows.shape[0]) * options.candidates_per_batch
        # Split the usual call's rows into equal batches under the cap, so it needs no padding.
        batches = math.ceil(usual_rows / fits)
        self.rows_per_batch = max(1, math.ceil(usual_rows / batches))
        self.replicas = []
        for model, device in replicas:
            rotaries = install_batched_rotary(model, unscaled)
            self.replicas.append((model, device, rotaries, windows.to(device)))
        self.windows = windows
        world = joined_world()
        self.rank, self.world = world.rank, world.size
        self.cache: dict[str, float] = {}
        self.window_values: dict[str, WindowValues] = {}
        """Per candidate, its windows' NLL sums (a raced-out one: those it was scored on): racing's references."""
        self.raced: dict[str, int] = {}
        """Raced-out candidates and how many windows each was scored on."""
        self.racing = racing
        self.scoring = Scoring(self.length - 1, answer_lengths, mix_weight)
        self.evaluations = 0
        self.on_result: Callable[[str, RopeScaling, float], None] | None = None
        """Called as soon as each new candidate is scored (the search journal appends it there)."""

    def __call__(
        self, scalings: Sequence[RopeScaling], keys: Sequence[str] | None = None, bound: str | None = None
    ) -> list[float]:
        """Scores of ``scalings``; with racing, ``bound`` is the key of the scored candidate they must beat
        (raced-out candidates score ``math.inf``)."""
        keys = list(keys) if keys is not None else [frequencies_key(s) for s in scalings]
        todo = {}
        for key, scaling in zip(keys, scalings, strict=True):
            if key not in self.cache and key not in todo:
                todo[key] = scaling
        if todo:
            self.cache.update(self._score(list(todo.items()), self._reference(bound)))
            self.evaluations += len(todo)
        return [self.cache[key] for key in keys]

    def _reference(self, bound: str | None) -> WindowValues | None:
        """The bound's per-window values, when racing is on and they exist (a journal from before racing,
        or a raced-out bound, has none: that call is not raced)."""
        if self.racing is None or bound is None or bound in self.raced:
            return None
        values = self.window_values.get(bound)
        return values if values is not None and len(values.nll) == self.windows.shape[0] else None

    # ---------------------------------------------------------------- scoring
    def _score(self, items: list[tuple[str, RopeScaling]], reference: WindowValues | None) -> dict[str, float]:
        count = self.windows.shape[0]
        mixed = self.mix_weight is not None
        nll = [[0.0] * count for _ in items]
        whole = [[0.0] * count for _ in items]  # every next token's NLL, for a mix
        scores: dict[str, float] = {}

        def finish(c: int) -> None:
            key, scaling = items[c]
            # Summed in window order, whichever device or process scored each window: identical results.
            values = WindowValues(tuple(nll[c]), tuple(whole[c]) if mixed else None)
            self.window_values[key] = values
            scores[key] = math.exp(self.scoring.log_score(values.nll, values.whole))
            if self.on_result is not None:
                self.on_result(key, scaling, scores[key])

        def race_out(c: int, seen: int) -> None:
            key, scaling = items[c]
            self.window_values[key] = WindowValues(tuple(nll[c][:seen]), tuple(whole[c][:seen]) if mixed else None)
            self.raced[key] = seen
            scores[key] = math.inf
            if self.on_result is not None:
                self.on_result(key, scaling, scores[key])

        # Without a reference, one stage of every window: the engine as it was before racing.
        schedule = stages(count) if reference is not None else [range(count)]
        alive = list(range(len(items)))
        for number, stage in enumerate(schedule):
            last = number == len(schedule) - 1
            rows = [(c, w) for c in alive for w in stage]
            # Alone, a candidate is finished (and journaled) as soon as its last window is scored.
            self._evaluate_rows(items, rows, nll, whole, finish if last and self.world == 1 else None)
            if last:
                if self.world > 1:
                    for c in alive:
                        finish(c)
                break
            assert self.racing is not None and reference is not None
            # Decided on every window seen so far, all-reduced and summed in window order: every rank and
            # every replica count decides the same.
            seen = stage.stop
            bar = self.scoring.log_score(reference.nll[:seen], reference.whole[:seen] if mixed else None)
            survivors = []
            for c in alive:
                partial = self.scoring.log_score(nll[c][:seen], whole[c][:seen] if mixed else None)
                if self.racing.drops(partial, bar):
                    race_out(c, seen)
                else:
                    survivors.append(c)
            alive = survivors
            if not alive:
                break
        return scores

    def _evaluate_rows(
        self,
        items: list[tuple[str, RopeScaling]],
        rows: list[tuple[int, int]],
        nll: list[list[float]],
        whole: list[list[float]],
        on_candidate: Callable[[int], None] | None,
    ) -> None:
        """Score the (candidate, window) ``rows`` into ``nll[c][w]`` (and ``whole``), over every replica and
        process; ``on_candidate(c)`` once candidate c's rows are all done (one process only)."""
        batches = [
            list(range(i, min(i + self.rows_per_batch, len(rows)))) for i in range(0, len(rows), self.rows_per_batch)
        ]
        # Under torchrun every process takes every world-th batch; the threads of one process (one per
        # local replica) share its batches the same way.
        batches = batches[self.rank :: self.world]
        pending = collections.Counter(c for c, _ in rows)
        lock = threading.Lock()

        def work(replica_index: int) -> None:
            model, device, rotaries, windows = self.replicas[replica_index]
            frequencies = [self._row_parameters(scaling, device, self.length) for _, scaling in items]
            for batch in batches[replica_index :: len(self.replicas)]:
                padded = batch + [batch[-1]] * (self.rows_per_batch - len(batch))
                for rotary in rotaries:
                    rotary.set_rows([frequencies[rows[r][0]] for r in padded])
                ids = windows[[rows[r][1] for r in padded]]
                with sdpa_context(self.options.sdpa_backend, device):
                    if self.answer_lengths is None:
                        totals, _ = summed_nll(model, ids, 0, self.options.chunk_tokens)
                    else:
                        answers = [self.answer_lengths[rows[r][1]] for r in padded]
                        mixed = self.mix_weight is not None
                        totals, wholes = answer_nll(model, ids, answers, self.options.chunk_tokens, mixed)
                        whole_values = wholes.tolist()
                values = totals.tolist()
                with lock:
                    for i, (r, value) in enumerate(zip(batch, values, strict=False)):
                        c, w = rows[r]
                        nll[c][w] = value
                        if self.mix_weight is not None:
                            whole[c][w] = whole_values[i]
                        pending[c] -= 1
                        if pending[c] == 0 and on_candidate is not None:
                            on_candidate(c)

        if len(self.replicas) == 1:
            work(0)
        else:
            errors: list[BaseException] = []

            def guarded(i: int) -> None:
                try:
                    work(i)
                except BaseException as err:  # re-raised below, in the caller's thread
                    errors.append(err)

            threads = [threading.Thread(target=guarded, args=(i,)) for i in range(len(self.replicas))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
        if self.world > 1:
            import torch.distributed as dist

            # Each row was scored by exactly one process (zeros elsewhere): the sum is exact.
            device = self.replicas[0][1] if dist.get_backend() == "nccl" else "cpu"
            flat = [nll[c][w] for c, w in rows] + [whole[c][w] for c, w in rows]
            gathered = torch.tensor(flat, dtype=torch.float64, device=device)
            dist.all_reduce(gathered)
            values = gathered.tolist()
            for i, (c, w) in enumerate(rows):
                nll[c][w], whole[c][w] = values[i], values[len(rows) + i]

    @staticmethod
    def _row_parameters(scaling: RopeScaling, device: str, length: int) -> tuple[torch.Tensor, float, int]:
        # The vector a model would use for an input of the windows' length: short_factors for windows
        # up to L0, the long factors above, the dynamic vector at that length.
        return scaling.inv_freq(length, device=device), scaling.attention_factor, scaling.start_tokens


@torch.inference_mode()
def answer_nll(
    model: Any, input_ids: torch.Tensor, answer_lengths: Sequence[int], chunk_tokens: int, whole: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL summed per row over only its last ``answer_lengths[row]`` tokens, and (``whole``) over every
    next token as well, from one forward pass (float64, [B] each; the second is zeros without ``whole``).

    The decoder runs once; only the hidden states that predict a scored token are projected onto
    the vocabulary, in chunks of ``chunk_tokens`` rows × positions, so no [L, vocab] logits exist.
    """
    from ropext.evaluate.nll import _logit_transform

    rows, length = input_ids.shape
    longest = length - 1 if whole else max(answer_lengths)
    decoder = model.base_model
    head = model.get_output_embeddings()
    hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state
    transform = _logit_transform(model.config)
    # Position p predicts token p + 1: the answer's n tokens are predicted from positions L-n-1 .. L-2.
    start = length - 1 - longest
    targets = input_ids[:, start + 1 :]
    offsets = torch.arange(longest, device=input_ids.device)
    lengths = torch.tensor(list(answer_lengths), device=input_ids.device)
    wanted = offsets.unsqueeze(0) >= (longest - lengths).unsqueeze(1)  # [B, longest]: this row's answer
    totals = torch.zeros(rows, dtype=torch.float64, device=input_ids.device)
    everything = torch.zeros_like(totals)
    positions = max(1, chunk_tokens // rows)
    for first in range(0, longest, positions):
        last = min(first + positions, longest)
        logits = transform(head(hidden[:, start + first : start + last]).float())
        losses = F.cross_entropy(logits.flatten(0, 1), targets[:, first:last].flatten(), reduction="none")
        losses = losses.view(rows, -1).double()
        totals += (losses * wanted[:, first:last]).sum(dim=1)
        if whole:
            everything += losses.sum(dim=1)
    return totals, everything


def frequencies_key(scaling: RopeScaling) -> str:
    """Content hash of what changes the frequencies: both vectors, attention factor, n̂."""
    import hashlib
    import struct

    digest = hashlib.sha256()
    for vector in (scaling.factors, scaling.short_factors or ()):
        digest.update(struct.pack(f"<{len(vector)}d", *vector))
        digest.update(b"|")
    digest.update(struct.pack("<dq", scaling.attention_factor, scaling.start_tokens))
    return digest.hexdigest()[:24]
