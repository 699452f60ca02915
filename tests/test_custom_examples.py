"""The examples of a custom agent (examples/custom_agent.py, REINFORCE) and a custom reward
(examples/custom_reward.py, own energy MLP + a fixed pull) as a user runs them: ``diffrl train
--agent / --reward MODULE:FACTORY`` from the repository root, ``diffrl evaluate``, ``--resume``,
``from_run`` and the scripts' ``--quick`` paths. Every trained sampler must beat the 5-step VAR
chain it starts from (the teacher's, scored on the same test split with the same seed).

A tiny teacher (32-unit MLP, 600 iterations) keeps each test well under a minute; its 5-step
chain is poor (test SW about 0.64), and 300 iterations of either example bring it to about 0.50
(measured over seeds 0-2: 0.50-0.52); the tests ask for a 10% improvement.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffrl.app import evaluate, from_run, load_config, pretrain
from diffrl.rewards import EnergyReward, FixedReward, WeightedReward
from diffrl.run import RunDir

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # examples.* for from_run in this process, wherever pytest starts
    sys.path.insert(0, str(REPO))
NET = ["net.hidden=32", "net.depth=2", "net.time_dim=16"]
DATA = ["data.n_train=5000", "data.n_eval=1000"]
TEACHER = [*NET, *DATA, "pretrain.steps=600", "pretrain.batch_size=256", "pretrain.eval_horizon=10", "threads=1"]
STEPS = 300
IMPROVEMENT = 0.9
"""A trained sampler's test SW must be below this fraction of its starting chain's."""


def train_args(steps: int, every: int | None = None) -> list[str]:
    every = every or steps
    return [*NET, *DATA, "train.batch_size=256", f"train.loop.steps={steps}", f"train.loop.eval_every={every}",
            f"train.loop.checkpoint_every={every}", f"train.loop.log_every={min(every, 50)}", "threads=1"]


def run(*args: str) -> subprocess.CompletedProcess:
    """A command from the repository root (so ``examples.*`` imports there, as for a user), one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the factories must import through the working directory alone
    return subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def diffrl(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "diffrl"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "diffrl.app.cli"]
    return run(*command, *args)


def last_json(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, float]:
    """A tiny teacher run and the test SW of its 5-step VAR chain: where DxMI starts."""
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    pretrain(load_config("8gaussians", TEACHER), out, progress=False)
    return out, evaluate(out, steps=5, schedule="var")["sw"]


@pytest.fixture(scope="module")
def agent_run(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agent") / "run"
    r = diffrl("train", "--preset", "8gaussians", "--teacher", str(teacher[0]), "--out", str(out),
               "--agent", "examples.custom_agent:make", "--no-progress", *train_args(STEPS, STEPS // 3))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_custom_agent_improves_its_start(teacher, agent_run) -> None:
    start = teacher[1]
    report = last_json(diffrl("evaluate", str(agent_run)))
    assert report["kind"] == "dxmi" and report["steps"] == 5 and {"sw", "mmd", "auc"} <= report.keys()
    assert report["sw"] < IMPROVEMENT * start, f"REINFORCE: SW {report['sw']:.3f} vs its 5-step start {start:.3f}"
    assert "agent: examples.custom_agent:make" in (agent_run / "config.yaml").read_text()
    logged = [json.loads(line) for line in (agent_run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss_reinforce"] for m in logged if "loss_reinforce" in m]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    restored = from_run(agent_run, "last")
    assert type(restored.agent).__name__ == "Reinforce" and restored.agent.policy is restored.policy


def test_custom_reward_improves_its_start(teacher, tmp_path) -> None:
    import examples.custom_reward as custom_reward

    start, out = teacher[1], tmp_path / "run"
    r = diffrl("train", "--preset", "8gaussians", "--teacher", str(teacher[0]), "--out", str(out),
               "--reward", "examples.custom_reward:make", "--no-progress", *train_args(STEPS, STEPS // 3))
    assert r.returncode == 0, r.stderr[-3000:]
    report = last_json(diffrl("evaluate", str(out)))
    assert report["sw"] < IMPROVEMENT * start, f"custom reward: SW {report['sw']:.3f} vs its 5-step start {start:.3f}"
    assert 0.0 <= report["auc"] <= 1.0  # the weighted energy (learned term + pull) scores the outliers
    assert "reward: examples.custom_reward:make" in (out / "config.yaml").read_text()

    restored = from_run(out)
    reward = restored.reward
    assert isinstance(reward, WeightedReward) and reward.learnable
    assert reward.weights == [1.0, custom_reward.PULL_WEIGHT]
    assert isinstance(reward.terms[0], EnergyReward) and isinstance(reward.terms[1], FixedReward)
    x = torch.randn(64, 2)
    assert torch.allclose(reward(x), reward.terms[0](x) + custom_reward.PULL_WEIGHT * custom_reward.origin_pull(x))
    # model.pt's (weight-averaged) energy is the evaluation energy, not the freshly built one
    assert restored.energy is not None and torch.isfinite(restored.energy(x)).all()


def _policy(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = RunDir(run_dir).load_checkpoint()
    return {"step": checkpoint["step"], **checkpoint["trainer"]["agent"]["policy"]}


def test_custom_agent_run_resumes_exactly(teacher, tmp_path) -> None:
    """A killed custom-agent run continues with --resume and ends exactly as an uninterrupted one
    (the agent's training_state holds everything: policy and Adam state)."""
    common = ["--preset", "8gaussians", "--teacher", str(teacher[0]), "--agent", "examples.custom_agent:make", "--no-progress"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    last_json(diffrl("train", *common, "--out", str(straight), *train_args(60, 20)))
    last_json(diffrl("train", *common, "--out", str(resumed), *train_args(40, 20)))
    before = _policy(resumed)
    result = last_json(diffrl("train", "--out", str(resumed), "--resume", "--no-progress", "train.loop.steps=60"))
    assert result["step"] == 60
    after = _policy(resumed)
    assert (before["step"], after["step"]) == (40, 60)
    assert any(not torch.equal(before[k], after[k]) for k in after if k != "step"), "the resumed run did not train"
    reference = _policy(straight)
    assert after.keys() == reference.keys()
    for key in after:
        assert torch.equal(torch.as_tensor(after[key]), torch.as_tensor(reference[key])), key
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 60
    assert "agent: examples.custom_agent:make" in (resumed / "config.yaml").read_text()
    # a resumed run keeps its recorded agent: --agent cannot change it
    r = diffrl("train", "--out", str(resumed), "--resume", "--agent", "dxdp", "train.loop.steps=80")
    assert r.returncode == 2 and "--resume" in r.stderr


@pytest.mark.parametrize("script", ["custom_agent", "custom_reward"])
def test_example_script_quick(script: str, teacher, tmp_path) -> None:
    """``python examples/<script>.py --teacher T --quick`` trains, evaluates and reports SW before and after."""
    path, start = teacher
    result = last_json(run(sys.executable, f"examples/{script}.py", "--teacher", str(path), "--quick", "--out", str(tmp_path / "run")))
    assert result["steps"] == 300 and (tmp_path / "run" / "model.pt").is_file()
    assert result["sw_before"] == pytest.approx(start)  # the same chain, split and seed (all 1000 test points)
    assert result["sw_after_best"] < IMPROVEMENT * result["sw_before"], result
