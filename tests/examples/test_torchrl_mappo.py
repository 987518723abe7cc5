"""The TorchRL MAPPO reference: a tiny run writes finite curves at our evaluation steps, and its greedy
evaluation is our protocol (same seeds, env steps, return per agent)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchrl")
pytest.importorskip("tyro")

import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.envs.utils import ExplorationType, set_exploration_type  # noqa: E402

from wmenv.envs.vector import VecEnv  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "benchmarks"))
import torchrl_mappo as tm  # noqa: E402

ENV = "mpe:simple_spread_v3"
TINY = tm.PPOConfig(frames_per_batch=200, minibatch_size=100, num_epochs=2, num_cells=32)


def test_tiny_run_writes_finite_curve_and_skips_finished_seeds(tmp_path, capsys):
    ref = tmp_path / "ours.json"  # a stand-in for our curve, evaluated at the same steps
    ours = [{"seed": 0, "eval_returns": [[0, -30.0], [200, -25.0], [400, -20.0]]}]
    ref.write_text(json.dumps({"summary": {"env_id": ENV}, "runs": ours}))
    refs = [str(ref), str(tmp_path / "missing.json")]
    args = tm.Args(env_id=ENV, seeds=[0], total_steps=400, eval_every=200, eval_episodes=2, ppo=TINY, reference=refs,
                   progress=False, out=str(tmp_path / "out"))  # fmt: skip
    summary = tm.main(args)
    data = json.loads((tmp_path / "out" / "mpe_simple_spread_v3.json").read_text())
    assert data["summary"] == summary and summary["seeds"] == [0] and summary["benchmark"] == "torchrl_mappo"
    (run,) = data["runs"]
    assert run["env_steps"] == 400
    assert [s for s, _ in run["eval_returns"]] == [0, 200, 400], "evaluated at step 0 and every 200 env steps"
    assert all(np.isfinite(v) and v < 0 for _, v in run["eval_returns"]), "MPE spread returns are negative"
    assert [s for s, _ in run["train_returns"]] == [200, 400] and all(np.isfinite(v) for _, v in run["train_returns"])
    (cmp,) = summary["comparison"]
    assert cmp["ours"]["curve"] == [-30.0, -25.0, -20.0] and cmp["ours"]["mean_after_step0"] == -22.5
    tr = [v for _, v in run["eval_returns"]]
    assert cmp["torchrl"]["last3"] == round(float(np.mean(tr)), 3)
    assert cmp["ours_at_least_as_good"] == (cmp["torchrl"]["mean_after_step0"] <= -22.5 and cmp["torchrl"]["last3"] <= -25.0)
    assert (tmp_path / "out" / "parts" / "mpe_simple_spread_v3_seed0.json").is_file()
    capsys.readouterr()
    again = tm.main(args)  # resumable: the finished seed is not trained again
    assert "seed 0: finished earlier" in capsys.readouterr().out
    assert again["last3_eval_return_mean"] == summary["last3_eval_return_mean"]


def test_evaluate_is_our_protocol():
    """`evaluate` equals a greedy loop over our `VecEnv` (copy i seeded seed + i, return per agent)."""
    torch.manual_seed(0)
    policy, _ = tm.make_modules(tm.make_env(ENV, 0, {}), TINY)
    episodes, seed = 3, 1_000_000
    got = tm.evaluate(policy, ENV, episodes, seed, {})
    greedy = set_exploration_type(ExplorationType.DETERMINISTIC)
    with VecEnv(ENV, num_envs=episodes, seed=seed) as vec, torch.no_grad(), greedy:
        s, returns = vec.reset(), np.full(episodes, np.nan)
        while np.isnan(returns).any():
            td = TensorDict({("agents", "observation"): torch.as_tensor(s.obs)}, batch_size=[episodes])  # (E, N, D)
            s = vec.step(policy(td)["agents", "action"].numpy())  # (E, N)
            first = s.done & np.isnan(returns)
            returns[first] = s.episode_return[first].mean(-1)
    assert got == pytest.approx(float(returns.mean()), abs=1e-4)
