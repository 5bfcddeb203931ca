"""``build_core``: the one entry point that turns a core name and options into a memory core."""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from fwm_rl.core import MemoryCore

# kind -> "module:Class"; modules are imported on first use.
CORE_CLASSES: dict[str, str] = {
    "fwm": "fwm_rl.fwm:FWMCore",
    "fwlstm": "fwm_rl.fwlstm:FWLSTMCore",
    "fwrnn": "fwm_rl.fwrnn:FWRNNCore",
    "gru": "fwm_rl.gru:GRUCore",
    "lnlstm": "fwm_rl.fwlstm:LNLSTMCore",
    "lstm": "fwm_rl.lstm:LSTMCore",
    "mlp": "fwm_rl.mlp:MLPCore",
}


def core_class(kind: str) -> type[MemoryCore]:
    """The class behind ``kind``; ``ValueError`` listing the known kinds otherwise."""
    if kind not in CORE_CLASSES:
        raise ValueError(f"unknown core kind {kind!r}; expected one of {sorted(CORE_CLASSES)}")
    module_name, class_name = CORE_CLASSES[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def core_options(kind: str) -> dict[str, Any]:
    """The options ``kind`` accepts beyond input_size and hidden_size, with their defaults."""
    params = inspect.signature(core_class(kind).__init__).parameters
    return {
        name: p.default
        for name, p in params.items()
        if name not in ("self", "input_size", "hidden_size") and p.kind is not p.VAR_KEYWORD
    }


def build_core(kind: str, input_size: int, hidden_size: int, **options: Any) -> MemoryCore:
    """Build a memory core.

    :param kind: one of ``CORE_CLASSES`` ("fwm", "fwlstm", "fwrnn", "gru", "lnlstm", "lstm", "mlp")
    :param input_size: features per step of the input ``x [T, B, input_size]``
    :param hidden_size: size of the core's slow hidden state
    :param options: core-specific options (see each core's docstring); unknown names raise ``ValueError``
    """
    allowed = core_options(kind)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"core {kind!r} got unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    return core_class(kind)(input_size, hidden_size, **options)
