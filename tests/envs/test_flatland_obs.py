"""Pure Flatland helpers: tree flattening and normalization, rail action masks, deadlock detection."""

import numpy as np
import pytest
from flatland.envs.observations import Node

from wmenv.envs.flatland_obs import (
    find_deadlocked,
    n_tree_nodes,
    next_cell,
    normalize_tree,
    rail_action_mask,
    tree_to_array,
)

INF = np.inf


def _node(v, childs=None):
    """A node whose 12 features are v, v+1, ..., v+11."""
    return Node(*[v + i for i in range(12)], childs={} if childs is None else childs)


def test_tree_to_array_fixed_layout_with_missing_branches():
    full = {b: _node(100 + 10 * k) for k, b in enumerate("LFRB")}
    root = _node(0, {"L": -INF, "F": _node(1), "R": _node(2, full), "B": -INF})  # F: a leaf above max depth
    arr = tree_to_array(root, max_depth=2)
    assert arr.shape == (n_tree_nodes(2), 12) == (21, 12)
    np.testing.assert_array_equal(arr[0], np.arange(12))
    assert np.all(arr[1:6] == -INF)  # L subtree: node + 4 children
    np.testing.assert_array_equal(arr[6], np.arange(1, 13))
    assert np.all(arr[7:11] == -INF)  # F has no children
    np.testing.assert_array_equal(arr[11], np.arange(2, 14))
    np.testing.assert_array_equal(arr[12:16, 0], [100, 110, 120, 130])  # R's children in L, F, R, B order
    assert np.all(arr[16:21] == -INF)
    assert tree_to_array(None, 2).shape == (21, 12) and np.all(tree_to_array(None, 2) == -INF)
    assert tree_to_array(root, 1).shape == (5, 12)


def test_normalize_tree():
    nodes = np.full((3, 12), -INF)
    nodes[0] = [0, 5, 25, INF, 10, 3, 20, 3, 0, 40, 0.5, 1]
    nodes[1] = [2, INF, INF, INF, INF, 7, 25, 0, 1, 0, 1, 0]
    nodes[2, 6] = 30
    out = normalize_tree(nodes, radius=10).reshape(3, 12)
    assert out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1
    np.testing.assert_allclose(out[0, :6], [0, 0.5, 1, 1, 1, 0.3])
    np.testing.assert_allclose(out[1, :6], [0.2, 1, 1, 1, 1, 0.7])
    np.testing.assert_allclose(out[:, 6], [0, 5 / 11, 10 / 11], rtol=1e-6)  # lo = 20, hi = 30 + 1
    np.testing.assert_allclose(out[0, 7:], [1, 0, 1, 0.5, 1])
    np.testing.assert_array_equal(out[2, :6], -1)  # missing node
    batched = normalize_tree(np.stack([nodes, nodes]), radius=10)
    assert batched.shape == (2, 36)
    np.testing.assert_array_equal(batched[1], out.reshape(-1))
    with pytest.raises(ValueError, match="radius: expected > 0, got 0"):
        normalize_tree(nodes, 0)


# directions: 0 N, 1 E, 2 S, 3 W; actions: 0 nothing, 1 left, 2 forward, 3 right, 4 stop
@pytest.mark.parametrize(
    ("transitions", "direction", "expected"),
    [
        ((0, 1, 0, 0), 1, [1, 0, 1, 0, 1]),  # straight east
        ((1, 0, 0, 0), 1, [1, 1, 1, 0, 1]),  # curve turning left (east -> north): LEFT and FORWARD follow it
        ((0, 0, 1, 0), 1, [1, 0, 1, 1, 1]),  # curve turning right (east -> south)
        ((0, 0, 0, 1), 1, [1, 0, 1, 0, 1]),  # dead end: FORWARD turns around
        ((1, 1, 0, 0), 1, [1, 1, 1, 0, 1]),  # switch: left or straight
        ((1, 0, 1, 0), 1, [1, 1, 0, 1, 1]),  # facing a symmetric switch: no FORWARD
        ((0, 0, 0, 0), 1, [1, 0, 0, 0, 1]),  # no rail
    ],
)
def test_rail_action_mask(transitions, direction, expected):
    np.testing.assert_array_equal(rail_action_mask(transitions, direction), np.array(expected, dtype=bool))


def test_next_cell():
    assert [next_cell((5, 5), d) for d in range(4)] == [(4, 5), (5, 6), (6, 5), (5, 4)]


EAST, WEST = (0, 1, 0, 0), (0, 0, 0, 1)


def test_find_deadlocked_head_on_and_queue():
    on_map = {0: ((0, 1), 1), 1: ((0, 2), 3), 2: ((0, 0), 1), 3: ((0, 4), 1), 4: ((0, 3), 1)}
    trans = {0: EAST, 1: WEST, 2: EAST, 3: EAST, 4: EAST}
    # 0 and 1 face each other; 2 queues behind 0; 3 has a free cell ahead; 4 follows 3, which can move
    assert find_deadlocked(on_map, trans) == {0, 1, 2}


def test_find_deadlocked_switch_escape_and_empty():
    on_map = {0: ((0, 1), 1), 1: ((0, 2), 3)}
    trans = {0: EAST, 1: (1, 0, 0, 1)}  # 1 can also leave north
    assert find_deadlocked(on_map, trans) == set()
    assert find_deadlocked({}, {}) == set()
