"""Pure helpers of the Flatland adapter: tree-observation flattening, action masks, deadlocks, rail neighbours.

Tree observation (``TreeObsForRailEnv``): every node has 12 features; the tree branches into
L / F / R / B (left, forward, right, back relative to the agent) down to ``max_depth``, so it has
``(4**(max_depth + 1) - 1) / 3`` nodes (21 at depth 2). `tree_to_array` lays the nodes out in
pre-order (node, then its L, F, R, B subtrees) as a ``(nodes, 12)`` array, with ``-inf`` rows for
branches that do not exist, so the size is fixed. `normalize_tree` maps it to ``[-1, 1]`` the way
Flatland's own training examples do (``normalize_observation``):

- distance features 0-5 (own target, other target, other agent, potential conflict, unusable
  switch, next branch) are divided by ``radius`` and clipped: missing (``-inf``) -> -1, not found (``+inf``) -> 1;
- feature 6 (shortest distance to own target from the node) is min-max normalized over the
  agent's own tree: ``(d - lo) / (hi - lo)`` with ``lo`` the smallest value >= 0 and ``hi`` one more
  than the largest value in ``(0, 1000)``, then clipped;
- agent features 7-11 (agents same / opposite direction, malfunction counter, slowest speed,
  agents ready to depart) are clipped to ``[-1, 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wmenv.checks import check_int

N_NODE_FEATURES = 12
BRANCHES = ("L", "F", "R", "B")
DO_NOTHING, MOVE_LEFT, MOVE_FORWARD, MOVE_RIGHT, STOP_MOVING = range(5)
N_ACTIONS = 5
LEFTMOST, RIGHTMOST, STOP = range(3)
"""The decision interface's actions (``FlatlandConfig.actions="decisions"``): take the leftmost open way, the
rightmost, or stop (wait, before departing)."""
N_DECISION_ACTIONS = 3
_MOVEMENT = ((-1, 0), (0, 1), (1, 0), (0, -1))  # N, E, S, W as (d_row, d_col)


def n_tree_nodes(max_depth: int) -> int:
    """Number of nodes of a full 4-ary tree of depth ``max_depth`` (21 for depth 2)."""
    return (4 ** (max_depth + 1) - 1) // 3


def _node_features(node: Any) -> tuple[float, ...]:
    return (
        node.dist_own_target_encountered,
        node.dist_other_target_encountered,
        node.dist_other_agent_encountered,
        node.dist_potential_conflict,
        node.dist_unusable_switch,
        node.dist_to_next_branch,
        node.dist_min_to_target,
        node.num_agents_same_direction,
        node.num_agents_opposite_direction,
        node.num_agents_malfunctioning,
        node.speed_min_fractional,
        node.num_agents_ready_to_depart,
    )


def tree_to_array(root: Any, max_depth: int) -> np.ndarray:
    """A Flatland tree observation -> ``(n_tree_nodes(max_depth), 12)`` float64, pre-order, ``-inf`` for missing nodes."""
    out = np.full((n_tree_nodes(max_depth), N_NODE_FEATURES), -np.inf)

    def fill(node: Any, depth: int, row: int) -> int:
        """Write the subtree rooted at ``node`` starting at ``row``; return the next free row."""
        size = n_tree_nodes(max_depth - depth)
        if node is None or not hasattr(node, "childs"):  # -inf marks a branch that does not exist
            return row + size
        out[row] = _node_features(node)
        nxt = row + 1
        for b in BRANCHES:
            if depth < max_depth:
                nxt = fill(node.childs.get(b) if node.childs else None, depth + 1, nxt)
        return row + size

    fill(root, 0, 0)
    return out


def normalize_tree(nodes: np.ndarray, radius: float) -> np.ndarray:
    """``(..., nodes, 12)`` raw features -> ``(..., nodes * 12)`` float32 in ``[-1, 1]`` (see the module docstring)."""
    if radius <= 0:
        raise ValueError(f"radius: expected > 0, got {radius}")
    out = np.empty(nodes.shape, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out[..., :6] = np.clip(nodes[..., :6] / radius, -1.0, 1.0)
        d = nodes[..., 6]  # (..., nodes)
        in_range = (d > 0) & (d < 1000)
        hi = np.maximum(1.0, np.where(in_range, d, 0.0).max(-1, keepdims=True)) + 1.0
        lo = np.where(d >= 0, d, np.inf).min(-1, keepdims=True)
        lo = np.minimum(lo, hi)
        span = np.where(hi == lo, hi, hi - lo)
        shift = np.where(hi == lo, 0.0, lo)
        out[..., 6] = np.clip((d - shift) / span, -1.0, 1.0)
        out[..., 7:] = np.clip(nodes[..., 7:], -1.0, 1.0)
    return out.reshape(*nodes.shape[:-2], -1).astype(np.float32)


def rail_action_mask(transitions: tuple[int, int, int, int], direction: int) -> np.ndarray:
    """(5,) bool: the actions that follow a real rail transition from a cell entered facing ``direction``.

    ``transitions[d]`` says whether the cell can be left towards ``d`` (N, E, S, W). DO_NOTHING and
    STOP_MOVING are always allowed. With one way out (straight, curve or dead end) FORWARD follows
    it, and LEFT / RIGHT only if it really turns left / right (Flatland would otherwise silently
    turn them into FORWARD). At a switch, LEFT / FORWARD / RIGHT are allowed where that exit exists
    (so FORWARD is masked when facing a symmetric switch, where Flatland rejects it).
    """
    mask = np.zeros(N_ACTIONS, dtype=bool)
    mask[DO_NOTHING] = mask[STOP_MOVING] = True
    exits = [d for d in range(4) if transitions[d]]
    left, right = (direction - 1) % 4, (direction + 1) % 4
    if len(exits) == 1:
        mask[MOVE_FORWARD] = True
        mask[MOVE_LEFT] = exits[0] == left
        mask[MOVE_RIGHT] = exits[0] == right
    elif exits:
        mask[MOVE_LEFT] = bool(transitions[left])
        mask[MOVE_FORWARD] = bool(transitions[direction])
        mask[MOVE_RIGHT] = bool(transitions[right])
    return mask


def decision_moves(transitions: tuple[int, int, int, int], direction: int) -> list[int]:
    """The Flatland moves open from a cell entered facing ``direction``, leftmost first (at most two on real maps).

    With one way out (straight, curve or dead end) that is ``[MOVE_FORWARD]``, which Flatland follows round the
    curve or back from the dead end; at a switch, the exits among left / straight / right in that order.
    """
    exits = [d for d in range(4) if transitions[d]]
    if len(exits) <= 1:
        return [MOVE_FORWARD]
    ways = ((MOVE_LEFT, (direction - 1) % 4), (MOVE_FORWARD, direction), (MOVE_RIGHT, (direction + 1) % 4))
    return [move for move, d in ways if transitions[d]]


def decision_cells(grid: np.ndarray, targets: Sequence[tuple[int, int]]) -> np.ndarray:
    """``(H, W)`` transition codes and the trains' target cells -> ``(H, W, 4)`` bool: where a train entered facing
    N, E, S or W decides (the NeurIPS 2020 Flatland winners' rule, which the MAMBA and MABL code use).

    A train decides on a switch (a cell with more than two transitions in all: switches and crossings) and on a
    target cell, facing any way, and on the cell before one: where an open transition leads into such a cell.
    Everywhere else it can only drive on.
    """
    codes = np.asarray(grid).astype(np.int64)
    H, W = codes.shape
    bits = (codes[..., None] >> np.arange(16)) & 1  # (H, W, 16)
    special = bits.sum(-1) > 2  # (H, W) switches and crossings
    for r, c in targets:
        special[r, c] = True
    groups = (codes[..., None] >> np.array([12, 8, 4, 0])) & 0xF  # (H, W, 4): travel facing N, E, S, W
    decide = np.repeat(special[..., None], 4, axis=-1)
    padded = np.pad(special, 1)  # False beyond the grid
    for d, (dr, dc) in enumerate(_MOVEMENT):
        ahead = padded[1 + dr : 1 + dr + H, 1 + dc : 1 + dc + W]  # (H, W): the cell towards d is special
        decide |= ((groups >> (3 - d)) & 1).astype(bool) & ahead[..., None]
    return decide


def next_cell(position: tuple[int, int], direction: int) -> tuple[int, int]:
    """The neighbouring cell when leaving ``position`` towards ``direction`` (N, E, S, W)."""
    dr, dc = _MOVEMENT[direction]
    return (position[0] + dr, position[1] + dc)


def find_deadlocked(
    on_map: Mapping[int, tuple[tuple[int, int], int]],
    transitions: Mapping[int, tuple[int, int, int, int]],
) -> set[int]:
    """Agents that can never move again: every exit of their cell is blocked by an agent that is itself stuck.

    The deadlock rule of the NeurIPS 2020 Flatland RL winners (jbr-ai-labs), computed as a fixpoint:
    an agent is *free* if one of its exit cells is empty or holds a free agent; agents that never
    become free are deadlocked (e.g. two trains facing each other on a single track, and any train
    queued behind them).

    Args:
        on_map: handle -> (position, direction) of every agent currently on the map.
        transitions: handle -> ``rail.get_transitions((position, direction))`` of the same agents.
    """
    occupant = {pos: h for h, (pos, _) in on_map.items()}
    exits = {h: [next_cell(pos, d) for d in range(4) if transitions[h][d]] for h, (pos, _) in on_map.items()}
    free = {h for h, cells in exits.items() if any(c not in occupant for c in cells)}
    changed = True
    while changed:
        changed = False
        for h, cells in exits.items():
            if h not in free and any(occupant[c] in free for c in cells if c in occupant):
                free.add(h)
                changed = True
    return {h for h, cells in exits.items() if h not in free and cells}


def rail_exits(grid: np.ndarray) -> np.ndarray:
    """``(H, W)`` Flatland transition codes (``rail.grid``) -> ``(H, W, 4)`` bool: the cell can be left towards N, E, S, W.

    A code holds four 4-bit groups, one per direction of travel into the cell (N first, most
    significant), each with one bit per exit (N first). An exit counts whatever the direction of
    travel, so the result is the OR of the four groups (a switch can be left through all its branches).
    """
    codes = np.asarray(grid).astype(np.int64)
    any_travel = (codes >> 12 | codes >> 8 | codes >> 4 | codes) & 0xF  # (H, W)
    return ((any_travel[..., None] >> np.array([3, 2, 1, 0])) & 1).astype(bool)  # (H, W, 4)


def _rail_ball(start: tuple[int, int], exits: np.ndarray, radius: int) -> set[tuple[int, int]]:
    """The cells at most ``radius`` rail steps from ``start`` (breadth-first over ``exits``)."""
    h, w = exits.shape[:2]
    seen, frontier = {start}, [start]
    for _ in range(radius):
        reached = []
        for cell in frontier:
            for d in np.flatnonzero(exits[cell]):
                nxt = next_cell(cell, int(d))
                if nxt not in seen and 0 <= nxt[0] < h and 0 <= nxt[1] < w:
                    seen.add(nxt)
                    reached.append(nxt)
        if not reached:
            break
        frontier = reached
    return seen


def rail_neighbours(positions: Sequence[tuple[int, int] | None], exits: np.ndarray, radius: int) -> np.ndarray:
    """(N, N) bool: ``[i, j]`` is True when agent j is within ``radius`` cells of agent i along the rails.

    Distance is counted in cells of a breadth-first search from agent i's cell that leaves every
    cell through any of its exits, whatever the direction of travel (a train ahead and a train behind
    are both near); cells reached in at most ``radius`` steps count (0: agent i's own cell only). Cells
    next to each other but not linked by rail (two parallel tracks) are not near. Agents off the map
    have no neighbours and are nobody's; ``[i, i]`` is always True. On a valid Flatland map every rail
    link runs both ways, so the result is symmetric.

    Args:
        positions: N agents' ``(row, col)``, or None for an agent that is not on the map.
        exits: (H, W, 4) bool, ``exits[r, c, d]``: the cell can be left towards d (N, E, S, W); see `rail_exits`.
        radius: the largest distance, in cells.

    Raises:
        ValueError: ``radius`` is not a non-negative int.
    """
    check_int("radius", radius, 0, expected="a non-negative int")
    assert exits.ndim == 3 and exits.shape[-1] == 4, f"exits: expected (H, W, 4), got {exits.shape}"
    cells = [None if p is None else (int(p[0]), int(p[1])) for p in positions]
    at: dict[tuple[int, int], list[int]] = {}
    for j, cell in enumerate(cells):
        if cell is not None:
            at.setdefault(cell, []).append(j)
    out = np.eye(len(cells), dtype=bool)
    for i, cell in enumerate(cells):
        if cell is not None:
            for near in _rail_ball(cell, exits, radius) & at.keys():
                out[i, at[near]] = True
    return out
