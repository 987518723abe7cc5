"""Decentralized agents leave Python: one ONNX graph per agent type for one recurrent decision step.

```python
from exports import OnnxAgent, export_agent, export_wm_agent

export_agent(policy, "agent.onnx", spec=spec)      # GRU, Mamba or SP-Mamba policy
agent = OnnxAgent("agent.onnx", spec=spec)         # onnxruntime, CUDA provider where there is a GPU
agent.reset(batch_size=3)
actions = agent.act(obs, action_mask)              # (3,) int64; the recurrent state stays inside

export_wm_agent(world_model, policy, "wm.onnx")    # the agent's own world-model filter + its actor, one graph
agent = OnnxAgent("wm.onnx", spec=spec)
agent.reset(batch_size=3)                          # 3 agents, slots 0, 1, 2
actions = agent.act(obs, action_mask, resets, messages, heard)  # messages (3, N, M) received, in sender slots
agent.outgoing                                     # (3, M): what they send next
```
"""

from exports.agent import OnnxAgent, default_providers, play_episode
from exports.onnx import EXPORT_FORMAT, agent_types, export_agent, export_agent_types
from exports.wm_agent import export_wm_agent

__all__ = [
    "EXPORT_FORMAT",
    "OnnxAgent",
    "agent_types",
    "default_providers",
    "export_agent",
    "export_agent_types",
    "export_wm_agent",
    "play_episode",
]
