"""benchmarks/official_compare.py without the authors' code: it refuses to run without a path that
looks like their repository, and its summaries are medians over rounds."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "official_compare.py"
spec = importlib.util.spec_from_file_location("official_compare", SCRIPT)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def test_refuses_without_the_authors_path():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "give the path of the authors' code" in proc.stderr


def test_refuses_a_folder_that_is_not_their_repository(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        compare.check_authors_path(tmp_path / "missing")
    (tmp_path / "models" / "DxMI").mkdir(parents=True)
    (tmp_path / "models" / "DxMI" / "trainer.py").write_text("")
    with pytest.raises(ValueError, match=r"does not look like the authors' code.*var_sampler\.py"):
        compare.check_authors_path(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(tmp_path), "--quick"])
    assert exit_info.value.code == 2


def test_accepts_a_folder_with_their_files(tmp_path):
    for name in compare.AUTHORS_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert compare.check_authors_path(str(tmp_path)) == tmp_path.resolve()


def test_summaries_are_medians_over_rounds():
    def run(total, sampling):
        return {"s_per_iter": total, "phases": {**dict.fromkeys(compare.PHASES, 0.0), "sampling": sampling}}

    ours = [run(1.0, 0.5), run(3.0, 0.7), run(2.0, 0.6)]
    theirs = [run(2.0, 1.0), run(2.0, 1.0), run(4.0, 1.0)]
    summary = compare.summarise(ours)
    assert summary["s_per_iter"] == 2.0 and summary["phases"]["sampling"] == 0.6
    assert summary["rounds_s_per_iter"] == [1.0, 3.0, 2.0]
    assert compare.paired_ratio(ours, theirs) == 0.5  # per-round ratios 0.5, 1.5, 0.5
    with pytest.raises(ValueError):
        compare.paired_ratio(ours, theirs[:2])
