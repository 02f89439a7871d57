"""Shared pytest setup: headless plotting and quiet TensorFlow, with caches kept out of $HOME."""
import asyncio
import logging
import os
import time
from pathlib import Path

_CACHE = Path(__file__).resolve().parent.parent / ".cache"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MPLCONFIGDIR", str(_CACHE / "matplotlib"))
os.environ.setdefault("KERAS_HOME", str(_CACHE / "keras"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO_ROOT = Path(__file__).resolve().parent.parent


import pytest  # noqa: E402  (after the environment above, which must be set before any heavy import)
from hypothesis import settings as hypothesis_settings  # noqa: E402

# Property tests explore new random examples on every local run (that is how they find bugs); under CI they draw
# a fixed sequence, so a landing is judged on a reproducible sample. `HYPOTHESIS_PROFILE=dev` overrides.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("dev", print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "dev"))

from tsfm_wb.tsfm.fake_tollama import FakeTollama  # noqa: E402


@pytest.fixture(scope="module")
def server():
    """One fake tollama daemon on 127.0.0.1 per test module (modules with other needs define their own)."""
    with FakeTollama() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTollama) -> FakeTollama:
    """The module's fake daemon, reset to default behaviour and zero counters before each test, and settled after it
    (so that a request the test gave up on is not counted in the next one); if it does not settle, it is restarted."""
    yield server.reset()
    if not server.settle(): server.stop()          # the next reset starts it again, on the same port


class _BlockLoopAtFirstConnect(logging.Handler):
    """Blocks the event loop for `seconds` just after the first TCP connect has started and armed its timer, the
    way a CPU-bound task or a GC pause does (httpcore logs each connect's start at DEBUG)."""
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.fired = seconds, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired and "connect_tcp.started" in record.getMessage():
            self.fired = True
            asyncio.get_running_loop().call_soon(time.sleep, self.seconds)


@pytest.fixture
def blocked_loop():
    """A handler on httpcore's connection logger that blocks the loop 0.6 s at the first connect (past the default
    0.25 s connect timeout, with room for the tests' own shorter limits)."""
    logger, handler = logging.getLogger("httpcore.connection"), _BlockLoopAtFirstConnect(0.6)
    level = logger.level
    logger.setLevel(logging.DEBUG); logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler); logger.setLevel(level)

