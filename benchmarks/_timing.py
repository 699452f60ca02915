"""Wall times that survive a resumed benchmark: each run folder keeps its own training time."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable


def train_seconds(run: Path, train: Callable[[], None], finished: bool = False) -> float | None:
    """Wall time of ``train()``, measured once and kept in RUN/bench_seconds.json, so that a rerun
    which skips the finished run still reports it. ``finished``: the run is complete; without a
    record its time is unknown (None) and it is not retrained. A run resumed after a kill counts
    only its last part."""
    record = run / "bench_seconds.json"
    if record.is_file():
        return json.loads(record.read_text())["train_seconds"]
    if finished:
        return None
    start = time.time()
    train()
    seconds = time.time() - start
    record.write_text(json.dumps({"train_seconds": seconds}))
    return seconds
