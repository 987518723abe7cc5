"""ONNX export of a decentralized agent's recurrent step.

Glossary: B batch (agents stepped together), D observation features, A actions.

One graph computes one decision step of one agent type for B rows:

    inputs   obs (B, D) float32, action_mask (B, A) bool, reset (B,) bool,
             one input per recurrent state tensor (B, ...) float32 (names as the policy's state dict),
             [noise (B, A) float32 uniform in (0, 1), when exported with ``sampling=True``]
    outputs  logits (B, A) float32 (masked actions -inf), action (B,) int64 (greedy),
             [sampled_action (B,) int64: Gumbel-max over ``log(-log noise)``, RNG-free],
             new_<state> (B, ...) per state tensor

Continuous actions (a Gaussian actor, exported with the env's spec and the learner's ``log_std``): the mask input
marks each row's own action dims, an ``agent`` (B,) int64 input gives each row's slot (for its bounds), the first
output is ``mean`` (B, A), ``action`` (B, A) float32 is the mean clipped to the row's bounds (0 on padded dims) and
``sampled_action`` is ``mean + exp(log_std) · noise`` clipped likewise, with ``noise`` (B, A) standard normal.

The batch dimension is dynamic. The graph comes from ``torch.export`` (``torch.onnx.export(dynamo=True)``,
opset 18): the policy's ``step`` is straight-line tensor code, so the graph has no loops or branches.
Metadata (``metadata_props``) records the format, the kind (``"actor"``; `exports.wm_agent` writes
``"world_model"`` graphs), library version, policy class, D, A, the state names and shapes, whether it
samples, and the env spec it was made for.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from agents.policies.base import RecurrentPolicy
from wmenv.data.persist import temporary_name
from wmenv.envs.spec import action_bounds, own_action_dims, spec_differences

EXPORT_FORMAT = 1
"""Version of the graph's input / output / metadata layout; `OnnxAgent` refuses other versions."""
OPSET = 18


def library_version() -> str:
    """The installed wmenv version (``"unknown"`` when running from a source tree without metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wmenv")
    except PackageNotFoundError:
        return "unknown"


def spec_diff(expected: dict, got: dict) -> str:
    """``"env 'a', got env 'b'; they differ in obs_dim: 18 vs 252, ..."`` for two `EnvSpec.describe` dicts."""
    diff = ", ".join(f"{k}: {a!r} vs {b!r}" for k, a, b in spec_differences(expected, got))
    return f"env {expected.get('id')!r}, got env {got.get('id')!r}; they differ in {diff}"


# Known, harmless messages of torch's exporter (torch 2.13) that say nothing about the exported agent.
_EXPORTER_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # torch.export internals
    r"# The axis name: .* will not be used, since it shares the same shape constraints",  # one Dim for every batch axis
    r"_check_is_size will be removed",  # torch.export internals
    r"# ONNX model has different number of inputs than the flatten dynamic_shapes",  # a stateless actor's empty
    # state list: the axes keep generated names, which `write_graph` renames to "batch"
)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence `_EXPORTER_NOISE` and the exporter's "torchvision is not installed" log lines during one export."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for pattern in _EXPORTER_NOISE:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        logger.setLevel(level)


class StepGraph(nn.Module):
    """The module that is exported: one policy step with masking and greedy / Gumbel-max action choice."""

    def __init__(self, policy: RecurrentPolicy, state_names: list[str], sampling: bool) -> None:
        super().__init__()
        self.policy, self.state_names, self.sampling = policy, state_names, sampling

    def forward(
        self, obs: Tensor, action_mask: Tensor, reset: Tensor, state: tuple[Tensor, ...], noise: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """See the module docstring for inputs and outputs."""
        logits, new = self.policy.step(obs, dict(zip(self.state_names, state)), reset)
        logits = logits.masked_fill(~action_mask, float("-inf"))
        outs = [logits, logits.argmax(-1)]
        if self.sampling:
            tiny = torch.finfo(noise.dtype).tiny
            gumbel = -torch.log(-torch.log(noise.clamp(tiny, 1.0 - 1e-7)))
            outs.append((logits + gumbel).argmax(-1))
        return (*outs, *(new[n] for n in self.state_names))


def clip_to_bounds(x: Tensor, own: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Continuous actions x (B, A) clipped to each row's bounds low, high (B, A), 0 where ``own`` (B, A) bool is False
    (dims the row's agent does not have)."""
    return torch.where(own, torch.minimum(torch.maximum(x, low), high), torch.zeros_like(x))


class GaussianStepGraph(nn.Module):
    """The module exported for continuous actions: one policy step, the mean and a sampled action, clipped per row."""

    def __init__(self, policy: RecurrentPolicy, state_names: list[str], sampling: bool, log_std: Tensor, spec: Any) -> None:
        super().__init__()
        self.policy, self.state_names, self.sampling = policy, state_names, sampling
        low, high = action_bounds(spec)
        self.register_buffer("log_std", log_std.detach().float().cpu().clone())
        self.register_buffer("low", torch.from_numpy(low))  # (N, A)
        self.register_buffer("high", torch.from_numpy(high))

    def forward(
        self, obs: Tensor, action_mask: Tensor, reset: Tensor, agent: Tensor, state: tuple[Tensor, ...],
        noise: Tensor | None = None,
    ) -> tuple[Tensor, ...]:  # fmt: skip
        """See the module docstring for inputs and outputs."""
        mean, new = self.policy.step(obs, dict(zip(self.state_names, state)), reset)
        low, high = self.low[agent], self.high[agent]  # (B, A)
        outs = [mean, clip_to_bounds(mean, action_mask, low, high)]
        if self.sampling:
            outs.append(clip_to_bounds(mean + self.log_std.exp() * noise, action_mask, low, high))
        return (*outs, *(new[n] for n in self.state_names))


class OwnSpaces(nn.Module):
    """One agent type's view of a step graph: its own observation width ``d`` and ``a`` actions (or action dims) in
    and out, zero-padded to the shared policy's D and A inside (what batched code does for heterogeneous agents)."""

    def __init__(self, graph: nn.Module, d: int, a: int, D: int, A: int, action_outputs: int, continuous: bool) -> None:
        super().__init__()
        self.inner, self.d, self.a, self.D, self.A = graph, d, a, D, A  # not `graph`: torch.fx's GraphModule has one
        self.action_outputs, self.continuous = action_outputs, continuous

    def forward(
        self, obs: Tensor, action_mask: Tensor, reset: Tensor, a: Any, b: Any = None, c: Any = None
    ) -> tuple[Tensor, ...]:
        """The wrapped graph's inputs (the rest: its state, and ``agent`` / ``noise`` where it has them; explicit
        positions, as ``torch.export`` counts them) and outputs, cut to the type's own widths."""
        rest = [x for x in (a, b, c) if x is not None]
        B = obs.shape[0]
        if self.action_outputs == 3:  # sampling: the noise, last, has the type's width too (padded actions: masked)
            fill = 0.0 if self.continuous else 0.5
            rest[-1] = torch.cat([rest[-1], rest[-1].new_full((B, self.A - self.a), fill)], dim=-1)
        obs = torch.cat([obs, obs.new_zeros(B, self.D - self.d)], dim=-1)
        mask = torch.cat([action_mask, action_mask.new_zeros(B, self.A - self.a)], dim=-1)  # padded: unavailable
        outs = list(self.inner(obs, mask, reset, *rest))
        outs[0] = outs[0][:, : self.a]  # logits or mean
        if self.continuous:  # the action outputs are vectors too
            outs[1 : self.action_outputs] = [x[:, : self.a] for x in outs[1 : self.action_outputs]]
        return tuple(outs)


def agent_types(spec: Any) -> dict[str, list[str]]:
    """The env's agents grouped by their own (observation width, action space): type name -> its agents, in spec order.

    A type is named by its agents' common id prefix before the last ``_`` (``"speaker"`` for ``"speaker_0"``), or
    ``"type<i>"`` when that is not unique.
    """
    groups: dict[tuple, list[str]] = {}
    for a in spec.agents:
        act = spec.action_spaces[a]
        key = (spec.observation_spaces[a].shape, int(act.n) if spec.discrete else act.shape, None if spec.discrete else
               (tuple(np.ravel(act.low)), tuple(np.ravel(act.high))))  # fmt: skip
        groups.setdefault(key, []).append(a)
    prefixes = [{a.rsplit("_", 1)[0] for a in group} for group in groups.values()]
    names = [p.pop() if len(p) == 1 else "" for p in prefixes]
    if len(set(names)) != len(names) or "" in names:
        names = [f"type{i}" for i in range(len(groups))]
    return dict(zip(names, groups.values(), strict=True))


def export_agent_types(policy: RecurrentPolicy, folder: str | Path, spec: Any, **kwargs: Any) -> dict[str, Path]:
    """One graph per agent type (`agent_types`) of a shared ``policy``, each with its type's own widths: ``folder /
    "<type>.onnx"``; ``kwargs`` as for `export_agent`. Returns type name -> file."""
    folder = Path(folder)
    return {name: export_agent(policy, folder / f"{name}.onnx", spec, agents=agents, **kwargs)
            for name, agents in agent_types(spec).items()}  # fmt: skip


def export_agent(
    policy: RecurrentPolicy,
    path: str | Path,
    spec: Any | None = None,
    sampling: bool = False,
    opset: int = OPSET,
    log_std: Tensor | None = None,
    agents: list[str] | None = None,
) -> Path:
    """Export ``policy``'s step to an ONNX file (written atomically); see the module docstring for the graph.

    The policy is copied, put in eval mode (SP-Mamba's categorical encoder then takes its mode) and
    exported in float32 on the CPU.

    Args:
        policy: a `RecurrentPolicy` (GRU, Mamba, SP-Mamba, or any whose ``step`` is traceable).
        path: the ``.onnx`` file to write.
        spec: the `EnvSpec` the agent acts in; recorded so `OnnxAgent` can refuse another env.
        sampling: add the ``noise`` input and the ``sampled_action`` output.
        opset: ONNX opset (18 or later).
        log_std: continuous actions: the learner's (A,) state-independent log-std (``MAPPO.log_std``); a continuous
            ``spec`` needs it when ``sampling``.
        agents: agents of ``spec`` with the same spaces (one type of heterogeneous agents, `agent_types`): the graph
            then takes their own observation width and actions (padded to the policy's inside); None: the padded
            widths of every agent.

    Returns:
        ``path``.

    Raises:
        TypeError: ``policy`` is not a `RecurrentPolicy`.
        ValueError: ``spec`` disagrees with the policy's D or A; a continuous ``spec`` sampling without ``log_std``.
        RuntimeError: the step cannot be exported, with the exporter's reason.
    """
    if not isinstance(policy, RecurrentPolicy):
        raise TypeError(
            f"policy: expected a RecurrentPolicy (GRUPolicy, MambaPolicy, SPMambaPolicy), got {type(policy).__name__}"
        )
    if spec is not None and (spec.obs_dim, spec.n_actions) != (policy.obs_dim, policy.n_actions):
        raise ValueError(
            f"spec: expected obs_dim={policy.obs_dim}, n_actions={policy.n_actions} (the policy's), "
            f"got obs_dim={spec.obs_dim}, n_actions={spec.n_actions} ({spec.id})"
        )
    continuous = spec is not None and not spec.discrete
    if continuous and sampling and log_std is None:
        raise ValueError(f"log_std: sampling a Gaussian agent for {spec.id} needs the learner's log_std (MAPPO.log_std)")
    if continuous and log_std is not None and tuple(log_std.shape) != (policy.n_actions,):
        raise ValueError(f"log_std: expected shape ({policy.n_actions},), got {tuple(log_std.shape)}")
    path = Path(path)
    policy = copy.deepcopy(policy).float().cpu().eval()
    state0 = policy.initial_state(2)
    names = list(state0)
    D, A = policy.obs_dim, policy.n_actions
    batch = torch.export.Dim("batch", min=1)
    args: tuple[Any, ...] = (torch.zeros(2, D), torch.ones(2, A, dtype=torch.bool), torch.zeros(2, dtype=torch.bool))
    dynamic: tuple[Any, ...] = ({0: batch}, {0: batch}, {0: batch})
    inputs = ["obs", "action_mask", "reset"]
    if continuous:
        std = log_std if log_std is not None else torch.zeros(A)
        graph: nn.Module = GaussianStepGraph(policy, names, sampling, std, spec).eval()
        args, dynamic, inputs = (*args, torch.zeros(2, dtype=torch.long)), (*dynamic, {0: batch}), [*inputs, "agent"]
    else:
        graph = StepGraph(policy, names, sampling).eval()
    args, dynamic, inputs = (*args, list(state0.values())), (*dynamic, state_dynamic(names, batch)), [*inputs, *names]
    if agents is not None:
        d, a = _own_widths(spec, agents)
        graph = OwnSpaces(graph, d, a, D, A, 3 if sampling else 2, continuous).eval()
        args = (torch.zeros(2, d), torch.ones(2, a, dtype=torch.bool), *args[2:])
        D, A = d, a
    first = "mean" if continuous else "logits"
    outputs = [first, "action", *(["sampled_action"] if sampling else []), *(f"new_{n}" for n in names)]
    if sampling:
        args, dynamic, inputs = (*args, torch.full((2, A), 0.5)), (*dynamic, {0: batch}), [*inputs, "noise"]
    meta = {
        "wmenv.format": str(EXPORT_FORMAT),
        "wmenv.kind": "actor",
        "wmenv.version": library_version(),
        "wmenv.policy": type(policy).__name__,
        "wmenv.obs_dim": str(D),
        "wmenv.n_actions": str(A),
        "wmenv.state": json.dumps([[n, list(state0[n].shape[1:])] for n in names]),
        "wmenv.sampling": json.dumps(sampling),
        "wmenv.observation_space": json.dumps({"shape": [D], "dtype": "float32"}),
        "wmenv.action_space": json.dumps({"n": A} if not continuous else {"continuous": A}),
        "wmenv.continuous": json.dumps(continuous),
        "wmenv.env": json.dumps(spec.describe() if spec is not None else None),
        "wmenv.agents": json.dumps(agents),
    }
    return write_graph(graph, args, dynamic, inputs, outputs, meta, path, f"policy: {type(policy).__name__}.step", opset)


def _own_widths(spec: Any, agents: list[str]) -> tuple[int, int]:
    """(d, a): the own observation width and action count (or dims) shared by ``agents`` of ``spec``.

    Raises:
        ValueError: no spec, an unknown agent, or agents with other spaces.
    """
    if spec is None:
        raise ValueError("agents: an agent type's graph needs the env's spec")
    unknown = [x for x in agents if x not in spec.agents]
    if not agents or unknown:
        raise ValueError(f"agents: expected agents of {spec.id} ({list(spec.agents)}), got {list(agents)}")
    own_actions = own_action_dims(spec).sum(-1)  # (N,) choices or dims
    widths = {(int(spec.observation_spaces[x].shape[0]), int(own_actions[spec.agents.index(x)])) for x in agents}
    if len(widths) != 1:
        raise ValueError(f"agents: {list(agents)} have other spaces (observation width, actions) {sorted(widths)}; "
                         "export one type at a time (agent_types)")  # fmt: skip
    return widths.pop()


def state_dynamic(names: list[str], batch: Any) -> list[dict[int, Any]]:
    """``dynamic_shapes`` of the state argument (a list of tensors): the batch axis of each tensor.

    The state goes in as a list, not a tuple: the exporter turns the specs into lists, which an empty tuple
    (a stateless actor) would not match."""
    return [{0: batch} for _ in names]


def write_graph(
    graph: nn.Module,
    args: tuple[Any, ...],
    dynamic: tuple[Any, ...],
    inputs: list[str],
    outputs: list[str],
    meta: dict[str, str],
    path: Path,
    what: str,
    opset: int = OPSET,
) -> Path:
    """Export ``graph(*args)`` with ``torch.export`` to ``path`` (atomically), refuse control flow, store ``meta``.

    Args:
        graph: the module to export, in eval mode.
        args: example inputs (batch 2, so that the batch axis is not specialized).
        dynamic: ``dynamic_shapes`` per argument (the batch axis).
        inputs, outputs: the graph's input and output names.
        meta: ``metadata_props`` (key -> string).
        path: the ``.onnx`` file to write.
        what: names the exported thing in errors (``"policy: GRUPolicy.step"``).
        opset: ONNX opset.

    Raises:
        RuntimeError: the exporter failed, or the graph has loops or branches.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    placeholders = [f"wmenv_output_{i}__" for i in range(len(outputs))]  # the final names go in after export
    handle, name = tempfile.mkstemp(*temporary_name(path.name), dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(
                graph, args, str(tmp), dynamo=True, opset_version=opset, dynamic_shapes=dynamic, input_names=inputs,
                output_names=placeholders, external_data=False, optimize=True, verbose=False,
            )  # fmt: skip
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{what} cannot be exported to ONNX: {type(e).__name__}: {e}") from e
    model = onnx.load(str(tmp))
    loops = sorted({n.op_type for n in model.graph.node if n.op_type in ("Loop", "Scan", "If")})
    if loops:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{what} exported with control flow {loops}; expected straight-line code")
    _name_outputs(model.graph, placeholders, outputs)
    for value in (*model.graph.input, *model.graph.output):
        batch_axis = value.type.tensor_type.shape.dim[0]
        if batch_axis.dim_param:  # one dynamic axis: the batch (named by the exporter when it could not rename)
            batch_axis.dim_param = "batch"
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


def _name_outputs(graph: onnx.GraphProto, placeholders: list[str], outputs: list[str]) -> None:
    """Rename the graph's outputs from ``placeholders`` to ``outputs``; an inner value that already bears one of those
    names (the exporter names values after the ops that make them: a ``mean`` in an RMSNorm) is renamed first, so
    that every name is assigned once."""
    taken = {v for node in graph.node for v in (*node.input, *node.output)} | {v.name for v in graph.input}
    rename = {}
    for name in outputs:
        if name in taken:
            i = 0
            while f"{name}_inner{i}" in taken:
                i += 1
            rename[name] = f"{name}_inner{i}"
            taken.add(rename[name])
    rename.update(zip(placeholders, outputs))
    for node in graph.node:
        node.input[:] = [rename.get(v, v) for v in node.input]
        node.output[:] = [rename.get(v, v) for v in node.output]
    for value in (*graph.output, *graph.value_info):
        value.name = rename.get(value.name, value.name)
