"""DxDP and PPO for TorchRL users: actor and value modules over the step policy, DxDP's losses as
``torchrl.objectives.LossModule``s, and stock ``ClipPPOLoss`` + ``GAE`` as a DxMI agent.

    probabilistic_actor(policy)       ProbabilisticActor: "x", "t" -> "action" ~ pi(. | x_t, t), "action_log_prob"
    value_operator(value, mdp)        ValueOperator: "x", "t" -> "state_value" = V(x, t), V(x, T) = cost(x)
    DxDPValueLoss, DxDPSamplerLoss    TensorDict in, TensorDict out; ``set_keys``; a target value for ``SoftUpdate``
    TorchRLPPO, torchrl_ppo           ClipPPOLoss + GAE on the chain MDP behind the ``diffrl.agent.Agent`` protocol

The losses call the same functions as DxDP's plain-tensor fast path (``diffrl.agents.losses``:
``td_target``, ``squared_td_error``, ``sampler_terms``); ``DxDP.update`` itself never builds a
TensorDict. Importing this module imports TorchRL (which sets the multiprocessing start method to
spawn: scripts need ``if __name__ == "__main__":``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase
from tensordict.nn import InteractionType, TensorDictModule, TensorDictParams
from torch import Tensor, nn
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.modules.distributions import IndependentNormal
from torchrl.objectives import ClipPPOLoss, LossModule
from torchrl.objectives.value import GAE

from diffrl.agent import with_options
from diffrl.envs.torchrl_env import chain_tensordict
from diffrl.mdp import ChainMDP
from diffrl.nets import TimeMLP
from diffrl.optim import OptimizerStep
from diffrl.policy import GaussianStepPolicy, as_step_index

from .losses import entropy_bonus, sampler_terms, soft_value, squared_td_error, td_target

__all__ = [
    "probabilistic_actor", "value_operator", "SoftValue", "DxDPValueLoss", "DxDPSamplerLoss",
    "TorchRLPPOConfig", "TorchRLPPO", "torchrl_ppo",
]


# ---------------------------------------------------------------- modules


class _StepDistParams(nn.Module):
    """(x (*batch, *event), t (*batch, 1) or (*batch,)) -> loc, scale (*batch, *event) of ``policy.dist(x, t)``."""

    def __init__(self, policy: GaussianStepPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        normal = self.policy.dist(x, t).base_dist
        return normal.loc, normal.scale


def probabilistic_actor(policy: GaussianStepPolicy, generator: torch.Generator | None = None) -> ProbabilisticActor:
    """The step policy as a TorchRL ``ProbabilisticActor``: reads "x" (*batch, *event) and "t"
    (*batch, 1), writes "loc", "scale" (``policy.dist``'s), "action" (a reparametrised sample,
    InteractionType.RANDOM unless a context sets another) and its log-density "action_log_prob"
    (*batch,), differentiable in the policy's parameters.

    The distribution is TorchRL's ``IndependentNormal`` over the event dims: the same density as
    ``policy.dist`` (``policy.log_prob``); t = T (terminal next-states) gives N(x, sigma_{T-1}^2).
    generator: draw the actions from it (``env.generator`` reproduces ``policy.sample``) instead of the
    global RNG.
    """
    params = TensorDictModule(_StepDistParams(policy), in_keys=["x", "t"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        params, in_keys=["loc", "scale"], out_keys=["action"], distribution_class=IndependentNormal,
        distribution_kwargs={"event_dim": len(policy.event_shape), "validate_args": False},  # scale = exp(log sigma) > 0
        return_log_prob=True,
        default_interaction_type=InteractionType.RANDOM, generator=generator,
    )


class SoftValue(nn.Module):
    """V(x, t) of ``soft_value`` in TorchRL's shapes: x (*batch, *event), t (*batch, 1) or (*batch,)
    integer in 0..T -> (*batch, 1); V(x, T) = mdp.terminal_cost(x).

    Dense (``soft_value(..., dense=True)``) and without checks on t's values, so TorchRL's value
    estimators may vmap it. Its parameters are the value network's only: the MDP (whose reward has
    parameters of its own, trained by the reward's update) is held, not registered.
    """

    def __init__(self, value: nn.Module, mdp: ChainMDP) -> None:
        super().__init__()
        self.value = value
        self.__dict__["mdp"] = mdp

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        batch = x.shape[: x.ndim - len(self.mdp.event_shape)]
        return soft_value(self.value, self.mdp, x, as_step_index(t, batch, x.device), dense=True).unsqueeze(-1)


def value_operator(value: nn.Module, mdp: ChainMDP) -> ValueOperator:
    """A ``ValueOperator`` reading "x", "t" and writing "state_value" (*batch, 1) = ``SoftValue(value, mdp)``,
    for any batch shape ([B], [B, T]; GAE vmaps it over [B, T] rollouts). value(x (N, *event), t (N,)) -> (N,).

    DxDP's value is a cost-to-go (lower is better) with V(x, T) = cost(x_T). As a PPO critic of
    returns (higher is better) only t < T is ever read: GAE masks the bootstrap of terminated states.
    """
    return ValueOperator(SoftValue(value, mdp), in_keys=["x", "t"], out_keys=["state_value"])


def _step_policy(actor_network: nn.Module) -> GaussianStepPolicy:
    """The one GaussianStepPolicy inside ``actor_network`` (whose log sigma_t DxDP's entropy term reads)."""
    found = [m for m in actor_network.modules() if isinstance(m, GaussianStepPolicy)]
    if len(found) != 1:
        raise ValueError(f"the actor network must hold exactly one GaussianStepPolicy (probabilistic_actor), found {len(found)}")
    return found[0]


# ---------------------------------------------------------------- DxDP's losses


class DxDPValueLoss(LossModule):
    """DxDP's policy evaluation as a TorchRL loss: loss_value = mean (V(x_t, t) - target_t)^2 with
    ``td_target`` (running costs, or ``fixed_time_cost`` R (T,) of ``time_cost``).

    value_network: reads a state's keys, writes ``tensor_keys.value`` (``value_operator``); called on
    the input (x_t, t) with gradient and, with the target parameters and without gradient, on
    tensordict["next"] (x_{t+1}, t + 1). actor_network: its step policy's log sigma_t (no gradient)
    enters the running-cost target. delay_value: keep ``target_value_network_params`` that
    ``SoftUpdate(loss, tau=rate)`` moves (rate 1 - eps per call); False scores x_{t+1} with the value
    itself (the paper's default). reduction: "mean" (DxDP's), "sum" or "none". The MDP and the actor
    are held, not registered: ``parameters()`` are the value's only.

    Input: transitions of any batch shape with "x", "t", "action" (= x_{t+1}) and "next": [B] of
    one step (DxDP's backward sweep calls it for t = T-1 .. 0) or a [B, T] rollout (all steps in one
    loss). Output: "loss_value", and detached "value" (mean V(x_t, t)) and "td_target" (its mean).
    """

    @dataclass
    class _AcceptedKeys:
        """observation "x", step "t", action "action" (= x_{t+1}) and value "state_value" (the value network's output)."""

        observation: NestedKey = "x"
        step: NestedKey = "t"
        action: NestedKey = "action"
        value: NestedKey = "state_value"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    value_network: TensorDictModule
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(
        self, value_network: TensorDictModule, actor_network: nn.Module, mdp: ChainMDP,
        fixed_time_cost: Tensor | None = None, delay_value: bool = False, reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.convert_to_functional(value_network, "value_network", create_target_params=delay_value)
        self.__dict__["mdp"] = mdp
        self.__dict__["policy"] = _step_policy(actor_network)
        self.register_buffer("fixed_time_cost", fixed_time_cost)

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        return [*self.value_network.in_keys, keys.action, *(("next", k) for k in self.value_network.in_keys)]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_value", "value", "td_target"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        keys, net = self.tensor_keys, self.value_network
        x, x_next = tensordict[keys.observation], tensordict[keys.action]
        t = tensordict[keys.step].squeeze(-1)
        with torch.no_grad(), self.target_value_network_params.to_module(net):
            next_value = net(tensordict["next"].select(*net.in_keys)).get(keys.value).squeeze(-1)
        target = td_target(self.mdp, next_value, x, x_next, t, self.policy.log_sigma.detach(), self.fixed_time_cost)
        with self.value_network_params.to_module(net):
            v = net(tensordict.select(*net.in_keys)).get(keys.value).squeeze(-1)
        loss = self._reduce_loss(squared_td_error(v, target), tensordict)
        return TensorDict({"loss_value": loss, "value": v.detach().mean(), "td_target": target.mean()}, batch_size=[])


class DxDPSamplerLoss(LossModule):
    """DxDP's policy improvement as a TorchRL loss: at states (x_t, t) of any batch shape, x' =
    a reparametrised sample of the actor's distribution and

        loss_sampler = mean[ V(x', t + 1) + tau_velocity v_t(x_t, x') - tau_entropy log sigma_t ]   (``sampler_terms``)

    Its gradient reaches the actor through V(x', t + 1) (the value network with detached
    parameters; V(x', T) = cost(x') also passes gradient into the reward's parameters, which the
    reward's own update zeroes) and through log sigma_t. Optimise the actor's parameters
    (``loss.actor_network_params``). The value network reads ``tensor_keys.observation`` and
    ``tensor_keys.step`` of x' and t + 1. reduction: "mean" (DxDP's), "sum" or "none".

    Output: "loss_sampler" and the detached means of the named terms "cost_to_go", "velocity_cost"
    (tau_velocity v_t) and "entropy_bonus" (tau_entropy log sigma_t).
    """

    @dataclass
    class _AcceptedKeys:
        """observation "x", step "t" and value "state_value" (the value network's output)."""

        observation: NestedKey = "x"
        step: NestedKey = "t"
        value: NestedKey = "state_value"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    value_network: TensorDictModule
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(
        self, actor_network: ProbabilisticActor, value_network: TensorDictModule, mdp: ChainMDP, reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.convert_to_functional(actor_network, "actor_network")
        self.convert_to_functional(value_network, "value_network")
        self.__dict__["mdp"] = mdp
        self.__dict__["policy"] = _step_policy(actor_network)

    @property
    def in_keys(self) -> list[NestedKey]:
        return list(self.actor_network.in_keys)

    @property
    def out_keys(self) -> list[str]:
        return ["loss_sampler", "cost_to_go", "velocity_cost", "entropy_bonus"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        keys = self.tensor_keys
        x, step = tensordict[keys.observation], tensordict[keys.step]
        t = step.squeeze(-1)
        with self.actor_network_params.to_module(self.actor_network):
            dist = self.actor_network.get_dist(tensordict.select(*self.actor_network.in_keys))
            x_next = dist.rsample()
            log_sigma = self.policy.log_sigma
        mean = None if self.mdp.anchor is None else dist.mean  # an anchor's cost in expectation (``sampler_terms``)
        after = TensorDict({keys.observation: x_next, keys.step: step + 1}, batch_size=tensordict.batch_size)
        with self.value_network_params.detach().to_module(self.value_network):
            cost_to_go = self.value_network(after).get(keys.value).squeeze(-1)
        terms = sampler_terms(self.mdp, cost_to_go, x, x_next, t, log_sigma, mean)
        out = {"loss_sampler": self._reduce_loss(terms["objective"], tensordict)}
        out.update({name: terms[name].detach().mean() for name in ("cost_to_go", "velocity_cost", "entropy_bonus")})
        return TensorDict(out, batch_size=[])


# ---------------------------------------------------------------- stock PPO as a DxMI agent


@dataclass
class TorchRLPPOConfig:
    """Options of ``TorchRLPPO``; the defaults are ``diffrl.agents.PPOConfig``'s (measured there on a 2-D fixed reward)."""

    lr_sampler: float = 1e-4
    """Adam learning rate of the policy's mean network."""
    lr_sigma: float = 1e-2
    """Adam learning rate of log sigma_t."""
    lr_value: float = 1e-3
    """Adam learning rate of the critic."""
    clip_epsilon: float = 0.2
    """PPO's ratio clip."""
    gae_lambda: float = 0.95
    """GAE's lambda (gamma is 1: the objective is the undiscounted finite-horizon return)."""
    epochs: int = 4
    """Passes over the B * T transitions of one update."""
    minibatch_size: int | None = None
    """Transitions per optimiser step (None: all B * T at once)."""
    grad_clip: float | None = 1.0
    """Gradient-norm clip of the actor's steps."""
    value_grad_clip: float | None = None
    """Gradient-norm clip of the critic's steps."""

    def __post_init__(self) -> None:
        for name in ("lr_sampler", "lr_sigma", "lr_value"):
            if getattr(self, name) < 0:
                raise ValueError(f"torchrl_ppo.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.gae_lambda <= 1 or not self.clip_epsilon > 0 or self.epochs < 1:
            raise ValueError("torchrl_ppo needs gae_lambda in [0, 1], clip_epsilon > 0 and epochs >= 1")
        if self.minibatch_size is not None and self.minibatch_size < 1:
            raise ValueError(f"torchrl_ppo.minibatch_size must be >= 1 or None, got {self.minibatch_size}")


class TorchRLPPO:
    """TorchRL's ``ClipPPOLoss`` with ``GAE`` (gamma 1) on the chain MDP, maximising DxDP's objective

        J = E[ sum_t (r_t + tau_entropy log sigma_t) ],   r_t = ChainMDP.step_reward (the env's reward)

    How the entropy term enters. The reward of each transition is r_t + ``entropy_bonus`` (the function
    DxDP's losses subtract from their costs), so returns, GAE's advantages and the critic's targets are
    J's. That term does not depend on the action, so its policy gradient is zero in expectation; its
    exact gradient comes from ClipPPOLoss's own entropy bonus, the analytic entropy of the step's
    Gaussian, D log sigma_t + const, with ``entropy_coeff = tau_entropy / D``. ClipPPOLoss averages
    both over the B * T transitions, so they keep J's balance (J / T). Advantages are not normalised
    (that would rescale the reward part against the entropy term).

    critic: value(x (N, *event), t (N,)) -> (N,), wrapped by ``value_operator`` (a critic of returns).
    """

    def __init__(self, policy: GaussianStepPolicy, mdp: ChainMDP, critic: nn.Module, config: TorchRLPPOConfig | None = None) -> None:
        self.config = config = config or TorchRLPPOConfig()
        if policy.horizon != mdp.horizon:
            raise ValueError(f"policy horizon {policy.horizon} != MDP horizon {mdp.horizon}")
        self.policy, self.mdp, self.critic = policy, mdp, critic
        self.actor = probabilistic_actor(policy)
        self.value_operator = value_operator(critic, mdp)
        self.loss = ClipPPOLoss(
            self.actor, self.value_operator, clip_epsilon=config.clip_epsilon, entropy_bonus=True,
            entropy_coeff=mdp.tau_entropy / mdp.dim, critic_coeff=1.0, loss_critic_type="l2", normalize_advantage=False,
        )
        self.gae = GAE(gamma=1.0, lmbda=config.gae_lambda, value_network=self.value_operator)
        self.policy_optimizer = torch.optim.Adam([
            {"params": policy.mean_parameters(), "lr": config.lr_sampler},
            {"params": policy.sigma_parameters(), "lr": config.lr_sigma},
        ])
        self.value_optimizer = torch.optim.Adam(critic.parameters(), lr=config.lr_value)
        self.policy_step = OptimizerStep(self.policy_optimizer, config.grad_clip)
        self.value_step = OptimizerStep(self.value_optimizer, config.value_grad_clip)

    def act(self, x: Tensor, t: int | Tensor, noise: Tensor | None = None) -> Tensor:
        return self.policy(x, t, noise)

    def update(self, chain: Tensor) -> dict[str, Tensor]:
        """chain: (T + 1, B, ...) of the current policy, without gradient (``chain_tensordict`` makes its rollout)."""
        return self.update_tensordict(chain_tensordict(self.mdp, chain.detach()))

    def update_tensordict(self, rollout: TensorDictBase) -> dict[str, Tensor]:
        """One PPO update on a [B, T] rollout of the current policy (``env.rollout``, a ``Collector`` batch or
        ``chain_tensordict``): entropy-regularised rewards, behaviour log-probs where missing, GAE, then
        ``epochs`` passes of minibatch steps. Returns detached means: loss_objective, loss_entropy,
        loss_critic, and "return" (J per chain, before the update)."""
        key = self.loss.tensor_keys.sample_log_prob
        with torch.no_grad():
            data = rollout.clone(False)
            t = data.get("t").squeeze(-1)
            bonus = entropy_bonus(self.mdp, self.policy.log_sigma.detach(), t).unsqueeze(-1)
            data.set(("next", "reward"), data.get(("next", "reward")) + bonus)
            if key not in data.keys():
                data.set(key, self.actor.get_dist(data).log_prob(data.get("action")))
            self.gae(data)
            chain_return = data.get(("next", "reward")).sum(-2).mean()
        flat = data.reshape(-1)
        n = flat.shape[0]
        size = self.config.minibatch_size or n
        sums: dict[str, Tensor] = {}
        for _ in range(self.config.epochs):
            order = torch.randperm(n, device=flat.device)
            for start in range(0, n, size):
                out = self.loss(flat[order[start:start + size]])
                self.policy_step(out["loss_objective"] + out["loss_entropy"], "loss_objective + loss_entropy")
                self.value_step(out["loss_critic"], "loss_critic")
                for name in ("loss_objective", "loss_entropy", "loss_critic"):
                    sums[name] = sums.get(name, 0) + out[name].detach()
        steps = self.config.epochs * -(-n // size)
        metrics = {name: value / steps for name, value in sums.items()}
        metrics["return"] = chain_return
        return metrics

    def training_state(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                "policy_optimizer": self.policy_optimizer.state_dict(), "value_optimizer": self.value_optimizer.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.policy_optimizer, self.value_optimizer]

    def optimizer_steps(self) -> list[OptimizerStep]:
        return [self.policy_step, self.value_step]


def torchrl_ppo(policy: GaussianStepPolicy, mdp: ChainMDP, config: Any) -> TorchRLPPO:
    """The agent factory (``train.agent = diffrl.agents.torchrl:torchrl_ppo``): ``TorchRLPPO`` with the
    options of the run's ``train.ppo`` section (agent=ppo's, so the two PPO implementations run at
    equal settings: learning rates, clip, gae_lambda, epochs, minibatch_size, clips), then
    ``train.agent_options`` on top, and a fresh ``TimeMLP`` critic of the run's ``net`` sizes (point
    data, event shape (D,))."""
    if len(mdp.event_shape) != 1:
        raise ValueError(f"torchrl_ppo's critic is an MLP over points of shape (D,); got samples of shape {mdp.event_shape}")
    ppo, net = config.train.ppo, config.net
    if ppo.baseline != "value":
        raise ValueError(f"torchrl_ppo estimates advantages with GAE on a critic: train.ppo.baseline must be value, got {ppo.baseline!r}")
    options = TorchRLPPOConfig(
        lr_sampler=ppo.lr_sampler, lr_sigma=ppo.lr_sigma, lr_value=ppo.lr_value, clip_epsilon=ppo.clip,
        gae_lambda=ppo.gae_lambda, epochs=ppo.epochs, minibatch_size=ppo.minibatch_size, grad_clip=ppo.grad_clip,
        value_grad_clip=ppo.value_grad_clip,
    )
    options = with_options(options, config.train.agent_options, "train.agent_options")
    critic = TimeMLP(mdp.event_shape[0], 1, hidden=net.hidden, depth=net.depth, time_dim=net.time_dim)
    return TorchRLPPO(policy, mdp, critic.to(mdp.velocity_scale_sq.device), options)
