"""``fwm-rl export``: the policy of a run directory as a single-step ONNX graph, checked with onnxruntime.

The graph is :class:`~fwm_rl.agents.onnx_policy.SingleStepPolicy`: ``(obs, episode_start, *state) -> (action_logits,
action, value, *next_state)`` with the batch dim free (README, "Export to ONNX", lists the state tensors of every
core). It is traced by torch's TorchScript-based ONNX exporter (``dynamo=False``), which needs neither onnxscript nor
a data-independent core: torch's default ``torch.export`` path refuses the per-step ``if any_start[t]`` of the
LN-LSTM, FW-LSTM and FW-RNN cores, needs onnxscript, and took 56 s for a small FWM policy where this one takes 7 s
(2 busy CPU cores). ``onnx`` checks the file and
carries the state layout in its metadata; ``onnxruntime`` replays a few steps with resets against the policy's own
sequence forward before the file is renamed into place.
"""
from __future__ import annotations

import argparse
import importlib
import json
import textwrap
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from fwm_rl.train.errors import UserError
from fwm_rl.train.io import atomic_write
from fwm_rl.train.runs import find_model, load_agent

OPSET_VERSION = 20
INSTALL_HINT = "pip install 'fwm-rl[export]'"
CHECK_STEPS, CHECK_ROWS = 6, 3  # the exporter's own replay: rows reset at different steps
CHECK_TOLERANCE = 1e-4  # |onnx - torch| <= tol * (1 + |torch|); the test suite holds 1e-5 on GraphNav lifetimes


def _import(name: str, why: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"{name} is not installed ({why}): {INSTALL_HINT}") from None


@torch.onnx.symbolic_helper.parse_args("v", "v", "v", "v", "f", "none")
def _layer_norm_symbolic(g, x, normalized_shape, weight, bias, eps, cudnn_enable):
    """``aten::layer_norm`` as ONNX ops when ``normalized_shape`` is read from a tensor's shape (the FWM reads'
    ``layer_norm(n, (d,))``), which the built-in symbolic refuses once the batch dim is dynamic."""
    node = normalized_shape.node()
    n_dims = (len(list(node.inputs())) if node.kind() == "prim::ListConstruct"
              else len(torch.onnx.symbolic_helper._maybe_get_const(normalized_shape, "is")))
    axes = g.op("Constant", value_t=torch.arange(-n_dims, 0))
    centred = g.op("Sub", x, g.op("ReduceMean", x, axes, keepdims_i=1))
    variance = g.op("ReduceMean", g.op("Mul", centred, centred), axes, keepdims_i=1)
    y = g.op("Div", centred, g.op("Sqrt", g.op("Add", variance, g.op("Constant", value_t=torch.tensor(eps)))))
    if not torch.onnx.symbolic_helper._is_none(weight):
        y = g.op("Mul", y, weight)
    if not torch.onnx.symbolic_helper._is_none(bias):
        y = g.op("Add", y, bias)
    return y


def trace_onnx(step, path: Path) -> None:
    """Write ``step`` (a SingleStepPolicy) to ``path`` as ONNX, batch dim dynamic."""
    inputs, outputs = [s.name for s in step.input_layout()], [s.name for s in step.output_layout()]
    torch.onnx.register_custom_op_symbolic("aten::layer_norm", _layer_norm_symbolic, OPSET_VERSION)
    try:
        with warnings.catch_warnings():
            # The tracer notes the Python branches it fixes (on the constant "no reset left" flags) and that this
            # exporter is not torch's default: both expected.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
            # The LSTM's initial states are graph inputs, so any batch size runs (the warning's own advice).
            warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
            torch.onnx.export(step, step.example_inputs(2), str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
                              opset_version=OPSET_VERSION, dynamo=False)
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::layer_norm", OPSET_VERSION)


def _annotate(onnx: ModuleType, path: Path, step, source: str) -> None:
    """Put the graph's layout and origin into the model's metadata, then check the model."""
    model = onnx.load(str(path))
    policy = step.policy
    layout = {"inputs": [s._asdict() for s in step.input_layout()],
              "outputs": [s._asdict() for s in step.output_layout()]}
    meta = {"fwm_rl.core": policy.core_kind, "fwm_rl.critic": policy.critic_mode, "fwm_rl.source": source,
            "fwm_rl.layout": json.dumps(layout)}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = (f"fwm-rl {policy.core_kind} policy, one step: (obs, episode_start [batch] bool, state) -> "
                        "(action_logits, action, value, next_state); episode_start resets those rows first")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def replay_max_error(session, policy, step, n_steps: int = CHECK_STEPS, batch_size: int = CHECK_ROWS,
                     seed: int = 0) -> float:
    """The largest ``|onnx - torch| / (1 + |torch|)`` over ``n_steps`` steps of ``batch_size`` rows (random
    observations; every row starts at step 0 and row b again at step 1 + b), comparing the onnxruntime
    ``session`` step by step with ``policy``'s own sequence forward: action logits (log-softmax), values and the
    final states. A differing action raises ``AssertionError``."""
    generator = torch.Generator().manual_seed(seed)
    steps = [step.example_inputs(batch_size, generator) for _ in range(n_steps)]
    n_obs = len(step.obs_names)
    starts = torch.zeros(n_steps, batch_size, dtype=torch.bool)
    starts[0] = True
    for b in range(batch_size):
        starts[min(1 + b, n_steps - 1), b] = True
    obs_seq = [torch.stack([inputs[i] for inputs in steps]) for i in range(n_obs)]  # each [T, B, ...]
    obs = dict(zip(step.obs_keys, obs_seq)) if step.obs_keys else obs_seq[0]
    obs = {k: v.to(policy.device) for k, v in obs.items()} if step.obs_keys else obs.to(policy.device)
    with torch.no_grad():
        states = policy.initial_state(batch_size)
        actions, values, _, last = policy.forward(obs, states, starts.to(policy.device), deterministic=True)
        distribution, _ = policy.get_distribution(obs, states.actor, starts.to(policy.device))
    log_probs = distribution.distribution.logits.view(n_steps, batch_size, -1).cpu().numpy()
    names = [s.name for s in step.state_layout()]
    state = {name: np.zeros([batch_size, *s.shape[1:]], np.float32) for name, s in zip(names, step.state_layout())}
    error = 0.0

    def worst(got: np.ndarray, want: np.ndarray) -> float:
        return float(np.max(np.abs(got - want) / (1.0 + np.abs(want)), initial=0.0))

    for t in range(n_steps):
        feed = {name: steps[t][i].numpy() for i, name in enumerate(step.obs_names)}
        out = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {**feed, "episode_start": starts[t].numpy(), **state})))
        got_log_probs = torch.log_softmax(torch.from_numpy(out["action_logits"]), dim=-1).numpy()
        error = max(error, worst(got_log_probs, log_probs[t]), worst(out["value"], values[t].cpu().numpy()))
        if not np.array_equal(out["action"], actions[t].cpu().numpy()):
            raise AssertionError(f"step {t}: onnx actions {out['action']} != torch {actions[t].tolist()}")
        state = {name: out["next_" + name] for name in names}
    final = [*last.actor, *last.critic]
    return max([error, *(worst(state[name], s.cpu().numpy()) for name, s in zip(names, final))])


def export_onnx(run: str | Path, out: str | Path, best: bool = False, overwrite: bool = False,
                check: bool = True) -> dict[str, Any]:
    """Write the policy of ``run`` (a run directory or a model .zip inside one; ``model.zip``, or
    ``best_model.zip`` with ``best``) to ``out`` as a single-step ONNX graph, atomically.

    With ``check`` the file is replayed in onnxruntime against the torch policy first (see :func:`replay_max_error`)
    and is not written if they disagree. Returns ``{"out", "model", "inputs", "outputs", "max_error"}``.
    """
    from fwm_rl.agents.onnx_policy import SingleStepPolicy, exportable_reason

    out = Path(out)
    if out.is_dir():
        raise UserError(f"--onnx {out} is a directory; give a file name such as {out / 'policy.onnx'}")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    onnx = _import("onnx", "it checks the exported graph and stores its state layout")
    ort = _import("onnxruntime", "it checks the exported graph; pass --no-check to skip") if check else None
    model_path, config = find_model(run, best=best)
    if config is None:
        raise UserError(f"no config.yaml beside {model_path}: export a run directory made by `fwm-rl train`")
    agent = load_agent(model_path, config.algo, device="cpu")
    reason = exportable_reason(agent.policy)
    if reason is not None:
        raise UserError(f"cannot export {model_path}: {reason}")
    step = SingleStepPolicy(agent.policy)
    result: dict[str, Any] = {"model": str(model_path), "inputs": step.input_layout(),
                              "outputs": step.output_layout(), "max_error": None}

    def write(tmp: Path) -> None:
        trace_onnx(step, tmp)
        _annotate(onnx, tmp, step, source=str(model_path))
        if ort is not None:
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            result["max_error"] = replay_max_error(session, agent.policy, step)
            if result["max_error"] > CHECK_TOLERANCE:
                raise AssertionError(f"the ONNX graph differs from the torch policy by {result['max_error']:.2e} "
                                     f"(relative), more than {CHECK_TOLERANCE:g}; nothing written")

    result["out"] = atomic_write(out, write)
    return result


def _describe(specs) -> str:
    return ", ".join(f"{s.name} [{', '.join(map(str, s.shape))}] {s.dtype}" for s in specs)


def run_export(args: argparse.Namespace) -> int:
    result = export_onnx(args.run, args.onnx, best=args.best, overwrite=args.overwrite, check=args.check)
    checked = ("not checked (--no-check)" if result["max_error"] is None
               else f"onnxruntime matches torch over {CHECK_STEPS} steps with resets "
                    f"(max relative error {result['max_error']:.1e})")
    print(f"wrote {result['out']} from {result['model']}; {checked}\n  inputs:  {_describe(result['inputs'])}\n"
          f"  outputs: {_describe(result['outputs'])}")
    return 0


def add_parser(commands: Any, formatter_class: type = argparse.HelpFormatter) -> None:
    """The ``export`` subcommand of ``fwm-rl``."""
    parser = commands.add_parser(
        "export", help="write a trained policy as a single-step ONNX graph (recurrent state as inputs/outputs)",
        formatter_class=formatter_class,
        description=textwrap.fill(
            "Export the policy of a run directory as one ONNX step: (obs, episode_start, state tensors) -> "
            "(action_logits, action, value, next state tensors), any batch size. episode_start resets those rows "
            "inside the graph; the state starts as zeros. The file is checked with onnxruntime against the torch "
            f"policy and written atomically. Needs the export extra: {INSTALL_HINT}.", width=100),
        epilog="examples:\n  fwm-rl export runs/graphnav-fwm --onnx policy.onnx\n"
               "  fwm-rl export runs/graphnav-fwm --best --onnx best.onnx --overwrite")
    parser.add_argument("run", metavar="RUN_DIR_OR_MODEL", help="run directory, or a model .zip inside one")
    parser.add_argument("--onnx", required=True, type=Path, metavar="FILE", help="ONNX file to write")
    parser.add_argument("--best", action="store_true",
                        help="export best_model.zip (best held-out return during training) [default: model.zip, "
                             "the final model]")
    parser.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="replay a few steps in onnxruntime against torch before writing [default: on]")
    parser.set_defaults(func=run_export)
