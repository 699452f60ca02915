"""diffrl: the denoising chain of a diffusion model as a reinforcement-learning problem.

Core (framework-free torch): schedules, step policies, the chain MDP, reward models, the DxMI
loop. ``diffrl.envs`` has Gymnasium and TorchRL environments; ``diffrl.agents`` has DxDP.
"""
from .data import Normalizer, toy_data
from .ddpm import DDPM
from .dxmi import DxMI
from .mdp import ChainMDP
from .metrics import energy_auc, mmd_rbf, sliced_wasserstein
from .nets import AtTime, TimeMLP
from .policy import DDIMMean, GaussianStepPolicy, rollout
from .rewards import EnergyReward, FixedReward, RewardModel
from .schedules import ChainSchedule

__version__ = "0.1.0"

__all__ = [
    "AtTime", "ChainMDP", "ChainSchedule", "DDIMMean", "DDPM", "DxMI", "EnergyReward", "FixedReward",
    "GaussianStepPolicy", "Normalizer", "RewardModel", "TimeMLP", "energy_auc", "mmd_rbf", "rollout",
    "sliced_wasserstein", "toy_data",
]
