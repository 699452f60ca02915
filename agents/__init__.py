"""RL algorithms that train a step policy in the chain MDP. DxDP first."""
from .dxdp import DxDP, DxDPConfig
from .losses import SamplerLoss, ValueTDLoss, soft_value, time_cost

__all__ = ["DxDP", "DxDPConfig", "SamplerLoss", "ValueTDLoss", "soft_value", "time_cost"]
