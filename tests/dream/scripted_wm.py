"""A scripted world model and a scripted start replay for the dream tests (importable by name).

`ScriptedWorldModel` implements the `WorldModel` contract with chosen head outputs, so a test knows
exactly what the dream should report. Per (world, agent) its state holds ``t`` (steps imagined since
the start), ``act`` (the action last imagined), ``origin`` (-1 from `initial`, else the first feature
of the start window's last real observation), ``ctx`` (rows of real context, 0 from `initial`) and
``u`` (a uniform draw from the dream's generator at every verb, so seeding is observable).

features (B, N, 6) = [t, act, origin, ctx, agent index, u]; decoded observations are ``-features - 1``
(so the two views differ). Scripts are indexed by ``t`` (the last row repeats): ``cont`` (T, N),
``reward`` (T, N) and ``mask`` (T, N, A) probabilities, so row 0 is what a fresh start predicts and
row k what the k-th step of an episode predicts. ``nan`` = (t, agent, "reward" | "obs") puts a NaN there;
an agent that takes the ``quit`` action ends.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from wmenv.envs.spec import EnvSpec
from wmenv.models.world_model import Prediction, State, WorldModel

F = 6
"""Per-agent feature width: [t, act, origin, ctx, agent index, u]."""


def make_spec(n_agents: int = 3, n_actions: int = 4, masked: bool = True, id: str = "scripted:v0") -> EnvSpec:
    """A discrete spec of ``n_agents`` agents ``agent_i`` with 2 observation features and ``n_actions`` actions."""
    agents = tuple(f"agent_{i}" for i in range(n_agents))
    box = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    return EnvSpec(
        id=id,
        agents=agents,
        observation_spaces={a: box for a in agents},
        action_spaces={a: gym.spaces.Discrete(n_actions) for a in agents},
        state_space=gym.spaces.Box(-np.inf, np.inf, (2 * n_agents,), np.float32),
        action_masked=masked,
        episode_limit=None,
    )


class ScriptedWorldModel(WorldModel):
    """A deterministic world model whose predictions follow the given scripts (see the module docstring).

    Args:
        spec: the env spec (N agents, A actions; masks predicted when ``spec.action_masked``).
        cont: (T, N) continuation probabilities; default all 1 (agents never end).
        reward: (T, N) rewards; default ``10 * t + agent index + 1``.
        mask: (T, N, A) availability probabilities; default all 0.9.
        nan: (t, agent index, "reward" | "obs") where the prediction is NaN, or None.
        quit: an action after which the agent's continuation is 0 (so worlds can end apart), or None.
    """

    def __init__(self, spec: EnvSpec, cont=None, reward=None, mask=None, nan=None, quit=None) -> None:
        super().__init__()
        self.spec = spec
        N, A = spec.n_agents, spec.n_actions
        self.cont = torch.ones(1, N) if cont is None else torch.as_tensor(cont, dtype=torch.float32)
        t = torch.arange(64, dtype=torch.float32)[:, None]
        self.reward = 10 * t + torch.arange(N) + 1 if reward is None else torch.as_tensor(reward, dtype=torch.float32)
        self.mask = torch.full((1, N, A), 0.9) if mask is None else torch.as_tensor(mask, dtype=torch.float32)
        self.nan, self.quit = nan, quit
        self.dummy = nn.Parameter(torch.zeros(()))  # the dream finds the device through the parameters
        self.imagined: list[Tensor] = []
        """The actions (B, N) handed to every `imagine` call."""
        self.observed: list[dict] = []
        """The arguments of every `observe` call."""
        self.predictions = 0
        """How many predictions were made (`predict` calls, including those inside `imagine`)."""

    @staticmethod
    def _row(script: Tensor, t: Tensor) -> Tensor:
        """script[t] per (world, agent): (B, N, ...) from a (T, N, ...) script and (B, N) steps."""
        idx = t.long().clamp(max=len(script) - 1)
        return script[idx, torch.arange(t.shape[1])]

    def _state(self, B: int, t: Tensor, act: Tensor, origin: Tensor, ctx: float, generator) -> State:
        u = torch.rand(B, self.spec.n_agents, generator=generator)
        return {"t": t.float(), "act": act.float(), "origin": origin.float(), "ctx": torch.full_like(u, ctx), "u": u}

    def loss(self, batch):
        """Not fitted."""
        raise NotImplementedError

    def initial(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        """t = 0, no action, origin -1."""
        zeros = torch.zeros(batch_size, self.spec.n_agents)
        return self._state(batch_size, zeros, zeros, zeros - 1, 0.0, generator)

    def observe(self, obs, actions, resets, state=None, generator=None, alive=None, *, global_state=None) -> State:
        """t = 0 after a real window; origin = the last row's first observation feature; ctx = its rows."""
        self.observed.append({"obs": obs, "actions": actions, "resets": resets, "alive": alive, "generator": generator,
                              "global_state": global_state})  # fmt: skip
        B, T = obs.shape[:2]
        return self._state(B, torch.zeros(B, self.spec.n_agents), actions[:, -1], obs[:, -1, :, 0], float(T), generator)

    def imagine(
        self, state: State, actions: Tensor, generator=None, decode: bool = False, present=None
    ) -> tuple[State, Prediction]:
        """t + 1, the action remembered."""
        self.imagined.append(actions.clone())
        B = actions.shape[0]
        nxt = self._state(B, state["t"] + 1, actions, state["origin"], 0.0, generator)
        nxt["ctx"] = state["ctx"]
        return nxt, self.predict(nxt, decode)

    def predict(self, state: State, decode: bool = False) -> Prediction:
        """The scripts' rows at each agent's ``t``."""
        self.predictions += 1
        t = state["t"]
        reward = self._row(self.reward, t).clone()
        obs = -self.features(state) - 1 if decode else None
        if self.nan is not None:
            step, n, what = self.nan
            hit = t[:, n] == step
            if what == "reward":
                reward[hit, n] = float("nan")
            elif obs is not None:
                obs[hit, n, 0] = float("nan")
        cont = self._row(self.cont, t)
        if self.quit is not None:
            cont = torch.where(state["act"] == self.quit, torch.zeros_like(cont), cont)
        return Prediction(
            reward=reward,
            cont=cont,
            action_mask=self._row(self.mask, t) if self.spec.action_masked else None,
            obs=obs,
        )

    def features(self, state: State) -> Tensor:
        """(B, N, 6) = [t, act, origin, ctx, agent index, u]."""
        n = torch.arange(self.spec.n_agents, dtype=torch.float32).expand_as(state["t"])
        return torch.stack([state["t"], state["act"], state["origin"], state["ctx"], n, state["u"]], -1)

    def critic_features(self, state: State) -> Tensor:
        """(B, N·6)."""
        return self.features(state).flatten(1)


class ScriptedStarts:
    """A stand-in replay: ``sample`` returns windows whose observations encode the seed and the world.

    ``obs[b, -1, n, 0] = 1000 * seed + 10 * b + n``; every call is recorded in ``calls``.
    """

    def __init__(self, spec: EnvSpec | None, n_agents: int = 3, n_actions: int = 4) -> None:
        self.spec_description = None if spec is None else spec.describe()
        self.N, self.A = n_agents, n_actions
        self.calls: list[dict] = []

    def sample(self, batch_size, length, cross_episodes=False, generator=None, device=None) -> dict[str, Tensor]:
        """B windows of T rows (``generator`` must be an int seed)."""
        self.calls.append({"batch_size": batch_size, "length": length, "generator": generator, "device": device})
        B, T, N = batch_size, length, self.N
        seed = float(generator)
        obs = torch.zeros(B, T, N, 2)
        obs[:, -1, :, 0] = 1000 * seed + 10 * torch.arange(B)[:, None] + torch.arange(N)
        return {
            "obs": obs.to(device),
            "action": (torch.arange(B * T * N).reshape(B, T, N) % self.A).to(device),
            "reset": torch.zeros(B, T, dtype=torch.bool, device=device),
            "alive": torch.ones(B, T, N, dtype=torch.float32, device=device),
        }
