"""The application layer: configs and presets, the one run life cycle for every task, the command line.

    from diffrl.app import load_config, train, from_run
    train(load_config("8gaussians", ["train.teacher=runs/teacher"]), "runs/dxmi", agent=my_factory)
    run = from_run("runs/dxmi")            # teacher, policy, MDP, reward, value, data splits

It may import every layer; nothing imports it (the package namespace ``diffrl`` re-exports its
entry points lazily).
"""
from .config import ExperimentConfig, load_config
from .pipeline import AgentFactory, RewardFactory, Run, evaluate, from_run, pretrain, sample, train

__all__ = ["AgentFactory", "ExperimentConfig", "RewardFactory", "Run", "evaluate", "from_run", "load_config", "pretrain", "sample", "train"]
