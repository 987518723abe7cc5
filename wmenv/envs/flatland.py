"""Flatland 4.x (``flatland-rl``) as a `MultiAgentEnv`, with the MAMBA paper's maps.

Ids ``flatland:5`` / ``flatland:10`` / ``flatland:15`` are the presets of the MAMBA paper's Table 2
(Appendix B); any `FlatlandConfig` field can be overridden, e.g. ``make("flatland:5", dense_reward=True)``.

One step of the view:

- **Agents** ``agent_0`` ... ``agent_{N-1}`` (Flatland handles 0..N-1). An agent that reaches its
  target is terminated and leaves ``env.agents``; when Flatland's step limit is reached the rest are
  truncated.
- **Actions** ``Discrete(5)``: DO_NOTHING, LEFT, FORWARD, RIGHT, STOP. ``infos[agent]["action_mask"]``
  allows DO_NOTHING and STOP always, and LEFT / FORWARD / RIGHT only where they follow a real rail
  transition (see `flatland_obs.rail_action_mask`): from the agent's cell and direction when it is on
  the map, from its start cell and direction when it has not departed yet (any allowed move then
  departs), and none while it waits for its scheduled departure (``departure_schedule=True`` only).
  With ``actions="decisions"`` instead ``Discrete(3)``, the interface the MAMBA and MABL code train on
  (from the NeurIPS 2020 winners' wrapper): leftmost open way, rightmost, stop (before departing: wait).
  A train chooses only before departing and on decision cells (switches, targets and the cells before them,
  `flatland_obs.decision_cells`); elsewhere, and while malfunctioning, its mask allows only "leftmost" and
  it drives on. Where their wrapper overrode the agent's action, the mask here forces it, so the action a
  learner records is the one the train took. Not reproduced: their "far deadlock" check (drive on when a
  deadlock lies ahead), their observation (ours stays the tree below) and their communication mask.
- **Observation** (``config.obs_dim`` = 252 + 8 floats at depth 2, in ``[-1, 1]``): the normalized tree
  observation (``TreeObsForRailEnv(max_depth=2)`` with ``ShortestPathPredictorForRailEnv(20)``, laid
  out as in `flatland_obs`), then the agent's own state one-hot (waiting, ready to depart,
  malfunctioning off map, moving, stopped, malfunctioning), its remaining malfunction steps /
  ``malfunction_max_duration`` and the elapsed fraction of the episode.
- **State** (for centralized critics): every agent's observation (zeros once it has left), then per
  agent 16 facts — position (row / (H-1), col / (W-1)) and direction one-hot of where it is or will
  enter the map (zeros once arrived), target position, state one-hot over Flatland's 7 train states,
  distance to target / (2 (H + W)) clipped to 1 — and finally the elapsed fraction of the episode.
- **Reward**: Flatland's own (``DefaultRewards``: 0 on the way, a delay / cancellation penalty at
  arrival or at the end), or with ``dense_reward=True`` the shaping MAMBA took from the NeurIPS 2020
  Flatland RL winners (jbr-ai-labs): ``finish_reward`` (10) once on arrival, plus
  ``distance_reward_coef`` (0.01) times the decrease of the shortest-path distance to the target
  (unreachable counts as 1000), plus ``deadlock_penalty`` (-5) once when the agent becomes
  deadlocked (`flatland_obs.find_deadlocked`); Flatland's own reward is then not added (as there).
- **Infos** per agent: Flatland's train ``state``, remaining ``malfunction`` steps, ``deadlocked``,
  ``arrived`` (this train reached its target) and ``arrived_fraction`` (of all N trains, so far; the
  last step's value is the episode's "% arrived" the papers report, also `episode_metrics()`).
- **Episode limit**: Flatland sets a limit per generated map (``env.max_episode_steps``, from its
  timetable). ``spec.episode_limit`` is a fixed upper bound of it, ``3 * int(8 * (H + W + N))``
  (Flatland's formula with at least one city), unless ``max_episode_steps`` fixes the limit for all maps.
  Flatland 4's per-map limit is short (1.5 x the longest train's shortest path plus 0.2 x the mean one: about
  97 steps on ``flatland:5``); the MAMBA and MABL code ran flatland-rl 2.x, whose limit is
  ``8 * (H + W + N / cities)``: 573 steps on ``flatland:5``, 580 on ``:10``, 704 on ``:15``. Their settings are
  ``actions="decisions", max_episode_steps=573, deadlock_terminates=True`` (BENCHMARKS.md measures what each changes).

``reset(seed=s)`` rebuilds the Flatland env (fresh malfunction generator) and regenerates the map
from ``s``, so it is deterministic; ``reset()`` continues the env's own random stream.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from flatland.envs.line_generators import sparse_line_generator
from flatland.envs.malfunction_generators import MalfunctionParameters, ParamMalfunctionGen
from flatland.envs.observations import TreeObsForRailEnv
from flatland.envs.predictions import ShortestPathPredictorForRailEnv
from flatland.envs.rail_env import RailEnv
from flatland.envs.rail_env_action import RailEnvActions
from flatland.envs.rail_generators import sparse_rail_generator
from flatland.envs.step_utils.states import TrainState
from flatland.envs.timetable_generators import timetable_generator
from flatland.envs.timetable_utils import Timetable

from wmenv.checks import check_choice, check_int, check_unit_interval
from wmenv.envs.base import MaskedAction, MultiAgentEnv
from wmenv.envs.flatland_obs import (
    DO_NOTHING,
    LEFTMOST,
    MOVE_FORWARD,
    MOVE_LEFT,
    MOVE_RIGHT,
    N_ACTIONS,
    N_DECISION_ACTIONS,
    N_NODE_FEATURES,
    RIGHTMOST,
    STOP,
    STOP_MOVING,
    decision_cells,
    decision_moves,
    find_deadlocked,
    n_tree_nodes,
    normalize_tree,
    rail_action_mask,
    rail_exits,
    rail_neighbours,
    tree_to_array,
)
from wmenv.envs.spec import EnvSpec

UNREACHABLE = 1000.0
"""Distance used for a target that cannot be reached from the agent's configuration (dense reward)."""
_OWN_STATES = (
    TrainState.WAITING,
    TrainState.READY_TO_DEPART,
    TrainState.MALFUNCTION_OFF_MAP,
    TrainState.MOVING,
    TrainState.STOPPED,
    TrainState.MALFUNCTION,
)
N_OWN_FEATURES = len(_OWN_STATES) + 2
ACTION_INTERFACES = ("flatland", "decisions")
"""`FlatlandConfig.actions`: Flatland's own five actions, or the papers' three chosen at decision cells."""
N_AGENT_STATE_FEATURES = 16


@dataclass(frozen=True)
class FlatlandConfig:
    """A Flatland map distribution, observation and reward (defaults: the MAMBA paper's 5-agent map)."""

    height: int = 35
    """Grid rows."""
    width: int = 35
    """Grid columns."""
    n_agents: int = 5
    """Number of trains."""
    n_cities: int = 3
    """``max_num_cities`` of the sparse rail generator."""
    grid_mode: bool = False
    """Cities on a regular grid (True) or scattered at random (False)."""
    max_rails_between_cities: int = 2
    """Maximum number of rails connecting two cities."""
    max_rail_pairs_in_city: int = 2
    """Parallel track pairs inside a city (Flatland 4.x; 2 pairs = the paper's ``max_rails_in_city=4`` of Flatland 2)."""
    malfunction_rate: float = 1 / 100
    """Poisson rate of train malfunctions per step."""
    malfunction_min_duration: int = 20
    """Shortest malfunction, in steps."""
    malfunction_max_duration: int = 50
    """Longest malfunction, in steps."""
    tree_depth: int = 2
    """``max_depth`` of ``TreeObsForRailEnv``."""
    predictor_depth: int = 20
    """Look-ahead of ``ShortestPathPredictorForRailEnv``."""
    observation_radius: float = 10.0
    """Distances in the tree observation are divided by this and clipped to [-1, 1]."""
    departure_schedule: bool = False
    """Keep Flatland's random earliest departures; False (as MAMBA) lets every train depart from step 1."""
    max_episode_steps: int | None = None
    """A fixed step limit for every map; None keeps Flatland's per-map limit."""
    dense_reward: bool = False
    """Replace Flatland's reward by the dense shaping (finish, distance progress, deadlock)."""
    finish_reward: float = 10.0
    """Dense reward: bonus when the train arrives."""
    distance_reward_coef: float = 0.01
    """Dense reward: per cell the shortest-path distance to the target shrinks."""
    deadlock_penalty: float = -5.0
    """Dense reward: once, when the train becomes deadlocked."""
    deadlock_terminates: bool = False
    """Terminate deadlocked trains (MAMBA's wrapper did); they can never move again."""
    actions: str = "flatland"
    """The action interface. ``"flatland"``: Flatland's five actions at every step. ``"decisions"``: the interface of
    the NeurIPS 2020 winners' wrapper that the MAMBA and MABL code train with (its `action_sz = 3`, `greedy=True`):
    leftmost open way / rightmost / stop, chosen only at decision cells (`flatland_obs.decision_cells`) and
    before departing; elsewhere (and while malfunctioning) the mask allows only "leftmost", so a train drives on."""

    def __post_init__(self) -> None:
        sizes = ("n_agents", "max_rails_between_cities", "max_rail_pairs_in_city", "tree_depth", "predictor_depth")
        durations = ("malfunction_min_duration", "malfunction_max_duration")
        for name, low in [(n, 2) for n in ("height", "width", "n_cities")] + [(n, 1) for n in sizes + durations]:
            check_int(f"FlatlandConfig.{name}", getattr(self, name), low, expected=f"an int >= {low}")
        if self.malfunction_min_duration > self.malfunction_max_duration:
            raise ValueError(
                f"FlatlandConfig.malfunction_min_duration: expected <= malfunction_max_duration "
                f"({self.malfunction_max_duration}), got {self.malfunction_min_duration}"
            )
        check_unit_interval("FlatlandConfig.malfunction_rate", self.malfunction_rate, what="a rate")
        if not self.observation_radius > 0:
            raise ValueError(f"FlatlandConfig.observation_radius: expected > 0, got {self.observation_radius!r}")
        if self.max_episode_steps is not None:
            check_int("FlatlandConfig.max_episode_steps", self.max_episode_steps, expected="a positive int or None")
        check_choice("FlatlandConfig.actions", self.actions, ACTION_INTERFACES)

    @property
    def obs_dim(self) -> int:
        """Per-agent observation width: tree nodes x 12 + own features."""
        return n_tree_nodes(self.tree_depth) * N_NODE_FEATURES + N_OWN_FEATURES

    @property
    def episode_limit(self) -> int:
        """``max_episode_steps`` if set, else an upper bound of Flatland's per-map limit."""
        if self.max_episode_steps is not None:
            return self.max_episode_steps
        return 3 * int(8 * (self.width + self.height + self.n_agents))


PRESETS: dict[str, FlatlandConfig] = {
    "5": FlatlandConfig(),
    "10": FlatlandConfig(height=35, width=35, n_agents=10, n_cities=4, malfunction_rate=1 / 150),
    "15": FlatlandConfig(height=40, width=45, n_agents=15, n_cities=5, malfunction_rate=1 / 200),
}


def _timetable_departing_at_start(agents: list, distance_map: Any, agents_hints: dict, np_random: Any) -> Timetable:
    """Flatland's timetable shifted so that every train may depart at step 0 (arrival windows keep their length)."""
    tt = timetable_generator(agents, distance_map, agents_hints, np_random)
    eds, las = [], []
    for ed, la in zip(tt.earliest_departures, tt.latest_arrivals):
        shift = ed[0]
        eds.append([None if v is None else v - shift for v in ed])
        las.append([None if v is None else v - shift for v in la])
    return Timetable(earliest_departures=eds, latest_arrivals=las, max_episode_steps=tt.max_episode_steps)


class FlatlandEnv(MultiAgentEnv):
    """Flatland with tree observations, rail-derived action masks and a global state (see the module docstring).

    Args:
        config: the map distribution, observation and reward.
        id: the id recorded in the spec.
        masked_action: see `MultiAgentEnv`.
    """

    def __init__(
        self, config: FlatlandConfig | None = None, id: str = "flatland:custom", masked_action: MaskedAction = "raise"
    ) -> None:
        config = FlatlandConfig() if config is None else config
        if not isinstance(config, FlatlandConfig):
            raise TypeError(f"config: expected a FlatlandConfig, got {type(config).__name__}")
        self.config = config
        n, d = config.n_agents, config.obs_dim
        agents = tuple(f"agent_{i}" for i in range(n))
        obs_space = gym.spaces.Box(-1.0, 1.0, (d,), dtype=np.float32)
        self._decide = config.actions == "decisions"
        act_space = gym.spaces.Discrete(N_DECISION_ACTIONS if self._decide else N_ACTIONS)
        state_dim = n * (d + N_AGENT_STATE_FEATURES) + 1
        spec = EnvSpec(
            id=id,
            agents=agents,
            observation_spaces=dict.fromkeys(agents, obs_space),
            action_spaces=dict.fromkeys(agents, act_space),
            state_space=gym.spaces.Box(-1.0, 1.0, (state_dim,), dtype=np.float32),
            action_masked=True,
            episode_limit=config.episode_limit,
            extra={**dataclasses.asdict(config), "observation": "TreeObsForRailEnv+ShortestPathPredictorForRailEnv"},
        )
        super().__init__(spec, masked_action=masked_action)
        self.rail_env: RailEnv | None = None
        self._obs = np.zeros((n, d), dtype=np.float32)
        self._dist = np.zeros(n)
        self._deadlocked: set[int] = set()
        self._decision_cells = np.zeros((config.height, config.width, 4), dtype=bool)

    # --- construction ---
    def _build(self) -> RailEnv:
        c = self.config
        return RailEnv(
            width=c.width,
            height=c.height,
            rail_generator=sparse_rail_generator(
                max_num_cities=c.n_cities,
                grid_mode=c.grid_mode,
                max_rails_between_cities=c.max_rails_between_cities,
                max_rail_pairs_in_city=c.max_rail_pairs_in_city,
            ),
            line_generator=sparse_line_generator(),
            number_of_agents=c.n_agents,
            obs_builder_object=TreeObsForRailEnv(
                max_depth=c.tree_depth, predictor=ShortestPathPredictorForRailEnv(c.predictor_depth)
            ),
            malfunction_generator=ParamMalfunctionGen(
                MalfunctionParameters(c.malfunction_rate, c.malfunction_min_duration, c.malfunction_max_duration)
            ),
            timetable_generator=timetable_generator if c.departure_schedule else _timetable_departing_at_start,
            remove_agents_at_target=True,
        )

    @property
    def max_episode_steps(self) -> int:
        """The step limit of the current map (after `reset`)."""
        if self.rail_env is None:
            raise RuntimeError("max_episode_steps: call reset() first")
        return int(self.rail_env._max_episode_steps)

    # --- per-agent facts ---
    def _configuration(self, agent: Any) -> tuple[tuple[int, int], int] | None:
        """Where the agent is (on map) or will enter (off map); None once arrived."""
        if agent.state.is_on_map_state():
            return agent.current_configuration
        if agent.state.is_off_map_state():
            return agent.initial_configuration
        return None

    def _distance(self, h: int) -> float:
        conf = self._configuration(self.rail_env.agents[h])
        return 0.0 if conf is None else min(self._distance_at(h, conf), UNREACHABLE)

    def _distance_at(self, h: int, conf: tuple[tuple[int, int], int]) -> float:
        """Flatland's shortest-path distance from configuration ``conf`` to train ``h``'s target (inf: unreachable)."""
        (r, c), d = conf
        return float(self.rail_env.distance_map.get()[h, r, c, d])

    def _mask(self, agent: Any) -> np.ndarray:
        if self._decide:
            return self._decision_mask(agent)
        if agent.state == TrainState.WAITING:
            mask = np.zeros(N_ACTIONS, dtype=bool)
            mask[0] = mask[STOP_MOVING] = True
            return mask
        conf = self._configuration(agent)
        return rail_action_mask(self.rail_env.rail.get_transitions(conf), conf[1])

    def _moves(self, agent: Any) -> list[int]:
        """The Flatland moves open to the agent, leftmost first (`flatland_obs.decision_moves`)."""
        conf = self._configuration(agent)
        return decision_moves(self.rail_env.rail.get_transitions(conf), conf[1])

    def _decision_mask(self, agent: Any) -> np.ndarray:
        """(3,) bool: waiting for its departure, only stop; on the map away from decision cells or malfunctioning (and
        not deadlocked), only leftmost (drive on); otherwise leftmost, rightmost where a second way is open, and stop."""
        mask = np.zeros(N_DECISION_ACTIONS, dtype=bool)
        if agent.state == TrainState.WAITING:
            mask[STOP] = True
            return mask
        mask[LEFTMOST] = True
        if agent.state.is_on_map_state() and agent.handle not in self._deadlocked:
            (r, c), d = agent.current_configuration
            if agent.malfunction_handler.malfunction_down_counter > 0 or not self._decision_cells[r, c, d]:
                return mask
        mask[RIGHTMOST] = len(self._moves(agent)) > 1
        mask[STOP] = True
        return mask

    def _flatland_action(self, handle: int, action: int) -> int:
        """The Flatland action that the decision interface's allowed ``action`` means for train ``handle`` (the base
        class has refused or replaced masked ones: a waiting train can only stop, "rightmost" needs a second way)."""
        agent = self.rail_env.agents[handle]
        if action == STOP:
            return STOP_MOVING if agent.state.is_on_map_state() else DO_NOTHING  # before departing: wait
        return self._moves(agent)[action]

    def _elapsed(self) -> float:
        return min(self.rail_env._elapsed_steps / max(self.max_episode_steps, 1), 1.0)

    def _observe(self, raw: dict, handles: list[int]) -> dict[str, np.ndarray]:
        c, env = self.config, self.rail_env
        if not handles:
            return {}
        trees = np.stack([tree_to_array(raw.get(h), c.tree_depth) for h in handles])  # (n, nodes, 12)
        tree = normalize_tree(trees, c.observation_radius)  # (n, nodes*12)
        own = np.zeros((len(handles), N_OWN_FEATURES), dtype=np.float32)
        elapsed = self._elapsed()
        for i, h in enumerate(handles):
            agent = env.agents[h]
            if agent.state in _OWN_STATES:
                own[i, _OWN_STATES.index(agent.state)] = 1.0
            own[i, -2] = min(agent.malfunction_handler.malfunction_down_counter / c.malfunction_max_duration, 1.0)
            own[i, -1] = elapsed
        obs = np.concatenate([tree, own], axis=1)
        self._obs[handles] = obs
        return {self.possible_agents[h]: obs[i].copy() for i, h in enumerate(handles)}

    def episode_metrics(self) -> dict[str, float]:
        """``arrived_fraction``: the fraction of all N trains that have reached their target (the papers' "% arrived")."""
        if self.rail_env is None:
            raise RuntimeError("episode_metrics: call reset() first")
        arrived = sum(a.state == TrainState.DONE for a in self.rail_env.agents)
        return {"arrived_fraction": arrived / self.config.n_agents}

    def shortest_path_actions(self) -> dict[str, int]:
        """Each live agent's action along its own shortest path, in the env's action interface: a reference policy.

        Among the allowed moves from where the train is (or enters the map), the one whose next configuration is
        closest to its target by Flatland's distance map; it departs at once and never stops, and it ignores the
        other trains, so trains meeting head-on deadlock. A train waiting for its departure takes the one allowed
        action.

        Raises:
            RuntimeError: called before `reset`.
        """
        if self.rail_env is None:
            raise RuntimeError("shortest_path_actions: call reset() first")
        out = {}
        for name in self.agents:
            h = self.possible_agents.index(name)
            agent, mask = self.rail_env.agents[h], self.action_mask(name)
            if self._decide:
                options = [(a, m) for a, m in enumerate(self._moves(agent)) if mask[a]]
            else:
                options = [(m, m) for m in (MOVE_LEFT, MOVE_FORWARD, MOVE_RIGHT) if mask[m]]
            # (action, distance left after its move); a waiting train's mask allows no move: its one allowed action
            scored = [(a, self._distance_after(h, agent, move)) for a, move in options]
            out[name] = min(scored, key=lambda option: option[1])[0] if scored else int(np.flatnonzero(mask)[0])
        return out

    def _distance_after(self, h: int, agent: Any, move: int) -> float:
        """Train ``h``'s distance to its target after Flatland ``move`` from where it is (inf where the move fails)."""
        reached = self.rail_env.rail.apply_action_independent(RailEnvActions(move), self._configuration(agent))
        return np.inf if reached is None else self._distance_at(h, reached[0])  # enums: the call above is cached

    def neighbours(self, radius: int) -> np.ndarray:
        """(N, N) bool: ``[i, j]`` is True when agent j is within ``radius`` cells of agent i along the rail network.

        Rows and columns follow ``possible_agents`` (Flatland handles). Distance counts the cells of a
        breadth-first search from agent i's cell along the rails, leaving each cell through any exit of
        any direction of travel (a train ahead and one behind are both near); radius 0 is the agent's own
        cell. Agents off the map (not departed yet, or arrived) have no neighbours and are nobody's;
        ``[i, i]`` is always True. A train terminated for deadlock still occupies its cell and counts.
        See `flatland_obs.rail_neighbours`.

        Raises:
            ValueError: ``radius`` is not a non-negative int.
            RuntimeError: called before `reset`.
        """
        if self.rail_env is None:
            raise RuntimeError("neighbours: call reset() first")
        positions = [a.current_configuration[0] if a.state.is_on_map_state() else None for a in self.rail_env.agents]
        return rail_neighbours(positions, rail_exits(self.rail_env.rail.grid), radius)

    def _infos(self, handles: list[int], live: set[int]) -> dict[str, dict]:
        infos = {}
        arrived_fraction = self.episode_metrics()["arrived_fraction"]
        for h in handles:
            agent = self.rail_env.agents[h]
            info: dict[str, Any] = {
                "state": int(agent.state),
                "malfunction": int(agent.malfunction_handler.malfunction_down_counter),
                "deadlocked": h in self._deadlocked,
                "arrived": agent.state == TrainState.DONE,
                "arrived_fraction": arrived_fraction,
            }
            if h in live:
                info["action_mask"] = self._mask(agent)
            infos[self.possible_agents[h]] = info
        return infos

    def _update_deadlocks(self) -> set[int]:
        """Add newly deadlocked on-map agents to ``self._deadlocked``; return the new ones."""
        env = self.rail_env
        on_map = {a.handle: a.current_configuration for a in env.agents if a.state.is_on_map_state()}
        stuck = find_deadlocked(on_map, {h: env.rail.get_transitions(conf) for h, conf in on_map.items()})
        new = stuck - self._deadlocked
        self._deadlocked |= new
        return new

    # --- MultiAgentEnv ---
    def _reset(self, seed: int | None, options: dict | None) -> tuple[dict, dict]:
        if seed is not None or self.rail_env is None:
            self.rail_env = self._build()
        raw, _ = self.rail_env.reset(regenerate_rail=True, regenerate_schedule=True, random_seed=seed)
        if self.config.max_episode_steps is not None:
            self.rail_env._max_episode_steps = self.config.max_episode_steps
        handles = list(range(self.config.n_agents))
        self.agents = list(self.possible_agents)
        self._obs[:] = 0.0
        self._deadlocked = set()
        if self._decide:
            targets = {cell for agent in self.rail_env.agents for cell, _ in agent.targets}  # cells of every heading
            self._decision_cells = decision_cells(self.rail_env.rail.grid, targets)
        self._dist = np.array([self._distance(h) for h in handles])
        return self._observe(raw, handles), self._infos(handles, set(handles))

    def _step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        c, env = self.config, self.rail_env
        index = {a: i for i, a in enumerate(self.possible_agents)}
        acting = [index[a] for a in self.agents]
        chosen = {index[a]: int(act) for a, act in actions.items()}
        if self._decide:
            chosen = {h: self._flatland_action(h, act) for h, act in chosen.items()}
        raw, flat_rewards, dones, _ = env.step(chosen)
        new_deadlocks = self._update_deadlocks()
        term = {h: env.agents[h].state == TrainState.DONE or (c.deadlock_terminates and h in self._deadlocked) for h in acting}
        trunc = {h: bool(dones["__all__"]) and not term[h] for h in acting}
        if c.dense_reward:
            dist = np.array([self._distance(h) for h in range(c.n_agents)])
            rewards = {
                h: c.distance_reward_coef * (self._dist[h] - dist[h])
                + c.finish_reward * (env.agents[h].state == TrainState.DONE)
                + c.deadlock_penalty * (h in new_deadlocks)
                for h in acting
            }
            self._dist = dist
        else:
            rewards = {h: float(flat_rewards[h]) for h in acting}
        live = [h for h in acting if not (term[h] or trunc[h])]
        self.agents = [self.possible_agents[h] for h in live]
        obs = self._observe(raw, acting)
        for h in acting:
            if h not in live:
                self._obs[h] = 0.0  # the state holds zeros for agents that have left
        name = self.possible_agents
        return (
            obs,
            {name[h]: float(r) for h, r in rewards.items()},
            {name[h]: bool(v) for h, v in term.items()},
            {name[h]: bool(v) for h, v in trunc.items()},
            self._infos(acting, set(live)),
        )

    def state(self) -> np.ndarray:
        """The global state, (S,) float32 in [-1, 1] (layout in the module docstring)."""
        if self.rail_env is None:
            raise RuntimeError("state: call reset() first")
        env, n = self.rail_env, self.config.n_agents
        h_scale, w_scale = max(env.height - 1, 1), max(env.width - 1, 1)
        dist_scale = 2.0 * (env.height + env.width)
        facts = np.zeros((n, N_AGENT_STATE_FEATURES), dtype=np.float32)
        for h, agent in enumerate(env.agents):
            conf = self._configuration(agent)
            if conf is not None:
                (r, col), d = conf
                facts[h, 0:2] = (r / h_scale, col / w_scale)
                facts[h, 2 + d] = 1.0
                facts[h, 15] = min(self._distance(h) / dist_scale, 1.0)
            (tr, tc), _ = next(iter(agent.targets))  # all alternatives of a target share its cell
            facts[h, 6:8] = (tr / h_scale, tc / w_scale)
            facts[h, 8 + int(agent.state)] = 1.0
        return np.concatenate([self._obs.reshape(-1), facts.reshape(-1), [self._elapsed()]]).astype(np.float32)


def make_flatland(name: str, **kwargs: Any) -> FlatlandEnv:
    """Make ``flatland:<name>`` with ``name`` one of `PRESETS` (``"5"``, ``"10"``, ``"15"``).

    Args:
        name: the preset (number of agents).
        **kwargs: ``masked_action`` goes to `FlatlandEnv`; any `FlatlandConfig` field overrides the preset.

    Raises:
        ValueError: unknown preset or an invalid field value.
        TypeError: an unknown keyword.
    """
    if name not in PRESETS:
        raise ValueError(f"name: unknown Flatland preset {name!r}; expected one of {sorted(PRESETS, key=int)}")
    masked_action = kwargs.pop("masked_action", "raise")
    fields = [f.name for f in dataclasses.fields(FlatlandConfig)]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise TypeError(f"flatland:{name}: unknown keyword arguments {unknown}; FlatlandConfig fields are {fields}")
    return FlatlandEnv(dataclasses.replace(PRESETS[name], **kwargs), id=f"flatland:{name}", masked_action=masked_action)
