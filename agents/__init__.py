"""RL algorithms that train a step policy in the chain MDP: DxDP, REINFORCE and PPO (one objective)."""
from .dxdp import DxDP, DxDPConfig
from .losses import SamplerLoss, ValueTDLoss, soft_value, time_cost
from .ppo import PPO, PPOConfig, clipped_surrogate, gae
from .reinforce import PolicyGradientAgent, Reinforce, ReinforceConfig, leave_one_out_baseline, reward_to_go

__all__ = [
    "DxDP", "DxDPConfig", "SamplerLoss", "ValueTDLoss", "soft_value", "time_cost",
    "Reinforce", "ReinforceConfig", "PPO", "PPOConfig", "PolicyGradientAgent", "gae", "clipped_surrogate",
    "reward_to_go", "leave_one_out_baseline",
]
