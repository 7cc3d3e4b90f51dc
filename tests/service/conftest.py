"""The end-to-end stack shared by the service tests: Redis, SeaweedFS, a Celery worker and the API under
uvicorn as real processes on free loopback ports (:class:`service.stack.LocalStack`), started once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from models.catalogue.config import GuidanceConfig
from service.client import BrainSynthClient
from service.localstack import free_port
from service.stack import LocalStack
from tests.conftest import make_model_dir, tiny_config

KEYS = {f"lab-{c}": f"key-{c}" for c in "abcdefghi"}
MAX_ACTIVE = 3
WORKER_METRICS_PORT = free_port()
#: A cohort long enough to disturb mid-way (2 tasks of 2 subjects, ~3 s each on this CPU).
LONG = {"model": "tiny", "n_subjects": 4, "seed": 21, "sampler": {"name": "ddim", "steps": 120}}


def wait_for(predicate: Callable[[], object], timeout: float = 120.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 0.2 s until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    run = tmp_path_factory.mktemp("e2e")
    make_model_dir(run / "models" / "tiny")
    # the same networks, trained (so model.json says) with condition dropout: it samples with guidance
    guided = tiny_config("tiny-cfg").model_copy(update={"guidance": GuidanceConfig(condition_dropout=0.1)})
    make_model_dir(run / "models" / "tiny-cfg", guided)
    local = LocalStack(
        run / "data",
        KEYS,
        port=free_port(),
        settings={
            "BRAINSYNTH_MODELS_DIR": str(run / "models"),
            "BRAINSYNTH_DEVICE": "cpu",
            "BRAINSYNTH_VISIBILITY_TIMEOUT_S": "10",
            "BRAINSYNTH_MAX_SUBJECTS_PER_COHORT": "50",
            "BRAINSYNTH_MAX_ACTIVE_COHORTS_PER_TENANT": str(MAX_ACTIVE),
            "BRAINSYNTH_MAX_BODY_BYTES": "20000",
            "BRAINSYNTH_SUBJECTS_PER_TASK": "2",  # so a 4-subject cohort can be disturbed between its tasks
            "BRAINSYNTH_STORAGE_RETRY_S": "15",  # an outage test outlasts it in seconds, not minutes
            "BRAINSYNTH_METRICS_PORT": str(WORKER_METRICS_PORT),  # worker i serves its metrics on this + i
        },
    )
    local.start()
    yield local
    local.stop()


@pytest.fixture(scope="session")
def client(stack: LocalStack) -> Iterator[BrainSynthClient]:
    with BrainSynthClient(stack.url, KEYS["lab-a"]) as c:
        yield c
