"""A tiny deterministic batched env with the `VecEnv` interface, with deaths, masks and truncation (for MAPPO tests)."""

import copy

import numpy as np
import torch

from agents.mappo import MAPPO, MAPPOConfig
from wmenv.envs.vector import VecStep


class ToyVecEnv:
    """E envs × N=3 agents, D=4, S=5, A=3; episodes last ``limit`` steps, then every live agent is truncated.

    Agent 1 of env 0 terminates (dies) on step ``death`` of every episode; agent 0 may never take action 2
    (masked); reward is 1 for action 0. Observations and states encode (step, env, agent) so rows differ.
    """

    N, D, S, A = 3, 4, 5, 3

    def __init__(self, num_envs=2, limit=5, death=3):
        self.num_envs, self.limit, self.death = num_envs, limit, death
        self.t = np.zeros(num_envs, dtype=np.int64)
        self.ret = np.zeros((num_envs, self.N), dtype=np.float32)

    def _alive(self):
        alive = np.ones((self.num_envs, self.N), dtype=bool)
        alive[0, 1] = self.t[0] < self.death
        return alive

    def _obs(self):
        E, N = self.num_envs, self.N
        t = self.t[:, None].repeat(N, 1).astype(np.float32)
        e = np.arange(E, dtype=np.float32)[:, None].repeat(N, 1)
        n = np.arange(N, dtype=np.float32)[None].repeat(E, 0)
        obs = np.stack([t / 5, e, n, np.sin(t + e + n)], -1).astype(np.float32)
        return obs * self._alive()[..., None]

    def _state(self):
        t = self.t.astype(np.float32)
        return np.stack([t / 5, np.cos(t), np.arange(self.num_envs), t**2 / 25, np.ones_like(t)], -1).astype(np.float32)

    def _mask(self):
        mask = np.ones((self.num_envs, self.N, self.A), dtype=bool)
        mask[:, 0, 2] = False  # agent 0 never dies
        return mask

    def _vecstep(self, **kw):
        E, N = self.num_envs, self.N
        base = dict(
            obs=self._obs(), state=self._state(), alive=self._alive(), action_mask=self._mask(),
            reward=np.zeros((E, N), np.float32), terminated=np.zeros((E, N), bool), truncated=np.zeros((E, N), bool),
            done=np.zeros(E, bool), final_obs=np.zeros((E, N, self.D), np.float32),
            final_state=np.zeros((E, self.S), np.float32), episode_return=np.zeros((E, N), np.float32),
            episode_length=np.zeros(E, np.int64),
        )  # fmt: skip
        base.update(kw)
        return VecStep(**base)

    def reset(self):
        self.t[:] = 0
        self.ret[:] = 0
        return self._vecstep()

    def _reward(self, actions, alive):
        """Check the (E, N) actions against the masks; 1 for action 0."""
        assert actions.shape == (self.num_envs, self.N)
        taken = np.take_along_axis(self._mask(), actions[..., None], -1)[..., 0]
        assert taken[alive].all(), "a masked action was sent to the env"
        return ((actions == 0) & alive).astype(np.float32)

    def step(self, actions):
        actions = np.asarray(actions)
        alive = self._alive()
        reward = self._reward(actions, alive)
        self.ret += reward
        self.t += 1
        terminated = alive & ~self._alive()
        done = self.t >= self.limit
        truncated = self._alive() & done[:, None]
        final_obs, final_state = self._obs(), self._state()
        ep_ret, ep_len = self.ret.copy(), self.t.copy()
        self.t[done] = 0
        self.ret[done] = 0
        return self._vecstep(
            reward=reward, terminated=terminated, truncated=truncated, done=done,
            final_obs=np.where(done[:, None, None], final_obs, 0), final_state=np.where(done[:, None], final_state, 0),
            episode_return=np.where(done[:, None], ep_ret, 0), episode_length=np.where(done, ep_len, 0),
        )  # fmt: skip

    @property
    def spec(self):
        return ToySpec()


class ToySpec:
    """The attributes `MAPPO` reads from an `EnvSpec`."""

    n_agents, obs_dim, state_dim, n_actions, discrete = ToyVecEnv.N, ToyVecEnv.D, ToyVecEnv.S, ToyVecEnv.A, True


def toy_rollout():
    """A fresh MAPPO agent (seed 0, rollouts of 10 steps, 3 epochs) and one rollout it collected on `ToyVecEnv`: the
    starting point of tests that compare updates with and without an extra loss term."""
    env = ToyVecEnv()
    torch.manual_seed(0)
    agent = MAPPO(ToySpec(), MAPPOConfig(rollout_length=10, epochs=3), seed=0)
    storage, carry = agent.new_storage(env.num_envs), agent.start(env)
    agent.collect(env, storage, carry)
    return agent, storage


def one_update_each(agent, storage, metric, untouched, **extra):
    """Two copies of ``agent`` after one update on ``storage``: plain, and with the ``extra`` keywords of `MAPPO.update`
    (an extra loss term). Asserts that the term's ``metric`` is reported and finite and that the copies' ``untouched``
    network ("policy" or "critic") is the same; returns (plain, extra)."""
    plain, other = copy.deepcopy(agent), copy.deepcopy(agent)
    plain.update(copy.deepcopy(storage))
    metrics = other.update(copy.deepcopy(storage), **extra)
    assert metric in metrics and np.isfinite(metrics[metric])
    for (name, p), q in zip(getattr(plain, untouched).named_parameters(), getattr(other, untouched).parameters()):
        assert torch.equal(p, q), f"the {untouched}'s {name} moved with the extra term"
    return plain, other


class ToyContinuousVecEnv(ToyVecEnv):
    """`ToyVecEnv` with continuous actions in [-1, 1]: A=3 dims, agent 2 has only the first 2 (the third is padding,
    False in its action mask). Actions must arrive clipped to the bounds; reward is ``1 - (a_0 - 0.5)²`` (best at 0.5).
    """

    def _mask(self):
        mask = np.ones((self.num_envs, self.N, self.A), dtype=bool)
        mask[:, 2, 2] = False  # agent 2 has two action dims
        return mask

    def _reward(self, actions, alive):
        """Check the (E, N, A) actions: float32, finite, clipped to the bounds; ``1 - (a_0 - 0.5)²``."""
        assert actions.shape == (self.num_envs, self.N, self.A) and actions.dtype == np.float32
        assert np.isfinite(actions).all() and (np.abs(actions) <= 1).all(), "actions must be clipped at the env"
        self.last_actions = actions
        return ((1 - (actions[..., 0] - 0.5) ** 2) * alive).astype(np.float32)

    @property
    def spec(self):
        return ToyContinuousSpec()


class ToyContinuousSpec:
    """The `EnvSpec` attributes `MAPPO` reads, continuous: bounds [-1, 1] per agent (agent 2: 2 dims)."""

    n_agents, obs_dim, state_dim, n_actions, discrete = ToyVecEnv.N, ToyVecEnv.D, ToyVecEnv.S, ToyVecEnv.A, False
    agents = ("a0", "a1", "a2")

    @property
    def action_spaces(self):
        import gymnasium as gym

        return {a: gym.spaces.Box(-1.0, 1.0, (3 if a != "a2" else 2,), np.float32) for a in self.agents}
