"""The README's commands and snippet point at things that exist and run: every example file and
``MODULE:FACTORY`` it names resolves to a factory, every preset exists, and its Python snippet
runs on a real (tiny) run folder."""
from __future__ import annotations

import re
from pathlib import Path

from diffrl.app import pipeline
from diffrl.app.config import available_presets, load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_example_factory_and_preset_the_readme_names_exists() -> None:
    for path in set(re.findall(r"examples/\w+\.py", README)):
        assert (ROOT / path).is_file(), path
    specs = set(re.findall(r"--(?:agent|reward) (examples\.\w+:\w+)", README))
    assert len(specs) == 2
    for spec in specs:
        assert callable(pipeline.resolve_factory(spec, {}))
    for preset in set(re.findall(r"--preset (\w+)", README)) | set(re.findall(r"--show (\w+)", README)):
        assert preset in available_presets(), preset


def test_the_from_run_snippet_runs(tmp_path: Path) -> None:
    tiny = ["net.hidden=16", "net.depth=2", "net.time_dim=16", "data.n_train=500", "data.n_eval=100", "pretrain.steps=20",
            "train.loop.steps=4", "train.loop.eval_every=2", "train.loop.checkpoint_every=2", "train.batch_size=16"]
    pipeline.pretrain(load_config("8gaussians", tiny), tmp_path / "teacher", progress=False)
    pipeline.train(load_config("8gaussians", [*tiny, f"train.teacher={tmp_path / 'teacher'}"]), tmp_path / "runs" / "dxmi", progress=False)
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "from_run" in b]
    scope: dict = {}
    exec(block.replace('"runs/dxmi"', repr(str(tmp_path / "runs" / "dxmi"))), scope)
    assert scope["x"].shape == (1000, 2)
