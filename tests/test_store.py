"""The conformal score store under `kill -9`: writer processes killed at random moments never lose a batch whose
commit returned, and the store opens cleanly after every kill (no recovery needed, every committed score loaded)."""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
from pathlib import Path

import numpy as np

from tsfm_wb.tsfm.conformal import ConformalSettings
from tsfm_wb.tsfm.store import ScoreStore, SharedCalibrator

ROUNDS = int(os.environ.get("TSFM_WB_KILL_ROUNDS", "4"))   # `make killtest` runs 10
SETTINGS = ConformalSettings(min_samples=20)
FORK = mp.get_context("fork")                               # no re-import per writer: a round costs milliseconds


def _write_forever(path: str, seed: int, out) -> None:
    "A writer process: load the store, then append batches, reporting each committed id and size."
    cal = SharedCalibrator(ScoreStore(path), SETTINGS, snapshot_every=5)
    out.send(("loaded", cal.last_id, cal.n_scores()))
    rng = np.random.default_rng(seed)
    while True:
        n = int(rng.integers(1, 10)); t = 1.7e9 + rng.uniform(0, 86400, n)
        cal.update_arrays(rng.integers(1, 4, n), np.full(n, 0.3), np.full(n, 0.7), rng.uniform(0, 1, n), t - 60, t)
        out.send(("committed", cal.last_id, n))


def test_kill_9_of_two_writers_loses_no_committed_batch(tmp_path: Path):
    path, rng, committed, loaded, kept = str(tmp_path / "scores.db"), random.Random(7), {}, [], {}
    for round_ in range(ROUNDS):
        pipes = [FORK.Pipe(duplex=False) for _ in range(2)]
        procs = [FORK.Process(target=_write_forever, args=(path, 100 * round_ + i, w), daemon=True) for i, (_, w) in enumerate(pipes)]
        for p in procs: p.start()
        for (r, _) in pipes:
            tag, last_id, n_scores = r.recv()
            loaded.append((last_id, n_scores))
        for p, (r, _) in zip(procs, pipes):                 # let each commit a random number of batches, then kill it
            for _ in range(rng.randint(1, 20)):
                _, bid, n = r.recv(); committed[bid] = n
            os.kill(p.pid, signal.SIGKILL)
        for p, (r, _) in zip(procs, pipes):
            p.join()
            while r.poll():                                  # messages sent before the kill landed
                _, bid, n = r.recv(); committed[bid] = n
        with ScoreStore(path) as store:
            assert store.events == []                        # opened cleanly: nothing moved aside
            kept = dict(store._conn.execute("SELECT id, n FROM batches"))
        assert all(kept.get(bid) == n for bid, n in committed.items()), "a committed batch was lost"
    cal = SharedCalibrator(ScoreStore(path), SETTINGS)
    assert cal.events == [] and cal.n_scores() == sum(kept.values())      # every stored score loads, none twice
    assert len(kept) >= len(committed) > 0                                 # (a kill may land after a commit, before its report)
    firsts = [n for _, n in loaded[::2]]
    assert firsts == sorted(firsts)                                        # each restart loaded at least what the last did
    cal.close()
