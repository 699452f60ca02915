"""The one run pipeline (issue 10) and its guarantees (issue 11): exact resume of every job, runs
never overwrite a folder, resume overrides, chains collected elsewhere, rewards through their
interface only, non-finite inputs stopped before they reach a parameter."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from diffrl.app import pipeline
from diffrl.app.cli import main
from diffrl.app.config import load_config
from diffrl.app.tasks import make_task
from diffrl.optim import NonFiniteError
from diffrl.rewards import EnergyReward, FixedReward, WeightedReward
from diffrl.run import RunDir

TINY = [
    "net.hidden=16", "net.depth=2", "net.time_dim=16", "data.n_train=2000", "data.n_eval=400", "threads=1",
    "pretrain.steps=40", "pretrain.batch_size=64", "pretrain.eval_horizon=10",
    "train.loop.steps=30", "train.batch_size=32", "train.loop.eval_every=10", "train.loop.checkpoint_every=10", "train.loop.log_every=5",
]


def tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state) for t in tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in tensors(value)]
    return []


def assert_same_checkpoint(a: Path, b: Path) -> None:
    ta, tb = tensors(RunDir(a).load_checkpoint()["trainer"]), tensors(RunDir(b).load_checkpoint()["trainer"])
    assert len(ta) == len(tb) > 0
    assert all(torch.equal(x, y) for x, y in zip(ta, tb))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    pipeline.pretrain(load_config("8gaussians", TINY), out, progress=False)
    return out


class Killed(Exception):
    pass


def _kill_after(monkeypatch, cls, calls: int) -> None:
    original, seen = cls.step, {"n": 0}

    def dying(self):
        seen["n"] += 1
        if seen["n"] > calls:
            raise Killed
        return original(self)

    monkeypatch.setattr(cls, "step", dying)


@pytest.mark.parametrize("kill_at", [13, 27])
def test_pretrain_resume_of_a_point_run_is_bitwise_the_uninterrupted_run(tmp_path: Path, monkeypatch, kill_at: int) -> None:
    """``diffrl pretrain --resume`` crashed on point runs before the pipeline (AttributeError)."""
    config = load_config("8gaussians", TINY)
    pipeline.pretrain(config, tmp_path / "whole", progress=False)
    _kill_after(monkeypatch, pipeline.TeacherTrainer, kill_at)
    with pytest.raises(Killed):
        pipeline.pretrain(config, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    assert main(["pretrain", "--out", str(tmp_path / "killed"), "--resume", "--no-progress"]) == 0
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "killed")


@pytest.mark.parametrize("kill_at", [7, 21])
def test_train_resume_after_a_kill_at_any_step_is_bitwise(tmp_path: Path, teacher: Path, monkeypatch, kill_at: int) -> None:
    from diffrl.dxmi import DxMI

    config = load_config("8gaussians", [*TINY, f"train.teacher={teacher}"])
    pipeline.train(config, tmp_path / "whole", progress=False)
    _kill_after(monkeypatch, DxMI, kill_at)
    with pytest.raises(Killed):
        pipeline.train(config, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    pipeline.train(None, tmp_path / "killed", resume=True, progress=False)
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "killed")


def test_resume_applies_allowed_overrides_and_refuses_the_rest(tmp_path: Path, teacher: Path, capsys) -> None:
    out = tmp_path / "run"
    pipeline.train(load_config("8gaussians", [*TINY, f"train.teacher={teacher}"]), out, progress=False)
    assert main(["train", "--out", str(out), "--resume", "--no-progress", "train.loop.steps=40"]) == 0
    assert RunDir(out).load_checkpoint()["step"] == 40
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for bad in (["train.dxdp.lr_sampler=1"], ["train.no_such=1"], ["train.loop.steps=-1"]):
        assert main(["train", "--out", str(out), "--resume", *bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["train", "--out", str(out), "--resume", "--preset", "8gaussians"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("existing", ["config.yaml", "samples.npy", "notes.txt"])
def test_a_run_never_writes_into_a_folder_that_holds_anything(tmp_path: Path, teacher: Path, capsys, existing: str) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / existing).write_bytes(b"precious")
    for job in (["pretrain", "--preset", "8gaussians"], ["train", "--preset", "8gaussians", "--teacher", str(teacher)]):
        assert main([*job, "--out", str(out), *TINY]) == 2
        err = capsys.readouterr().err
        assert existing in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == [existing] and (out / existing).read_bytes() == b"precious"


def test_a_cifar_style_image_run_is_routed_by_its_recorded_task(tmp_path: Path) -> None:
    """The task comes from config.yaml, never from the data's name: a run on data called cifar10
    (unknown to the point loader) is an image run for sample / evaluate."""
    config = load_config(None, ["data.name=cifar10", "task=images"])
    assert config.task == "images"
    assert load_config(None, ["data.name=cifar10"]).task == "points"  # resolved once, at creation, then recorded
    assert load_config("digits").task == "images" and load_config("8gaussians").task == "points"


def _loop(seed: int = 0):
    config = load_config("8gaussians", ["net.hidden=16", "net.depth=2", "net.time_dim=16", "data.n_train=500", "data.n_eval=100"])
    torch.manual_seed(seed)
    task = make_task(config)
    c = pipeline.compose(config, task, task.load_teacher(None), torch.device("cpu"))
    return pipeline._dxmi(config, c, task.batches(32, seed, torch.device("cpu"))), c


def test_update_on_chains_collected_elsewhere_equals_step() -> None:
    a, _ = _loop()
    b, _ = _loop()
    torch.manual_seed(5)
    metrics_a = [a.step() for _ in range(3)]
    torch.manual_seed(5)
    metrics_b = []
    for _ in range(3):
        x_data = next(b.data)
        metrics_b.append(b.update(b.collect(x_data.shape[0]), x_data))
    assert all(torch.equal(p, q) for p, q in zip(tensors(a.training_state()), tensors(b.training_state())))
    assert metrics_a[-1].keys() == metrics_b[-1].keys()
    with pytest.raises(ValueError, match="expected chains of shape"):
        b.update(torch.zeros(3, 4, 2), next(b.data))


@pytest.mark.parametrize("poison", ["data", "reward"])
def test_non_finite_inputs_stop_the_loop_before_any_parameter_moves(poison: str) -> None:
    dxmi, c = _loop()
    if poison == "reward":
        energy = c.reward.energy
        c.reward.energy = torch.nn.Module()
        c.reward.energy.forward = lambda x: energy(x) * float("nan")
    x_data = next(dxmi.data)
    before = copy.deepcopy(tensors(dxmi.training_state()))
    if poison == "data":
        x_data[3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="the data batch" if poison == "data" else "loss_energy"):
        dxmi.update(dxmi.collect(32), x_data)
    after = tensors(dxmi.training_state())
    assert all(torch.equal(p, q) for p, q in zip(before, after))


def test_weighted_reward_trains_its_learnable_term_and_keeps_the_fixed_one() -> None:
    torch.manual_seed(0)
    energy = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1), torch.nn.Flatten(0))
    learned = EnergyReward(energy, lr=1e-2)
    fixed = FixedReward(lambda x: -(x**2).sum(1))
    reward = WeightedReward([(1.0, learned), (0.5, fixed)])
    x = torch.randn(64, 2)
    torch.testing.assert_close(reward(x), -energy(x) + 0.5 * -(x**2).sum(1))
    torch.testing.assert_close(reward.energy_network(x), -reward(x))
    assert reward.learnable and reward.optimizers() == [learned.optimizer]
    data, model = torch.randn(64, 2) + 2, torch.randn(64, 2)
    gaps = []
    for _ in range(50):
        out = reward.update(data, model)
        gaps.append(float(out["term0/energy_model"] - out["term0/energy_data"]))
    assert gaps[-1] > gaps[0] + 0.5, "the learnable term must learn to separate data from samples"
    state = reward.training_state()
    clone = WeightedReward([(1.0, EnergyReward(copy.deepcopy(energy), lr=1e-2)), (0.5, fixed)])
    clone.load_training_state(state)
    assert clone.terms[0].optimizer.state_dict()["state"].keys() == learned.optimizer.state_dict()["state"].keys()
    with pytest.raises(TypeError, match="RewardModel"):
        WeightedReward([(1.0, lambda x: x.sum(1))])


def test_from_run_gives_everything_a_finished_run_holds(tmp_path: Path, teacher: Path) -> None:
    out = tmp_path / "run"
    pipeline.train(load_config("8gaussians", [*TINY, f"train.teacher={teacher}"]), out, progress=False)
    run = pipeline.from_run(out)
    assert run.kind == "dxmi" and run.policy.horizon == 5 and run.value is not None and run.energy is not None
    assert run.task.split("test").shape == (400, 2)
    samples = run.task.to_output(run.sample(100, seed=1))
    assert samples.shape == (100, 2)
    guided = run.sample(100, seed=1, guidance=0.3)
    assert not torch.equal(guided, run.sample(100, seed=1))
    t = pipeline.from_run(teacher, steps=7)
    assert t.kind == "teacher" and t.policy.horizon == 7 and t.cost_to_go is None
    report = json.loads(json.dumps(pipeline.evaluate(out, n=200)))
    assert {"sw", "mmd", "auc"} <= report.keys()


def test_a_zero_step_run_and_a_teacher_of_other_sizes(tmp_path: Path, teacher: Path) -> None:
    """train.loop.steps=0 leaves a complete run (the start, scored); the teacher keeps its own
    network sizes when the DxMI run's net section differs (it sizes the value and energy only)."""
    sizes = [o for o in TINY if not o.startswith("net.")] + ["net.hidden=24", "net.depth=3"]
    pipeline.train(load_config("8gaussians", [*sizes, f"train.teacher={teacher}", "train.loop.steps=0"]), tmp_path / "zero", progress=False)
    run = pipeline.from_run(tmp_path / "zero", "last")
    assert run.step == 0 and run.value.inp.out_features == 24
    assert run.policy.mean_model.eps_model.inp.out_features == 16


def test_tau_anchor_anchors_the_mdp_to_the_starting_chain() -> None:
    """train.tau_anchor > 0: the MDP's running cost gains tau_anchor a_t, a_t measured from the step
    policy DxMI starts from (frozen: training moves the policy, not the anchor); 0 (the default): none."""
    base = ["net.hidden=16", "net.depth=2", "net.time_dim=16", "data.n_train=500", "data.n_eval=100"]
    assert load_config("8gaussians", base).train.tau_anchor == 0.0
    with pytest.raises(ValueError, match="tau_anchor"):
        load_config("8gaussians", [*base, "train.tau_anchor=-1"])
    for fix_last in (False, True):
        config = load_config("8gaussians", [*base, "train.tau_anchor=0.5", f"train.fix_last={fix_last}"])
        torch.manual_seed(0)
        task = make_task(config)
        c = pipeline.compose(config, task, task.load_teacher(None), torch.device("cpu"))
        start = copy.deepcopy(c.policy)
        assert c.mdp.tau_anchor == 0.5
        sigma = start.sigma.detach()
        expected_scale = torch.cat([sigma[:-1], sigma[-2:-1]]) if fix_last else sigma
        torch.testing.assert_close(c.mdp.anchor.scale_sq, expected_scale**2)
        with torch.no_grad():
            for p in c.policy.mean_parameters():
                p.add_(0.1)  # the policy moves; the anchor stays at the start
        x, t = torch.randn(7, 2), torch.full((7,), 1)
        torch.testing.assert_close(c.mdp.anchor.teacher_mean(x, t), start.mean_model(x, t))
        x_next = torch.randn(7, 2)
        by_hand = (x_next - start.mean_model(x, t)).pow(2).mean(-1) / (2 * expected_scale[1] ** 2)
        torch.testing.assert_close(c.mdp.running_cost(x, x_next, t) - c.mdp.tau_velocity * c.mdp.step_terms(x, x_next, t)["velocity_cost"],
                                   0.5 * by_hand)
