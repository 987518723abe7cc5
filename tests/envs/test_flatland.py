"""Flatland adapter: presets, API, masks vs rail transitions, rewards, deadlocks, determinism, episode limit."""

import warnings

import numpy as np
import pytest
from flatland.envs.rail_env_action import RailEnvActions
from flatland.envs.step_utils.states import TrainState
from pettingzoo.test import parallel_api_test

from wmenv import VecEnv
from wmenv.envs import make
from wmenv.envs.flatland import PRESETS, FlatlandConfig, FlatlandEnv
from wmenv.envs.flatland_obs import (
    LEFTMOST,
    MOVE_FORWARD,
    RIGHTMOST,
    STOP,
    decision_cells,
    decision_moves,
    next_cell,
    rail_action_mask,
)

D = 260  # 21 tree nodes x 12 + 8 own features


def _handle(agent):
    return int(agent.split("_")[1])


def greedy_action(env, agent):
    """`FlatlandEnv.shortest_path_actions`' action for one agent: depart, then take the allowed move that shortens the way."""
    return env.shortest_path_actions()[agent]


def _rail(seed):
    """The rail of ``flatland:5``'s map for ``seed``."""
    env, _ = make("flatland:5")
    env.reset(seed=seed)
    return env.rail_env.rail


def _configurations(rail):
    """Every valid ((row, col), direction) of a rail."""
    for r in range(rail.height):
        for c in range(rail.width):
            for d in range(4):
                if rail.is_valid_configuration(((r, c), d)):
                    yield ((r, c), d)


def random_rollout(env, seed, steps, rng_seed=0):
    """Masked random actions; returns per-step (obs, rewards, state) for comparison."""
    rng = np.random.default_rng(rng_seed)
    obs, infos = env.reset(seed=seed)
    out = [(obs, {}, env.state())]
    for _ in range(steps):
        if not env.agents:
            break
        obs, rew, term, trunc, infos = env.step(
            {a: int(rng.choice(np.flatnonzero(infos[a]["action_mask"]))) for a in env.agents}
        )
        out.append((obs, rew, env.state()))
    return out


def test_presets_are_the_mamba_table_2():
    p5, p10, p15 = PRESETS["5"], PRESETS["10"], PRESETS["15"]
    assert (p5.height, p5.width, p5.n_agents, p5.n_cities, p5.malfunction_rate) == (35, 35, 5, 3, 1 / 100)
    assert (p10.height, p10.width, p10.n_agents, p10.n_cities, p10.malfunction_rate) == (35, 35, 10, 4, 1 / 150)
    assert (p15.height, p15.width, p15.n_agents, p15.n_cities, p15.malfunction_rate) == (40, 45, 15, 5, 1 / 200)
    for p in PRESETS.values():
        assert (p.grid_mode, p.max_rails_between_cities, p.max_rail_pairs_in_city) == (False, 2, 2)
        assert (p.malfunction_min_duration, p.malfunction_max_duration, p.tree_depth) == (20, 50, 2)
    env, spec = make("flatland:15")
    assert spec.extra["height"] == 40 and spec.extra["width"] == 45 and spec.extra["malfunction_rate"] == 1 / 200
    assert spec.n_agents == 15 and spec.obs_dim == D and spec.state_dim == 15 * (D + 16) + 1


def test_spec_shapes_and_bounds_over_an_episode():
    env, spec = make("flatland:5")
    assert spec.action_masked and spec.n_actions == 5 and spec.obs_dim == D and spec.state_dim == 5 * (D + 16) + 1
    for obs, _, state in random_rollout(env, seed=1, steps=400):
        assert state.shape == (spec.state_dim,) and state.dtype == np.float32
        assert -1 <= state.min() and state.max() <= 1
        for o in obs.values():
            assert o.shape == (D,) and o.dtype == np.float32 and -1 <= o.min() and o.max() <= 1


@pytest.mark.parametrize("actions", ["flatland", "decisions"])
def test_parallel_api(actions):
    env, _ = make("flatland:5", masked_action="noop", max_episode_steps=60, actions=actions)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(env, num_cycles=80)
    assert not [str(w.message) for w in caught if "agent" in str(w.message).lower()]


def test_default_raise_rejects_masked_action():
    env, _ = make("flatland:5")
    _, infos = env.reset(seed=0)
    np.testing.assert_array_equal(infos["agent_0"]["action_mask"], [1, 0, 0, 0, 1])  # first step: waiting
    with pytest.raises(ValueError, match=r"actions\['agent_0'\]: action 2 is masked; available actions are \[0, 4\]"):
        env.step({"agent_0": 2, **{a: 0 for a in env.agents[1:]}})
    with pytest.raises(ValueError, match=r"actions\['agent_3'\]: expected an integer in \[0, 5\), got 5"):
        env.step({**{a: 0 for a in env.agents}, "agent_3": 5})


def test_rail_masks_match_flatlands_own_transitions():
    """Every on-rail configuration of a map: LEFT / RIGHT allowed iff Flatland really turns, FORWARD iff it can move."""
    rail = _rail(seed=2)
    checked = 0
    for conf in _configurations(rail):
        d = conf[1]
        mask = rail_action_mask(rail.get_transitions(conf), d)
        left = rail.apply_action_independent(RailEnvActions.MOVE_LEFT, conf)
        fwd = rail.apply_action_independent(RailEnvActions.MOVE_FORWARD, conf)
        right = rail.apply_action_independent(RailEnvActions.MOVE_RIGHT, conf)
        assert mask[1] == (left is not None and left[0][1] == (d - 1) % 4), conf
        assert mask[2] == (fwd is not None), conf
        assert mask[3] == (right is not None and right[0][1] == (d + 1) % 4), conf
        assert mask[0] and mask[4]
        checked += 1
    assert checked > 200


def test_agent_masks_follow_their_configuration():
    env, _ = make("flatland:5", departure_schedule=True)
    rng = np.random.default_rng(0)
    obs, infos = env.reset(seed=4)
    assert any(a.earliest_departure > 0 for a in env.rail_env.agents)
    seen = set()
    for _ in range(80):
        for a in env.agents:
            agent = env.rail_env.agents[_handle(a)]
            if agent.state == TrainState.WAITING:
                expected = np.array([1, 0, 0, 0, 1], dtype=bool)
            else:
                conf = agent.current_configuration if agent.state.is_on_map_state() else agent.initial_configuration
                expected = rail_action_mask(env.rail_env.rail.get_transitions(conf), conf[1])
            np.testing.assert_array_equal(infos[a]["action_mask"], expected)
            seen.add(agent.state)
        obs, _, _, _, infos = env.step({a: int(rng.choice(np.flatnonzero(infos[a]["action_mask"]))) for a in env.agents})
    assert {TrainState.WAITING, TrainState.READY_TO_DEPART, TrainState.MOVING} <= seen
    env, _ = make("flatland:5")
    env.reset(seed=4)
    assert all(a.earliest_departure == 0 for a in env.rail_env.agents)


def test_sparse_reward_is_flatlands_own():
    env, _ = make("flatland:5")
    rng = np.random.default_rng(1)
    _, infos = env.reset(seed=3)
    while env.agents:
        _, rew, *_, infos = env.step({a: int(rng.choice(np.flatnonzero(infos[a]["action_mask"]))) for a in env.agents})
        for a, r in rew.items():
            assert r == env.rail_env.rewards_dict[_handle(a)]
    assert sum(rew.values()) < 0  # end of episode: delay / cancellation penalties


def test_dense_reward_positive_when_closer_and_on_arrival():
    env, spec = make("flatland:5", dense_reward=True, malfunction_rate=0.0)
    _, infos = env.reset(seed=0)
    dists, rewards = [env._distance(0)], []
    while "agent_0" in env.agents:
        acts = {a: (greedy_action(env, a) if a == "agent_0" else 4) for a in env.agents}
        _, rew, term, trunc, infos = env.step(acts)
        rewards.append(rew["agent_0"])
        dists.append(env._distance(0))
    assert term["agent_0"] and not trunc["agent_0"] and "agent_0" not in env.agents
    progress = -np.diff(dists)
    assert progress.sum() == dists[0] > 0 and (progress >= 0).all()
    expected = 0.01 * progress
    expected[-1] += 10.0  # finish reward on arrival
    np.testing.assert_allclose(rewards, expected, rtol=1e-9)
    assert all(r > 0 for r, p in zip(rewards, progress) if p > 0)
    np.testing.assert_array_equal(env.state()[:D], 0)  # the arrived agent's observation slot is zeroed
    sparse, _ = make("flatland:5", malfunction_rate=0.0)
    sparse.reset(seed=0)
    sparse_rewards = []
    while "agent_0" in sparse.agents:
        _, rew, *_ = sparse.step({a: (greedy_action(sparse, a) if a == "agent_0" else 4) for a in sparse.agents})
        sparse_rewards.append(rew["agent_0"])
    assert len(sparse_rewards) == len(rewards) and sparse_rewards != rewards


def _greedy_all(penalty, terminates=False):
    env, _ = make(
        "flatland:5", dense_reward=True, malfunction_rate=0.0, deadlock_penalty=penalty, deadlock_terminates=terminates
    )
    env.reset(seed=0)
    log = []
    while env.agents:
        _, rew, term, _, infos = env.step({a: greedy_action(env, a) for a in env.agents})
        confs = {a: env.rail_env.agents[_handle(a)].current_configuration for a in rew}
        log.append((rew, {a: i["deadlocked"] for a, i in infos.items()}, term, confs))
    return log


def test_deadlock_penalty_once_agents_stay_stuck_and_can_terminate():
    base, punished = _greedy_all(0.0), _greedy_all(-5.0)
    flips, stuck_at = 0, {}
    for (r0, dl, _, confs), (r1, _, _, _) in zip(base, punished):
        for a in r0:
            newly = dl[a] and a not in stuck_at
            assert r1[a] - r0[a] == pytest.approx(-5.0 if newly else 0.0)
            if newly:
                stuck_at[a], flips = confs[a], flips + 1
            elif a in stuck_at:
                assert confs[a] == stuck_at[a], "a deadlocked train moved"
    assert flips >= 2  # seed 0 with everyone greedy deadlocks head-on
    term_log = _greedy_all(-5.0, terminates=True)
    first = next(t for t, (_, dl, _, _) in enumerate(term_log) if any(dl.values()))
    rew, dl, term, _ = term_log[first]
    assert all(term[a] for a in dl if dl[a])


def test_same_seed_same_episode_even_after_other_episodes():
    cfg = {"malfunction_rate": 1 / 10}
    fresh, _ = make("flatland:5", **cfg)
    used, _ = make("flatland:5", **cfg)
    random_rollout(used, seed=5, steps=30, rng_seed=9)
    a, b = random_rollout(fresh, seed=11, steps=60), random_rollout(used, seed=11, steps=60)
    assert len(a) == len(b)
    for (oa, ra, sa), (ob, rb, sb) in zip(a, b):
        assert oa.keys() == ob.keys() and ra == rb
        for k in oa:
            np.testing.assert_array_equal(oa[k], ob[k])
        np.testing.assert_array_equal(sa, sb)
    assert any(o[-2] > 0 for obs, _, _ in a for o in obs.values()), "no malfunction happened: the test proves little"
    other = random_rollout(make("flatland:5", **cfg)[0], seed=12, steps=1)
    assert not np.array_equal(other[0][2], a[0][2])


def test_episode_limit_bound_truncation_and_override():
    env, spec = make("flatland:5")
    assert spec.episode_limit == 3 * int(8 * (35 + 35 + 5))
    for seed in (0, 1):
        rollout = random_rollout(env, seed=seed, steps=2000)
        assert env.max_episode_steps <= spec.episode_limit
        assert len(rollout) - 1 == env.max_episode_steps and env.agents == []
    env, spec = make("flatland:5", max_episode_steps=30)
    assert spec.episode_limit == 30
    env.reset(seed=0)
    for _ in range(30):
        _, _, term, trunc, _ = env.step({a: 0 for a in env.agents})
    assert all(trunc.values()) and not any(term.values()) and env.agents == []


def test_state_layout_positions():
    env, spec = make("flatland:5", malfunction_rate=0.0)
    env.reset(seed=0)
    for _ in range(4):
        env.step({a: greedy_action(env, a) for a in env.agents})
    state, n = env.state(), spec.n_agents
    facts = state[n * D : n * (D + 16)].reshape(n, 16)
    for h, agent in enumerate(env.rail_env.agents):
        conf = agent.current_configuration if agent.state.is_on_map_state() else agent.initial_configuration
        (r, c), d = conf
        np.testing.assert_allclose(facts[h, :2], [r / 34, c / 34], rtol=1e-6)
        assert facts[h, 2 + d] == 1 and facts[h, 2:6].sum() == 1 and facts[h, 8 + int(agent.state)] == 1
    assert state[-1] == pytest.approx(4 / env.max_episode_steps)


def test_config_validation_and_unknown_preset():
    msg = r"FlatlandConfig.malfunction_min_duration: expected <= malfunction_max_duration \(5\), got 10"
    with pytest.raises(ValueError, match=msg):
        FlatlandConfig(malfunction_min_duration=10, malfunction_max_duration=5)
    with pytest.raises(ValueError, match="FlatlandConfig.max_episode_steps: expected a positive int or None, got 0"):
        FlatlandConfig(max_episode_steps=0)
    with pytest.raises(ValueError, match="FlatlandConfig.actions: expected 'flatland' or 'decisions', got 'greedy'"):
        FlatlandConfig(actions="greedy")
    with pytest.raises(TypeError, match="config: expected a FlatlandConfig, got dict"):
        FlatlandEnv({"n_agents": 3})
    with pytest.raises(ValueError, match=r"name: unknown Flatland preset '4'; expected one of \['5', '10', '15'\]"):
        make("flatland:4")
    with pytest.raises(RuntimeError, match="state: call reset"):
        FlatlandEnv().state()


def test_arrivals_are_counted_in_infos_episode_metrics_and_vec_env():
    """``arrived`` / ``arrived_fraction`` follow Flatland's DONE trains; VecEnv reports the fraction when the episode ends."""
    env, spec = make("flatland:5", malfunction_rate=0.0)
    _, infos = env.reset(seed=0)
    assert env.episode_metrics() == {"arrived_fraction": 0.0}
    assert all(i["arrived"] is False and i["arrived_fraction"] == 0.0 for i in infos.values())
    while "agent_0" in env.agents:  # agent_0 drives to its target, the others wait
        _, _, term, _, infos = env.step({a: (greedy_action(env, a) if a == "agent_0" else 4) for a in env.agents})
    assert term["agent_0"] and infos["agent_0"]["arrived"] is True
    assert all(i["arrived_fraction"] == 1 / 5 for i in infos.values())  # 1 of 5 trains
    assert not any(i["arrived"] for a, i in infos.items() if a != "agent_0")
    assert env.episode_metrics() == {"arrived_fraction": 1 / 5}

    vec = VecEnv("flatland:5", num_envs=2, seed=0, malfunction_rate=0.0, max_episode_steps=30)
    s = vec.reset()
    assert s.episode_metrics == [{}, {}]
    ends = []
    while len(ends) < 2:
        s = vec.step(np.full((2, spec.n_agents), 4))  # everyone stops: nobody arrives
        ends += [m for m, d in zip(s.episode_metrics, s.done) if d]
        assert all(m == {} for m, d in zip(s.episode_metrics, s.done) if not d)
    assert ends == [{"arrived_fraction": 0.0}] * 2


def test_decision_moves_are_flatlands_exits_leftmost_first():
    """Every on-rail configuration of a map: each move reaches a different exit, together all of them, left to right."""
    rail = _rail(seed=2)
    seen = {1: 0, 2: 0}
    for conf in _configurations(rail):
        d = conf[1]
        t = rail.get_transitions(conf)
        moves = decision_moves(t, d)
        heading = [rail.apply_action_independent(RailEnvActions(m), conf)[0][1] for m in moves]
        exits = [x for x in range(4) if t[x]]
        if len(exits) == 1:
            assert moves == [MOVE_FORWARD] and heading == exits, conf  # curves and dead ends: forward
        else:
            assert sorted(heading) == exits, conf
            turns = [(h - d + 1) % 4 - 1 for h in heading]  # -1 left, 0 straight, 1 right
            assert turns == sorted(turns), conf
        seen[min(len(moves), 2)] += 1
    assert seen[1] > 200 and seen[2] > 5


def test_decision_cells_follow_the_winners_rule():
    """Switches / crossings (> 2 transitions), target cells, and configurations with an open way into one of them."""
    env, _ = make("flatland:5")
    env.reset(seed=3)
    rail = env.rail_env.rail
    targets = {cell for a in env.rail_env.agents for cell, _ in a.targets}
    cells = [(r, c) for r in range(rail.height) for c in range(rail.width)]
    special = {p for p in cells if bin(rail.get_full_transitions(*p)).count("1") > 2} | targets
    expected = np.zeros((rail.height, rail.width, 4), dtype=bool)
    for r, c in cells:
        for d in range(4):
            ways = rail.get_transitions(((r, c), d))
            expected[r, c, d] = (r, c) in special or any(ways[x] and next_cell((r, c), x) in special for x in range(4))
    got = decision_cells(rail.grid, targets)
    np.testing.assert_array_equal(got, expected)
    on_rail = np.array(
        [[bin(rail.get_full_transitions(r, c)).count("1") > 0 for c in range(rail.width)] for r in range(rail.height)]
    )
    assert 0 < got.any(-1)[on_rail].mean() < 0.5  # most rail cells are plain track


def test_decision_interface_masks_drive_on_and_wait():
    """``actions="decisions"``: 3 actions; only "leftmost" away from decision cells (the train drives on), a choice on
    them and before departing; "stop" before departing keeps a train at its station, "leftmost" departs."""
    env, spec = make("flatland:5", actions="decisions", malfunction_rate=0.0, dense_reward=True)
    assert spec.n_actions == 3 and spec.extra["actions"] == "decisions"
    _, infos = env.reset(seed=0)
    for _ in range(3):
        _, _, _, _, infos = env.step({a: STOP for a in env.agents})
    assert not any(a.state.is_on_map_state() for a in env.rail_env.agents)
    rng = np.random.default_rng(0)
    rail, flat = env.rail_env.rail, env.rail_env.agents
    cells = decision_cells(rail.grid, {cell for a in flat for cell, _ in a.targets})
    forced = drove_on = chose = switched = 0
    for _ in range(150):
        if not env.agents:
            break
        acts, before, turned = {}, {}, {}
        for a in env.agents:
            agent, mask = flat[_handle(a)], infos[a]["action_mask"]
            if agent.state == TrainState.WAITING:
                np.testing.assert_array_equal(mask, [0, 0, 1])
                acts[a] = STOP
                continue
            on_map = agent.state.is_on_map_state()
            conf = agent.current_configuration if on_map else agent.initial_configuration
            free = not on_map or _handle(a) in env._deadlocked or cells[conf[0][0], conf[0][1], conf[1]]
            two = len(decision_moves(rail.get_transitions(conf), conf[1])) > 1
            np.testing.assert_array_equal(mask, [1, two, 1] if free else [1, 0, 0])
            if free:
                chose += 1
                acts[a] = int(rng.choice([LEFTMOST, RIGHTMOST] if two else [LEFTMOST]))  # never stop: keep moving
                if on_map and two:
                    move = decision_moves(rail.get_transitions(conf), conf[1])[acts[a]]
                    turned[a] = (conf, rail.apply_action_independent(RailEnvActions(move), conf)[0])
            else:
                forced += 1
                acts[a] = LEFTMOST
                before[a] = conf
        _, _, _, _, infos = env.step(acts)
        for a, ((r, c), d) in before.items():  # a forced train drives on along its only way, unless blocked
            agent = flat[_handle(a)]
            if agent.state.is_on_map_state() and agent.current_configuration[0] != (r, c):
                (exit_,) = [x for x in range(4) if rail.get_transitions(((r, c), d))[x]]
                assert agent.current_configuration[0] == next_cell((r, c), exit_)
                drove_on += 1
        for a, (conf, reached) in turned.items():  # at a switch, the way chosen is the way taken
            if flat[_handle(a)].current_configuration[0] != conf[0]:
                assert flat[_handle(a)].current_configuration == reached
                switched += 1
    assert forced > 100 and drove_on > 0.8 * forced and chose > 10 and switched > 3, (forced, drove_on, chose, switched)


@pytest.mark.parametrize("actions", ["flatland", "decisions"])
def test_shortest_path_actions_bring_a_lone_train_to_its_target(actions):
    """One train drives by `shortest_path_actions` while the others stay at their stations: it arrives, and the
    policy only ever picks allowed actions."""
    env, _ = make("flatland:5", malfunction_rate=0.0, actions=actions)
    stop = STOP if actions == "decisions" else 4
    for seed in (0, 1):
        _, infos = env.reset(seed=seed)
        steps = 0
        while "agent_0" in env.agents:
            path = env.shortest_path_actions()
            assert all(infos[a]["action_mask"][act] for a, act in path.items())
            _, _, term, _, infos = env.step({a: (path[a] if a == "agent_0" else stop) for a in env.agents})
            steps += 1
        assert term["agent_0"] and infos["agent_0"]["arrived"], (actions, seed, steps)
    with pytest.raises(RuntimeError, match="shortest_path_actions: call reset"):
        FlatlandEnv().shortest_path_actions()


def test_decision_interface_drives_malfunctioning_trains_on():
    """A malfunctioning train on the map has nothing to decide, even on a decision cell (as the winners' wrapper)."""
    env, _ = make(
        "flatland:5", actions="decisions", malfunction_rate=0.3, malfunction_min_duration=2, malfunction_max_duration=6
    )
    rng = np.random.default_rng(0)
    on_decision_cells = 0
    for seed in range(3):
        _, infos = env.reset(seed=seed)
        flat = env.rail_env.agents
        cells = decision_cells(env.rail_env.rail.grid, {cell for a in flat for cell, _ in a.targets})
        while env.agents:
            for a in env.agents:
                agent = flat[_handle(a)]
                if agent.state.is_on_map_state() and agent.malfunction_handler.malfunction_down_counter > 0:
                    if _handle(a) not in env._deadlocked:
                        np.testing.assert_array_equal(infos[a]["action_mask"], [1, 0, 0])
                        (r, c), d = agent.current_configuration
                        on_decision_cells += int(cells[r, c, d])
            acts = {a: int(rng.choice(np.flatnonzero(infos[a]["action_mask"]))) for a in env.agents}
            _, _, _, _, infos = env.step(acts)
    assert on_decision_cells > 0
