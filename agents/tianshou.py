"""Tianshou 2 over diffrl's step policy: stock algorithms fine-tune the same sampler DxDP fine-tunes.

The only module of diffrl that imports tianshou. Three layers:

1. Networks. ``StepActor`` is a Tianshou actor over a ``GaussianStepPolicy``: observation ->
   ((mean, sigma_t), state), the policy's own ``dist(x, t)``, so PPO, A2C, REINFORCE, NPG or TRPO
   (``step_policy``) act and learn with exactly the teacher-initialised sampler.
   ``SquashedStepActor`` is its SAC form (``sac_policy``, see "SAC" below). ``value_critic`` /
   ``q_critic`` build time-conditioned critics (``TimeMLP`` on (x, t)); ``StepPolicyAdam`` gives
   the sampler's mean, its log sigma and everything else (critics) their own learning rates.
   Observations are what the envs give: the flat Box ``[x.flatten(), t / T]`` or the Dict
   ``{"x", "t"}`` (``split_observation``).
2. ``DxDPAlgorithm``: DxDP as a Tianshou ``OnPolicyAlgorithm``. Its learning step rebuilds whole
   chains (T + 1, B, ...) from the collected transitions and calls ``DxDP.update`` on them, so a
   stock ``OnPolicyTrainer`` runs DxDP as it runs PPO, and the update is bitwise diffrl's.
3. ``TianshouPPOAgent`` / ``TianshouSACAgent`` (factories ``tianshou_ppo`` / ``tianshou_sac``):
   stock Tianshou PPO and SAC as diffrl ``Agent``s of the DxMI loop. ``update(chain)`` turns the
   chain into a Tianshou buffer whose rewards are ``mdp.step_reward`` computed at update time (the
   DxMI loop changes the reward every iteration) and calls the algorithm's own ``update``.

The objective is DxDP's (``agents/losses.py``), per chain, with per-dimension costs:

    J = E[ sum_t r_t ] + tau_entropy sum_t log sigma_t,   r_t = ChainMDP.step_reward (higher is better)

A D-dimensional Gaussian step has entropy D log sigma_t + const, so the entropy term is
(tau_entropy / D) times the policy's entropy, summed over steps. How it enters each algorithm:

- PPO: Tianshou's entropy bonus ``ent_coef * mean entropy`` with ``ent_coef = tau_entropy / D``,
  undiscounted (gamma = 1) and without advantage normalisation. PPO's loss averages over the
  transitions, i.e. over the T steps of each chain, so at ratio 1 the gradient of -T times its
  actor-and-entropy loss is the policy gradient of J (with GAE advantages for the return part).
- SAC: a fixed temperature ``alpha = tau_entropy / D`` (no auto-tuning), gamma = 1; SAC's soft
  value counts -alpha log pi(a_t | s_t) once per step, the entropy term of J (Tianshou's log pi is
  that of the action normalised to [-1, 1], D log b below the action's own: a constant).
- DxDP: the same ``mdp.tau_entropy``, in its own losses.

SAC needs a bounded action: Tianshou's SAC policy samples u ~ N(loc, scale), squashes tanh(u) and
scales it to the action box (-b, b). ``SquashedStepActor`` writes the sampler's (mean m, sigma)
through this map, ``loc = atanh(m / b)`` and ``scale = sigma / (b (1 - (m / b)^2))``, so that
b tanh(u) has median m and, to first order in sigma, standard deviation sigma: the teacher's chain
survives up to the curvature of tanh, which is small when |m| << b (b = 10 for standardised data:
|m / b| < 0.4, the median exact, the spread off by at most a few percent). What is lost: means
beyond 0.999 b are clamped (no gradient there); SAC's own policy is the squashed one, while
``policy`` (what the DxMI loop samples and evaluates with) stays the Gaussian; the chains the
agent collects come from that Gaussian and SAC learns from them off-policy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tianshou.algorithm import PPO, SAC
from tianshou.algorithm.algorithm_base import Algorithm, OnPolicyAlgorithm, TrainingStats
from tianshou.algorithm.modelfree.reinforce import ProbabilisticActorPolicy
from tianshou.algorithm.modelfree.sac import SACPolicy
from tianshou.algorithm.optim import OptimizerFactory, ParamsType
from tianshou.data import Batch, ReplayBuffer
from tianshou.utils.torch_utils import policy_within_training_step
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from diffrl.agent import with_options
from diffrl.mdp import ChainMDP
from diffrl.nets import TimeMLP
from diffrl.policy import GaussianStepPolicy

from .dxdp import DxDP
from .losses import entropy_bonus

__all__ = [
    "flat_observation", "split_observation", "chain_objective",
    "StepActor", "SquashedStepActor", "StepValueCritic", "StepQCritic", "value_critic", "q_critic",
    "StepPolicyAdam", "step_policy", "sac_policy",
    "DxDPAlgorithm", "DxDPTrainingStats",
    "TianshouPPOConfig", "TianshouSACConfig", "TianshouPPOAgent", "TianshouSACAgent", "tianshou_ppo", "tianshou_sac",
]

SQUASH_LIMIT = 0.999
"""|mean / b| is clamped to this in ``SquashedStepActor`` (atanh and 1 / (1 - y^2) stay finite)."""


# ---------------------------------------------------------------- observations


def flat_observation(x: Tensor, t: Tensor, horizon: int) -> Tensor:
    """The flat observation ``[x.flatten(), t / T]``: x (N, *event), t (N,) -> (N, D + 1) float32."""
    return torch.cat([x.flatten(1).float(), (t.float() / horizon)[:, None]], dim=1)


def split_observation(obs: Any, event_shape: tuple[int, ...], horizon: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """A Tianshou observation batch -> (x (N, *event) float32, t (N,) long), on ``device``.

    obs: the flat (N, D + 1) array or tensor ``[x.flatten(), t / T]`` (t recovered by rounding
    t/T * T), or a Batch / dict with ``x`` (N, *event) and ``t`` (N,).
    """
    if isinstance(obs, (Batch, dict)):
        return torch.as_tensor(obs["x"], device=device).float(), torch.as_tensor(obs["t"], device=device).reshape(-1).long()
    flat = torch.as_tensor(obs, device=device, dtype=torch.float32)
    dim = math.prod(event_shape)
    if flat.ndim != 2 or flat.shape[1] != dim + 1:
        raise ValueError(f"expected flat observations of shape (N, D + 1) = (N, {dim + 1}), got {tuple(flat.shape)}")
    return flat[:, :dim].reshape(-1, *event_shape), (flat[:, dim] * horizon).round().long()


def chain_objective(chain: Tensor, mdp: ChainMDP, log_sigma: Tensor) -> Tensor:
    """DxDP's objective per chain, ``sum_t r_t + mdp.tau_entropy sum_t log sigma_t`` (higher is better):
    chain (T + 1, B, ...), log_sigma (T,) -> (B,)."""
    horizon, batch = chain.shape[0] - 1, chain.shape[1]
    steps = torch.arange(horizon, device=chain.device)
    reward = mdp.step_reward(chain[:-1], chain[1:], steps.view(-1, 1).expand(horizon, batch)).sum(0)
    return reward + entropy_bonus(mdp, log_sigma, steps).sum()


# ---------------------------------------------------------------- networks


class StepActor(nn.Module):
    """A Tianshou actor over ``policy``: obs -> ((mean (N, *event), sigma_t (N, *event)), state).

    Give ``StepActor.dist_fn`` as the policy's ``dist_fn``: it builds the policy's own
    ``dist(x, t)``, an Independent Normal over the event dimensions.
    """

    def __init__(self, policy: GaussianStepPolicy) -> None:
        super().__init__()
        self.step_policy = policy

    def forward(self, obs: Any, state: Any = None, info: Any = None) -> tuple[tuple[Tensor, Tensor], Any]:
        p = self.step_policy
        x, t = split_observation(obs, p.event_shape, p.horizon, p.log_sigma.device)
        normal = p.dist(x, t).base_dist
        return (normal.loc, normal.scale), state

    def dist_fn(self, loc_scale: tuple[Tensor, Tensor]) -> Independent:
        loc, scale = loc_scale
        return Independent(Normal(loc, scale), len(self.step_policy.event_shape))


class SquashedStepActor(nn.Module):
    """The SAC actor over ``policy`` with action bound b: obs -> ((loc, scale) (N, D), state) with
    loc = atanh(m / b) and scale = sigma / (b (1 - (m / b)^2)), so that b tanh(u), u ~ N(loc, scale),
    has median m and spread sigma to first order (module docstring). Point data only (1-D events)."""

    def __init__(self, policy: GaussianStepPolicy, bound: float) -> None:
        super().__init__()
        if len(policy.event_shape) != 1:
            raise ValueError(f"Tianshou's SAC needs flat actions; this sampler's events have shape {policy.event_shape}")
        if not bound > 0:
            raise ValueError(f"the action bound must be > 0, got {bound}")
        self.step_policy, self.bound = policy, float(bound)

    def forward(self, obs: Any, state: Any = None, info: Any = None) -> tuple[tuple[Tensor, Tensor], Any]:
        p = self.step_policy
        x, t = split_observation(obs, p.event_shape, p.horizon, p.log_sigma.device)
        normal = p.dist(x, t).base_dist
        y = (normal.loc / self.bound).clamp(-SQUASH_LIMIT, SQUASH_LIMIT)
        return (torch.atanh(y), normal.scale / (self.bound * (1 - y.pow(2)))), state


class StepValueCritic(nn.Module):
    """V(obs) = net(x.flatten, t) -> (N,), for t in 0..T (t = T for terminal next-states, which
    Tianshou masks); net(x (N, D), t (N,) float) -> (N,), e.g. ``TimeMLP(D, 1)``."""

    def __init__(self, net: nn.Module, event_shape: tuple[int, ...], horizon: int) -> None:
        super().__init__()
        self.net, self.event_shape, self.horizon = net, tuple(event_shape), horizon

    def forward(self, obs: Any, state: Any = None, info: Any = None) -> Tensor:
        x, t = split_observation(obs, self.event_shape, self.horizon, next(self.net.parameters()).device)
        return self.net(x.flatten(1), t.float())


class StepQCritic(nn.Module):
    """Q(obs, act) = net([x.flatten, bound * act], t) -> (N, 1); act (N, D) is SAC's normalised action in
    [-1, 1] (the buffer's convention), so bound * act is x_{t+1}. net(z (N, 2D), t (N,) float) -> (N,)."""

    def __init__(self, net: nn.Module, event_shape: tuple[int, ...], horizon: int, bound: float) -> None:
        super().__init__()
        self.net, self.event_shape, self.horizon, self.bound = net, tuple(event_shape), horizon, float(bound)

    def forward(self, obs: Any, act: Any) -> Tensor:
        device = next(self.net.parameters()).device
        x, t = split_observation(obs, self.event_shape, self.horizon, device)
        act = torch.as_tensor(act, device=device, dtype=torch.float32)
        return self.net(torch.cat([x.flatten(1), self.bound * act], dim=1), t.float())[:, None]


def value_critic(event_shape: tuple[int, ...], horizon: int, hidden: int = 128, depth: int = 3, time_dim: int = 64) -> StepValueCritic:
    """A fresh state-value critic V(x, t): a ``TimeMLP(D, 1)``."""
    dim = math.prod(event_shape)
    return StepValueCritic(TimeMLP(dim, 1, hidden=hidden, depth=depth, time_dim=time_dim), event_shape, horizon)


def q_critic(event_shape: tuple[int, ...], horizon: int, bound: float, hidden: int = 128, depth: int = 3, time_dim: int = 64) -> StepQCritic:
    """A fresh action-value critic Q(x, t, x_{t+1}): a ``TimeMLP(2 D, 1)``."""
    dim = math.prod(event_shape)
    return StepQCritic(TimeMLP(2 * dim, 1, hidden=hidden, depth=depth, time_dim=time_dim), event_shape, horizon, bound)


class StepPolicyAdam(OptimizerFactory):
    """Adam with up to three learning rates, by parameter: the sampler's mean network ``lr_sampler``,
    its log sigma ``lr_sigma`` (spec: sigma has its own, larger rate), anything else ``lr_other``
    (a critic sharing the optimiser, as in Tianshou's PPO)."""

    def __init__(self, policy: GaussianStepPolicy, lr_sampler: float, lr_sigma: float, lr_other: float) -> None:
        super().__init__()
        self.step_policy, self.lr_sampler, self.lr_sigma, self.lr_other = policy, lr_sampler, lr_sigma, lr_other

    def _create_optimizer_for_params(self, params: ParamsType) -> torch.optim.Optimizer:
        sigma = {id(p) for p in self.step_policy.sigma_parameters()}
        mean = {id(p) for p in self.step_policy.mean_parameters()}
        groups: dict[str, list] = {"mean": [], "sigma": [], "other": []}
        for p in params:
            groups["sigma" if id(p) in sigma else "mean" if id(p) in mean else "other"].append(p)
        lr = {"mean": self.lr_sampler, "sigma": self.lr_sigma, "other": self.lr_other}
        return torch.optim.Adam([{"params": ps, "lr": lr[k]} for k, ps in groups.items() if ps])


def step_policy(policy: GaussianStepPolicy) -> ProbabilisticActorPolicy:
    """The Tianshou policy acting with ``policy``: actions are x_{t+1} as sampled, unscaled and
    unclipped (its action space: the unbounded Box of the event shape)."""
    actor = StepActor(policy)
    space = gym.spaces.Box(-np.inf, np.inf, shape=policy.event_shape, dtype=np.float32)
    return ProbabilisticActorPolicy(actor=actor, dist_fn=actor.dist_fn, action_space=space,
                                    action_scaling=False, action_bound_method=None)


def sac_policy(policy: GaussianStepPolicy, bound: float) -> SACPolicy:
    """Tianshou's SAC policy over ``policy`` for the action box (-bound, bound)^D (stochastic also in
    evaluation: the max-entropy objective is about the stochastic sampler)."""
    space = gym.spaces.Box(-bound, bound, shape=policy.event_shape, dtype=np.float32)
    return SACPolicy(actor=SquashedStepActor(policy, bound), action_space=space, deterministic_eval=False)


# ---------------------------------------------------------------- DxDP as a Tianshou algorithm


@dataclass(kw_only=True)
class DxDPTrainingStats(TrainingStats):
    """One learning step: the means of DxDP's losses over its ``repeat`` updates, and the number of
    complete chains they used."""

    loss_value: float
    loss_sampler: float
    chains: int


class DxDPAlgorithm(OnPolicyAlgorithm[ProbabilisticActorPolicy]):
    """DxDP as a Tianshou on-policy algorithm: each learning step rebuilds the complete chains
    (T + 1, n, *event) of the collected transitions and calls ``dxdp.update`` on them ``repeat`` times.

    policy: the Tianshou policy acting with DxDP's sampler (default ``step_policy(dxdp.policy)``).
    Rewards in the buffer are not read: DxDP computes its costs from ``dxdp.mdp`` at update time.
    Run it with ``OnPolicyTrainerParams(batch_size=None, ...)`` (DxDP's own ``sampler_batch`` sets
    its minibatch) and collect whole episodes (``collection_step_num_episodes``, or ``n_step`` a
    multiple of T * num_envs from a reset); chains the buffer holds only part of are skipped.
    AVR (``mdp.update_velocity_scale``) is the DxMI loop's job, not this algorithm's.
    ``state_dict`` holds the sampler, the value (and target value) and DxDP's Adam states.
    """

    def __init__(self, *, dxdp: DxDP, policy: ProbabilisticActorPolicy | None = None) -> None:
        policy = policy or step_policy(dxdp.policy)
        if not isinstance(policy.actor, StepActor) or policy.actor.step_policy is not dxdp.policy:
            raise ValueError("the Tianshou policy must act with DxDP's own sampler: step_policy(dxdp.policy)")
        super().__init__(policy=policy)
        self.dxdp = dxdp
        self.value = dxdp.value
        if dxdp.target_value is not None:
            self.target_value = dxdp.target_value
        self._optimizers = [Algorithm.Optimizer(dxdp.policy_optimizer, dxdp.policy),
                            Algorithm.Optimizer(dxdp.value_optimizer, dxdp.value)]

    def _preprocess_batch(self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray) -> Batch:
        """Adds ``batch.chain`` (N,): the number of each transition's chain among the complete chains of
        the batch (in buffer order of their first step), -1 for a chain the batch holds only part of."""
        horizon, p = self.dxdp.mdp.horizon, self.dxdp.policy
        t = split_observation(batch.obs, p.event_shape, horizon, torch.device("cpu"))[1].numpy()
        position = np.full(buffer.maxsize, -1)
        position[indices] = np.arange(len(indices))
        rows = [indices[t == 0]]
        complete = np.ones(len(rows[0]), dtype=bool)
        for k in range(1, horizon):
            following = buffer.next(rows[-1])
            at = position[following]
            complete &= (following != rows[-1]) & (at >= 0) & (t[at] == k)
            rows.append(following)
        complete &= buffer.terminated[rows[-1]]
        batch.chain = np.full(len(indices), -1)
        for row in rows:
            batch.chain[position[row[complete]]] = np.arange(int(complete.sum()))
        return batch

    def chains(self, batch: Batch) -> Tensor:
        """The complete chains (T + 1, n, *event) of a preprocessed batch, on the MDP's device."""
        horizon, p = self.dxdp.mdp.horizon, self.dxdp.policy
        keep = batch.chain >= 0
        if not keep.any():
            raise ValueError("no complete chain in the collected data: collect whole episodes "
                             "(collection_step_num_episodes, or n_step a multiple of T * num_envs)")
        device = self.dxdp.mdp.velocity_scale_sq.device
        x, t = split_observation(batch.obs[keep], p.event_shape, horizon, device)
        x_next = split_observation(batch.obs_next[keep], p.event_shape, horizon, device)[0]
        ids = torch.as_tensor(batch.chain[keep], device=device)
        chain = x.new_empty((horizon + 1, int(ids.max()) + 1, *p.event_shape))
        chain[t, ids] = x
        last = t == horizon - 1
        chain[horizon, ids[last]] = x_next[last]
        return chain

    def _update_with_batch(self, batch: Batch, batch_size: int | None, repeat: int) -> DxDPTrainingStats:  # type: ignore[override]
        if batch_size is not None:
            raise ValueError(f"DxDP learns from whole chains: run it with batch_size=None (got {batch_size}); "
                             "its sampler minibatch is DxDPConfig.sampler_batch")
        chain = self.chains(batch)
        metrics = [self.dxdp.update(chain) for _ in range(repeat)]
        return DxDPTrainingStats(
            loss_value=float(torch.stack([m["loss_value"] for m in metrics]).mean()),
            loss_sampler=float(torch.stack([m["loss_sampler"] for m in metrics]).mean()),
            chains=chain.shape[1],
        )


# ---------------------------------------------------------------- stock PPO and SAC as diffrl agents


@dataclass
class TianshouPPOConfig:
    """Settings of ``TianshouPPOAgent``. The defaults train a randomly initialised 2-D sampler on the
    Gaussian-target chain to within 1% of its optimum in 50 DxMI iterations of 256 chains (tests);
    fine-tuning a pretrained teacher wants smaller sampler rates (spec section 11), which the
    factories take from an ExperimentConfig's ``train.dxdp``.

    lr_sampler / lr_sigma / lr_critic: Adam rates of the sampler's mean network, of log sigma, of the critic.
    repeat: PPO epochs over each batch of chains; batch_size: transitions per minibatch (None: all).
    eps_clip, gae_lambda, vf_coef, max_grad_norm: Tianshou's PPO arguments (gamma is 1, advantages
    are not normalised: see the module docstring). max_batchsize: chunk size of PPO's no-grad passes.
    critic_hidden / critic_depth / critic_time_dim: the value critic's ``TimeMLP``.
    """

    lr_sampler: float = 1e-4
    lr_sigma: float = 1e-2
    lr_critic: float = 1e-3
    repeat: int = 4
    batch_size: int | None = 512
    eps_clip: float = 0.2
    gae_lambda: float = 0.95
    vf_coef: float = 0.5
    max_grad_norm: float | None = 1.0
    max_batchsize: int = 8192
    critic_hidden: int = 128
    critic_depth: int = 3
    critic_time_dim: int = 64


@dataclass
class TianshouSACConfig:
    """Settings of ``TianshouSACAgent``. The defaults train a randomly initialised 2-D sampler on the
    Gaussian-target chain to within 3% of its optimum in 50 DxMI iterations of 256 chains (tests);
    a pretrained teacher wants smaller sampler rates, as for ``TianshouPPOConfig``.

    lr_sampler / lr_sigma / lr_critic: Adam rates of the sampler's mean network, of log sigma, of both critics.
    action_bound: b of the action box (-b, b) that SAC's tanh squashing needs (module docstring).
    gradient_steps: SAC updates per ``update(chain)``, each on ``batch_size`` transitions drawn
    uniformly from the last ``replay_size`` transitions (rewards recomputed at every draw).
    target_update: Polyak rate of the target critics. critic_*: each critic's ``TimeMLP``.
    """

    lr_sampler: float = 1e-4
    lr_sigma: float = 1e-2
    lr_critic: float = 1e-3
    action_bound: float = 10.0
    gradient_steps: int = 8
    batch_size: int = 256
    replay_size: int = 20_000
    target_update: float = 0.005
    critic_hidden: int = 128
    critic_depth: int = 3
    critic_time_dim: int = 64


def _settings(cls: type, config: Any) -> Any:
    """``config`` itself when it is a ``cls``; the defaults for None. For an ExperimentConfig: PPO takes
    the run's ``train.ppo`` section (agent=ppo's, so the PPO implementations run at equal settings),
    SAC the run's ``train.dxdp`` rates (sampler, sigma, value for the critics); both the ``net`` sizes
    for their critics, then ``train.agent_options`` on top (e.g. ``train.agent_options.lr_sampler=1e-5``)."""
    if isinstance(config, cls):
        return config
    if config is None:
        return cls()
    net = config.net
    settings = replace(cls(), critic_hidden=net.hidden, critic_depth=net.depth, critic_time_dim=net.time_dim)
    if cls is TianshouPPOConfig:
        ppo = config.train.ppo
        settings = replace(settings, lr_sampler=ppo.lr_sampler, lr_sigma=ppo.lr_sigma, lr_critic=ppo.lr_value,
                           repeat=ppo.epochs, batch_size=ppo.minibatch_size, eps_clip=ppo.clip, gae_lambda=ppo.gae_lambda,
                           max_grad_norm=ppo.grad_clip)
    else:
        dxdp = config.train.dxdp
        settings = replace(settings, lr_sampler=dxdp.lr_sampler, lr_sigma=dxdp.lr_sigma, lr_critic=dxdp.lr_value)
    return with_options(settings, config.train.agent_options, "train.agent_options")


def _transitions(chain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """chain (T + 1, B, ...) -> x_t, t, x_{t+1} of its B * T transitions, chain after chain: (B T, ...), (B T,), (B T, ...)."""
    horizon, batch = chain.shape[0] - 1, chain.shape[1]
    x = chain[:-1].transpose(0, 1).reshape(batch * horizon, *chain.shape[2:])
    x_next = chain[1:].transpose(0, 1).reshape(batch * horizon, *chain.shape[2:])
    return x, torch.arange(horizon, device=chain.device).repeat(batch), x_next


def _buffer(x: Tensor, t: Tensor, x_next: Tensor, act: Tensor, reward: Tensor, horizon: int) -> ReplayBuffer:
    """A Tianshou buffer of N transitions in the given order (whole chains stay contiguous): flat
    observations, ``act`` (N, ...), ``reward`` (N,), terminated at t = T - 1."""
    terminated = (t == horizon - 1).cpu().numpy()
    return ReplayBuffer.from_data(
        obs=flat_observation(x, t, horizon).cpu().numpy(), act=act.cpu().numpy(), rew=reward.double().cpu().numpy(),
        terminated=terminated, truncated=np.zeros_like(terminated), done=terminated,
        obs_next=flat_observation(x_next, t + 1, horizon).cpu().numpy())


class _TianshouAgent:
    """The Agent protocol around a Tianshou ``algorithm`` whose policy acts with ``policy``."""

    policy: GaussianStepPolicy
    mdp: ChainMDP
    algorithm: Algorithm

    def act(self, x: Tensor, t: int | Tensor, noise: Tensor | None = None) -> Tensor:
        """x_{t+1} from the Gaussian sampler ``policy`` (what the DxMI loop collects and evaluates)."""
        return self.policy(x, t, noise)

    def training_state(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.algorithm.load_state_dict(dict(state["algorithm"]))  # Tianshou pops its optimiser states from the dict

    def _check(self, policy: GaussianStepPolicy, mdp: ChainMDP) -> None:
        if policy.horizon != mdp.horizon:
            raise ValueError(f"policy horizon {policy.horizon} != MDP horizon {mdp.horizon}")


class TianshouPPOAgent(_TianshouAgent):
    """Stock Tianshou PPO as a diffrl Agent: ``update(chain)`` is one PPO learning step (``repeat``
    epochs) on the chains' B * T transitions with rewards ``mdp.step_reward`` computed now."""

    def __init__(self, policy: GaussianStepPolicy, mdp: ChainMDP, config: TianshouPPOConfig | None = None) -> None:
        self._check(policy, mdp)
        config = config or TianshouPPOConfig()
        self.policy, self.mdp, self.config = policy, mdp, config
        critic = value_critic(policy.event_shape, policy.horizon, config.critic_hidden, config.critic_depth, config.critic_time_dim)
        self.algorithm = PPO(
            policy=step_policy(policy), critic=critic.to(mdp.velocity_scale_sq.device),
            optim=StepPolicyAdam(policy, config.lr_sampler, config.lr_sigma, config.lr_critic),
            eps_clip=config.eps_clip, advantage_normalization=False, vf_coef=config.vf_coef,
            ent_coef=mdp.tau_entropy / mdp.dim, max_grad_norm=config.max_grad_norm,
            gae_lambda=config.gae_lambda, max_batchsize=config.max_batchsize, gamma=1.0)

    def update(self, chain: Tensor) -> dict[str, Tensor]:
        """chain: (T + 1, B, ...) of the current policy. Returns detached metrics; ``return`` is the mean
        objective (``chain_objective``) of the given chains."""
        chain = chain.detach()
        with torch.no_grad():
            objective = chain_objective(chain, self.mdp, self.policy.log_sigma).mean()
            x, t, x_next = _transitions(chain)
            buffer = _buffer(x, t, x_next, x_next, self.mdp.step_reward(x, x_next, t), self.mdp.horizon)
        with policy_within_training_step(self.algorithm.policy):
            stats = self.algorithm.update(buffer, batch_size=self.config.batch_size, repeat=self.config.repeat)
        return {"loss_ppo": torch.tensor(stats.loss.mean), "loss_ppo_actor": torch.tensor(stats.actor_loss.mean),
                "loss_ppo_critic": torch.tensor(stats.vf_loss.mean), "entropy": torch.tensor(stats.ent_loss.mean),
                "return": objective}


class TianshouSACAgent(_TianshouAgent):
    """Stock Tianshou SAC as a diffrl Agent: ``update(chain)`` adds the chains' transitions to a replay
    of the last ``replay_size`` ones and takes ``gradient_steps`` SAC updates, each on a uniform draw
    of ``batch_size`` transitions whose rewards ``mdp.step_reward`` are computed at that moment.
    Actions in SAC's buffer are x_{t+1} / b (its normalised convention); the critics see x_{t+1}."""

    def __init__(self, policy: GaussianStepPolicy, mdp: ChainMDP, config: TianshouSACConfig | None = None) -> None:
        self._check(policy, mdp)
        config = config or TianshouSACConfig()
        self.policy, self.mdp, self.config = policy, mdp, config
        device = mdp.velocity_scale_sq.device
        critics = [q_critic(policy.event_shape, policy.horizon, config.action_bound, config.critic_hidden,
                            config.critic_depth, config.critic_time_dim).to(device) for _ in range(2)]
        adam = StepPolicyAdam(policy, config.lr_sampler, config.lr_sigma, config.lr_critic)
        self.algorithm = SAC(policy=sac_policy(policy, config.action_bound), policy_optim=adam, critic=critics[0],
                             critic_optim=adam, critic2=critics[1], tau=config.target_update, gamma=1.0,
                             alpha=float(mdp.tau_entropy / mdp.dim))
        self.replay: dict[str, Tensor] = {}

    def update(self, chain: Tensor) -> dict[str, Tensor]:
        """chain: (T + 1, B, ...) from any behaviour policy. Returns detached metrics; ``return`` is the mean
        objective (``chain_objective``) of the given chains."""
        chain = chain.detach()
        with torch.no_grad():
            objective = chain_objective(chain, self.mdp, self.policy.log_sigma).mean()
        for key, value in zip(("x", "t", "x_next"), _transitions(chain)):
            kept = value if key not in self.replay else torch.cat([self.replay[key], value])
            self.replay[key] = kept[-self.config.replay_size:]
        size, horizon, bound = self.replay["t"].shape[0], self.mdp.horizon, self.config.action_bound
        actor, critic = [], []
        for _ in range(self.config.gradient_steps):
            i = torch.randint(0, size, (self.config.batch_size,), device=chain.device)
            x, t, x_next = self.replay["x"][i], self.replay["t"][i], self.replay["x_next"][i]
            with torch.no_grad():
                buffer = _buffer(x, t, x_next, x_next.flatten(1) / bound, self.mdp.step_reward(x, x_next, t), horizon)
            with policy_within_training_step(self.algorithm.policy):
                stats = self.algorithm.update(buffer=buffer, sample_size=0)
            actor.append(stats.actor_loss)
            critic.append((stats.critic1_loss + stats.critic2_loss) / 2)
        return {"loss_sac_actor": torch.tensor(actor).mean(), "loss_sac_critic": torch.tensor(critic).mean(),
                "return": objective}

    def training_state(self) -> dict[str, Any]:
        return {**super().training_state(), "replay": dict(self.replay)}

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        self.replay = dict(state["replay"])


def tianshou_ppo(policy: GaussianStepPolicy, mdp: ChainMDP, config: Any = None) -> TianshouPPOAgent:
    """The agent factory ``FACTORY(policy, mdp, config)`` (``diffrl train --agent diffrl.agents.tianshou:tianshou_ppo``).

    config: a ``TianshouPPOConfig`` (used as given: the way to override), an ExperimentConfig (the
    settings of its train.ppo section, net sizes and train.agent_options) or None (the defaults).
    """
    return TianshouPPOAgent(policy, mdp, _settings(TianshouPPOConfig, config))


def tianshou_sac(policy: GaussianStepPolicy, mdp: ChainMDP, config: Any = None) -> TianshouSACAgent:
    """The agent factory ``FACTORY(policy, mdp, config)`` for SAC; config as in ``tianshou_ppo``."""
    return TianshouSACAgent(policy, mdp, _settings(TianshouSACConfig, config))
