"""Steer a digits teacher to one class: RL fine-tuning with a teacher anchor, and classifier guidance.

The reward is a classifier's log-probability of the class, ``ClassifierReward(classifier, label,
temperature)``; the classifier is trained here on scikit-learn's digits (seed 1: not the seed-0
classifier that scores the samples). Three samplers of the same T-step chain are compared:

- RL with the anchor: DxDP in ``ChainMDP(reward, anchor=TeacherAnchor(teacher), tau_anchor=tau_e,
  tau_velocity=0)``. Its running costs are the per-step KL to the teacher, so the chain targets
  p_teacher(x) p(label | x)^(1 / temperature) (docs/rewards.md): the teacher's digits of that class.
- RL without the anchor: the same reward with the velocity cost of the digits preset instead.
- guidance: ``guided_sample(teacher_policy, reward, n, strength)``, no training.

Printed per class, as JSON: P(label) of the samples under the scoring classifier, and FD (the
project's classifier features) of the samples to that class's test images; for the teacher, FD of
its samples the scoring classifier puts in the class (the teacher's class-conditional FD). Image
grids land in --out.

    diffrl pretrain --preset digits --out runs/digits-teacher          # the teacher (about 20 min on 2 cores)
    python examples/class_steering.py --teacher runs/digits-teacher --quick [--out runs/steer]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from diffrl.agents import DxDP, DxDPConfig
from diffrl.dxmi import DxMI
from diffrl.image_data import load_digits_images
from diffrl.image_metrics import digits_classifier, image_scores, save_grid, train_digits_classifier
from diffrl.mdp import ChainMDP, TeacherAnchor
from diffrl.nets import TimeMLP
from diffrl.policy import GaussianStepPolicy
from diffrl.rewards import ClassifierReward
from diffrl.sampling import guided_sample

__all__ = ["FlatValue", "steer", "class_scores"]


class FlatValue(nn.Module):
    """V(x, t) (B,) of images x (B, C, H, W) and steps t (B,): a TimeMLP on the flattened image."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = TimeMLP(dim, 1, hidden=hidden, depth=3, time_dim=32)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x.flatten(1), t.float())


def steer(
    teacher: GaussianStepPolicy, reward: ClassifierReward, steps: int, anchor: bool, batch: int, lr: float,
    tau_entropy: float = 0.1, tau_velocity: float = 0.01,
) -> GaussianStepPolicy:
    """A copy of ``teacher`` fine-tuned by DxDP for ``steps`` iterations against ``reward``; with
    ``anchor`` the MDP's running cost is the per-step KL to the teacher (tau_anchor = tau_entropy,
    tau_velocity = 0; the teacher's tiny last sigma is replaced by the one before it in the anchor's
    scale), without it the velocity cost at ``tau_velocity``."""
    policy = copy.deepcopy(teacher).requires_grad_(True)
    sigma = teacher.sigma.detach().clone()
    if anchor:
        sigma[-1] = sigma[-2]
        mdp = ChainMDP(reward, policy.event_shape, sigma, tau_velocity=0.0, avr_decay=None, tau_entropy=tau_entropy,
                       anchor=TeacherAnchor(teacher, scale=sigma), tau_anchor=tau_entropy)
    else:
        mdp = ChainMDP(reward, policy.event_shape, sigma, tau_velocity=tau_velocity, avr_decay=0.99, tau_entropy=tau_entropy)
    dim = int(torch.Size(policy.event_shape).numel())
    agent = DxDP(policy, FlatValue(dim), mdp, DxDPConfig(lr_sampler=lr, lr_sigma=lr * 10, lr_value=1e-3, value_target="running"))
    loop = DxMI(agent, mdp, batch_size=batch)
    for _ in range(steps):
        loop.step()
    return policy


def class_scores(samples: Tensor, label: int, test: Tensor, test_labels: Tensor, conditional: bool = False) -> dict[str, float | None]:
    """P(label) of samples (N, 1, 8, 8) under the scoring classifier and FD to the label's test images;
    ``conditional``: FD of only the samples classified as label (the teacher's class-conditional FD;
    None when fewer than 2 are)."""
    scorer = digits_classifier(0)[0]
    with torch.no_grad():
        predicted = scorer(samples).argmax(1)
    chosen = samples[predicted == label] if conditional else samples
    fd = image_scores(chosen, test[test_labels == label], scorer)["fd"] if chosen.shape[0] >= 2 else None
    return {"p_label": float((predicted == label).float().mean()), "fd": fd, "n_fd": int(chosen.shape[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Steer a digits teacher to one class: anchored RL, unanchored RL, classifier guidance.")
    parser.add_argument("--teacher", required=True, help="a digits pretrain run folder (diffrl pretrain --preset digits)")
    parser.add_argument("--labels", type=int, nargs="+", default=None, help="classes to steer to (default 3 0 7; --quick: 3)")
    parser.add_argument("--steps", type=int, default=None, help="RL iterations per run (default 300, --quick 60)")
    parser.add_argument("--horizon", type=int, default=10, help="T, the chain's steps")
    parser.add_argument("--temperature", type=float, default=1.0, help="the reward's temperature: targets p_teacher p(label|x)^(1/temperature)")
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance strength")
    parser.add_argument("--lr", type=float, default=3e-5, help="the sampler's learning rate")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, default=500, help="samples scored per sampler")
    parser.add_argument("--no-unanchored", action="store_true", help="skip the RL run without the anchor")
    parser.add_argument("--quick", action="store_true", help="one class, 60 iterations (under 5 minutes on 2 CPU cores)")
    parser.add_argument("--out", default=None, help="folder for the image grids (default: a temporary folder)")
    args = parser.parse_args(argv)

    from diffrl.app import from_run

    torch.set_num_threads(1)
    torch.manual_seed(0)
    labels = args.labels or ([3] if args.quick else [3, 0, 7])
    steps = args.steps or (60 if args.quick else 300)
    out = Path(args.out or tempfile.mkdtemp(prefix="class_steering_"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    teacher = from_run(args.teacher, steps=args.horizon, schedule="var").policy.requires_grad_(False)
    data = load_digits_images()
    steering, accuracy = train_digits_classifier(data, seed=1)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731

    teacher_samples = teacher.sample(args.n, gen())[-1]
    save_grid(teacher_samples[:64], out / "teacher.png", scale=4)
    results = {"teacher_steps": args.horizon, "steering_classifier_accuracy": accuracy, "steps": steps, "classes": {}}
    for label in labels:
        reward = ClassifierReward(steering, label, temperature=args.temperature)
        row = {"teacher": class_scores(teacher_samples, label, data.test, data.test_labels, conditional=True)}
        guided = guided_sample(teacher, reward, args.n, args.guidance, gen())[-1]
        row["guidance"] = class_scores(guided, label, data.test, data.test_labels)
        save_grid(guided[:64], out / f"class{label}_guidance.png", scale=4)
        runs = [("rl_anchor", True)] + ([] if args.no_unanchored else [("rl_no_anchor", False)])
        for name, anchored in runs:
            t0 = time.perf_counter()
            policy = steer(teacher, reward, steps, anchored, args.batch, args.lr)
            samples = policy.sample(args.n, gen())[-1]
            row[name] = {**class_scores(samples, label, data.test, data.test_labels), "seconds": round(time.perf_counter() - t0, 1)}
            save_grid(samples[:64], out / f"class{label}_{name}.png", scale=4)
        results["classes"][label] = row
        print(json.dumps({"label": label, **row}), file=sys.stderr)
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["out"] = str(out)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
