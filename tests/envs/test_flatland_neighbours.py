"""Who hears whom on Flatland: rail exits, rail-distance neighbours (pure search and `FlatlandEnv.neighbours`)."""

import re

import numpy as np
import pytest

from wmenv.envs import make
from wmenv.envs.flatland import FlatlandEnv
from wmenv.envs.flatland_obs import next_cell, rail_exits, rail_neighbours


def _tracks(height, width, *paths):
    """(height, width, 4) exits of two-way tracks laid along paths of adjacent cells."""
    exits = np.zeros((height, width, 4), dtype=bool)
    for path in paths:
        for a, b in zip(path[:-1], path[1:]):
            d = [next_cell(a, d) for d in range(4)].index(b)
            exits[a + (d,)] = exits[b + ((d + 2) % 4,)] = True
    return exits


def _linked(n, *pairs):
    """(n, n) bool: the identity plus the given pairs, both ways."""
    out = np.eye(n, dtype=bool)
    for i, j in pairs:
        out[i, j] = out[j, i] = True
    return out


# Rows 0-1: a trunk with a branch forking up at (1, 2). Rows 3-4: two parallel tracks that never meet.
#   row 0:  . . B B B
#   row 1:  T T T T T
#   row 3:  P P P P .
#   row 4:  Q Q Q Q .
TRUNK = [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4)]
BRANCH = [(1, 2), (0, 2), (0, 3), (0, 4)]
PARALLEL = ([(3, 0), (3, 1), (3, 2), (3, 3)], [(4, 0), (4, 1), (4, 2), (4, 3)])
FORK = _tracks(5, 5, TRUNK, BRANCH, *PARALLEL)
# agents: 0 trunk start, 1 switch, 2 trunk end, 3 branch end (grid-adjacent to 2, 5 cells by rail),
# 4 and 5 side by side on the parallel tracks, 6 off the map, 7 on the same cell as 4
POSITIONS = [(1, 0), (1, 2), (1, 4), (0, 4), (3, 1), (4, 1), None, (3, 1)]


@pytest.mark.parametrize(
    "radius, pairs",
    [
        (0, [(4, 7)]),
        (1, [(4, 7)]),
        (2, [(4, 7), (0, 1), (1, 2)]),
        (3, [(4, 7), (0, 1), (1, 2), (1, 3)]),
        (4, [(4, 7), (0, 1), (1, 2), (1, 3), (0, 2)]),
        (5, [(4, 7), (0, 1), (1, 2), (1, 3), (0, 2), (0, 3), (2, 3)]),
        (10**6, [(4, 7), (0, 1), (1, 2), (1, 3), (0, 2), (0, 3), (2, 3)]),
    ],
)
def test_rail_neighbours_follow_rails_not_grid_distance(radius, pairs):
    out = rail_neighbours(POSITIONS, FORK, radius)
    assert out.dtype == bool and out.shape == (8, 8)
    np.testing.assert_array_equal(out, _linked(8, *pairs))


def test_rail_neighbours_straight_line_and_one_way_exits():
    line = _tracks(1, 6, [(0, c) for c in range(6)])
    positions = [(0, 0), (0, 2), (0, 5)]
    np.testing.assert_array_equal(rail_neighbours(positions, line, 1), _linked(3))
    np.testing.assert_array_equal(rail_neighbours(positions, line, 2), _linked(3, (0, 1)))
    np.testing.assert_array_equal(rail_neighbours(positions, line, 3), _linked(3, (0, 1), (1, 2)))
    np.testing.assert_array_equal(rail_neighbours(positions, line, 5), _linked(3, (0, 1), (1, 2), (0, 2)))
    one_way = np.zeros((1, 3, 4), dtype=bool)
    one_way[0, 0, 1] = one_way[0, 1, 1] = True  # exits east only: the search follows links as given
    np.testing.assert_array_equal(rail_neighbours([(0, 0), (0, 2)], one_way, 2), [[True, True], [False, True]])
    edge = np.zeros((1, 1, 4), dtype=bool)
    edge[0, 0] = True  # exits that leave the grid are ignored
    np.testing.assert_array_equal(rail_neighbours([(0, 0), None], edge, 3), np.eye(2, dtype=bool))
    assert rail_neighbours([], line, 2).shape == (0, 0)


@pytest.mark.parametrize("radius", [-1, 1.5, True, "2", np.int64(2), None])
def test_rail_neighbours_rejects_bad_radius(radius):
    with pytest.raises(ValueError, match=re.escape(f"radius: expected a non-negative int, got {radius!r}")):
        rail_neighbours(POSITIONS, FORK, radius)


def test_rail_exits_decode_flatlands_transitions():
    assert rail_exits(np.array([[0b0000_0100_0000_0001]])).tolist() == [[[False, True, False, True]]]  # E-W straight
    env, _ = make("flatland:5")
    env.reset(seed=2)
    rail = env.rail_env.rail
    exits = rail_exits(rail.grid)
    assert exits.shape == (rail.height, rail.width, 4) and exits.any()
    for r in range(rail.height):
        for c in range(rail.width):
            expected = np.any([rail.get_transitions(((r, c), d)) for d in range(4)], axis=0)
            np.testing.assert_array_equal(exits[r, c], expected, err_msg=str((r, c)))
            for d in np.flatnonzero(exits[r, c]):  # Flatland rails run both ways
                assert exits[next_cell((r, c), d) + ((d + 2) % 4,)], ((r, c), d)


def _positions(env):
    return [a.current_configuration[0] if a.state.is_on_map_state() else None for a in env.rail_env.agents]


def test_env_neighbours_symmetric_rail_bounded_and_isolating_off_map_agents():
    env, spec = make("flatland:5", malfunction_rate=0.0)
    _, infos = env.reset(seed=0)
    np.testing.assert_array_equal(env.neighbours(10**6), np.eye(5, dtype=bool))  # nobody has departed yet
    rng = np.random.default_rng(0)
    for _ in range(4):  # seed 0: agents depart one by one, agent 4 last (still off the map after 4 steps)
        _, _, _, _, infos = env.step({a: int(rng.choice(np.flatnonzero(infos[a]["action_mask"]))) for a in env.agents})
    checked = set()
    for _ in range(8):
        pos = _positions(env)
        off = [h for h, p in enumerate(pos) if p is None]
        previous = np.eye(5, dtype=bool)
        for radius in (0, 1, 3, 5, 10, 30, 10**6):
            out = env.neighbours(radius)
            assert out.shape == (spec.n_agents,) * 2 and out.dtype == bool
            np.testing.assert_array_equal(out, out.T)
            assert out.diagonal().all() and (out >= previous).all()  # grows with the radius
            np.testing.assert_array_equal(out, rail_neighbours(pos, rail_exits(env.rail_env.rail.grid), radius))
            for i, j in zip(*np.nonzero(out)):
                if i in off or j in off:
                    assert i == j
                else:  # a rail path is never shorter than the grid distance
                    assert abs(pos[i][0] - pos[j][0]) + abs(pos[i][1] - pos[j][1]) <= radius
            previous = out
        np.testing.assert_array_equal(env.neighbours(0), np.eye(5, dtype=bool))  # trains never share a cell
        checked.add((bool(off), bool(previous.sum() > 5)))
        _, _, _, _, infos = env.step({a: int(rng.choice(np.flatnonzero(infos[a]["action_mask"]))) for a in env.agents})
    assert {(True, True), (False, True)} <= checked  # off-map agents and linked ones both seen


def test_env_neighbours_errors():
    with pytest.raises(RuntimeError, match=r"neighbours: call reset\(\) first"):
        FlatlandEnv().neighbours(1)
    env, _ = make("flatland:5")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="radius: expected a non-negative int, got -1"):
        env.neighbours(-1)
