"""A sequence model around a memory core: token embedding -> core -> output head (the supervised tasks' model)."""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor, nn

from fwm_rl import State, build_core
from fwm_rl.core import MemoryCore

HEADS = ("mlp_last", "linear", "decoder")


class SequenceModel(nn.Module):
    """``Embedding(vocab, embed) -> core -> head``.

    Heads:
      * ``mlp_last``: ``Linear(H, 100) + ReLU + Linear(100, vocab)`` on the last step only (ART, Ba et al. 2016);
      * ``linear``: ``Linear(H, vocab, bias=False)`` with Xavier-normal weights on every step (FWM's catbAbI head);
      * ``decoder``: ``Linear(H, vocab)`` on every step, its weight tied to the embedding when ``tie_weights``
        (needs ``embed_size == core.output_size``; the language-model decoder).
    """

    def __init__(
        self, core: MemoryCore, vocab_size: int, embed_size: int, head: str, tie_weights: bool = False
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
        if core.input_size != embed_size:
            raise ValueError(f"core input_size {core.input_size} must equal embed_size {embed_size}")
        if tie_weights and (head != "decoder" or embed_size != core.output_size):
            raise ValueError(
                f"tie_weights needs the decoder head and embed_size == core output size "
                f"(got head {head!r}, embed_size {embed_size}, core output {core.output_size})"
            )
        self.head_kind = head
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.core = core
        hidden = core.output_size
        if head == "mlp_last":
            self.head = nn.Sequential(nn.Linear(hidden, 100), nn.ReLU(), nn.Linear(100, vocab_size))
        elif head == "linear":
            self.head = nn.Linear(hidden, vocab_size, bias=False)
            nn.init.xavier_normal_(self.head.weight)
        else:
            self.head = nn.Linear(hidden, vocab_size)
            if tie_weights:
                self.head.weight = self.embedding.weight

    def initial_state(self, batch_size: int) -> State:
        return self.core.initial_state(batch_size)

    @property
    def skips_reads(self) -> bool:
        """Whether the core can skip work at the steps a ``read_mask`` leaves out (the FWM's reads of F)."""
        return getattr(self.core, "supports_read_mask", False)

    def forward(self, tokens: Tensor, state: Optional[State] = None, read_mask: Optional[Tensor] = None
                ) -> tuple[Tensor, State]:
        """``tokens [T, B]`` -> logits (``[B, vocab]`` for ``mlp_last``, else ``[T, B, vocab]``) and the state.

        ``read_mask [T, B]`` or ``[T]`` (bool, optional) marks the steps whose logits are used; a core that
        :attr:`skips_reads` skips its reads elsewhere (the logits there are then meaningless), any other ignores it.
        """
        embedded = self.embedding(tokens)
        if read_mask is not None and self.skips_reads:
            y, state = self.core(embedded, state, read_mask=read_mask)  # y [T, B, H]
        else:
            y, state = self.core(embedded, state)
        if self.head_kind == "mlp_last":
            return self.head(y[-1]), state  # [B, vocab]
        return self.head(y), state  # [T, B, vocab]


def build_sequence_model(
    core_kind: str,
    vocab_size: int,
    embed_size: int,
    hidden_size: int,
    head: str,
    tie_weights: bool = False,
    core_options: Optional[dict[str, Any]] = None,
) -> SequenceModel:
    """``SequenceModel`` around ``build_core(core_kind, embed_size, hidden_size, **core_options)``."""
    core = build_core(core_kind, embed_size, hidden_size, **(core_options or {}))
    return SequenceModel(core, vocab_size, embed_size, head, tie_weights)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters, each shared tensor counted once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def hidden_size_for_params(target: int, build: Callable[[int], nn.Module]) -> int:
    """The largest hidden size ``H`` with ``count_parameters(build(H)) <= target`` (doubling, then bisection)."""
    if count_parameters(build(1)) > target:
        raise ValueError(f"even hidden size 1 has more than {target} parameters")
    lo, hi = 1, 2
    while count_parameters(build(hi)) <= target:  # lo fits, hi does not
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count_parameters(build(mid)) <= target else (lo, mid)
    return lo
