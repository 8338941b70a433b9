"""Where graphs run: local scheduler by default, a given client, a LocalCluster; unreachable
schedulers."""

from __future__ import annotations

import dask.array as da
import pytest

from omeloc.errors import InputError, SchedulerError
from omeloc.compute import compute, dask_client


def test_local_default_and_progress(capsys):
    with dask_client() as client:
        assert client is None
        (total,) = compute(
            da.ones((40, 40), chunks=10).sum(), client=client, progress=True, desc="t"
        )
    assert total == 1600


def test_unreachable_scheduler_is_one_clear_error():
    with pytest.raises(
        SchedulerError,
        match=r"Cannot reach the Dask scheduler at tcp://127.0.0.1:9 .*fix --scheduler",
    ):
        with dask_client(scheduler="tcp://127.0.0.1:9", timeout=2):
            pass


def test_conflicting_choices():
    with pytest.raises(InputError, match="at most one"):
        with dask_client(scheduler="tcp://127.0.0.1:9", workers=2):
            pass
