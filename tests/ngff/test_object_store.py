"""Plates on an S3-compatible object store (moto's server on 127.0.0.1): read, write back, kill,
resume.

S3 has no rename and no partial objects: a ``PUT`` lands whole or not at all, so the journal's
guarantees (original objects never rewritten, a killed run completed by the next) hold as on a
local folder; the plate lock is a conditional ``PUT`` (``If-None-Match: *``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_pixels, tiny_trained_plate

import omeloc
from omeloc.writeback.journal import JOURNAL_KEY

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")

pytestmark = pytest.mark.slow

KEY, SECRET, REGION = "testing", "testing", "us-east-1"
METADATA_DOCS = ("zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (free port): ``(endpoint, filesystem)``."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    fs = s3fs.S3FileSystem(
        key=KEY, secret=SECRET, client_kwargs={"endpoint_url": endpoint, "region_name": REGION}
    )
    yield endpoint, fs
    server.stop()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    plate, ckpt, ref = tiny_trained_plate(tmp_path_factory.mktemp("s3"))
    return plate, str(ckpt), ref


def _bucket(endpoint: str, name: str) -> None:
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name=REGION,
    ).create_bucket(Bucket=name)


def _objects(fs, root: str) -> dict[str, str]:
    """sha256 of every object below ``root`` (relative key → digest)."""
    fs.invalidate_cache()
    return {k[len(root) + 1 :]: hashlib.sha256(fs.cat_file(k)).hexdigest() for k in fs.find(root)}


def _cli(endpoint: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``omeloc ARGS`` in a subprocess that reaches the store through the AWS environment
    variables."""
    full = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION=REGION,
        OMP_NUM_THREADS="1",
        **env,
    )
    for var in ("OMELOC_TEST_KILL_AT", "OMELOC_TEST_PAUSE_AT"):
        if var not in env:
            full.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "omeloc.cli", "-q", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _upload(fs, plate: Path, url: str) -> None:
    fs.put(str(plate), url, recursive=True)
    fs.invalidate_cache()


def test_predict_into_s3_killed_then_resumed_equals_an_uninterrupted_run(s3, setup, tmp_path):
    endpoint, fs = s3
    plate, ckpt, ref = setup
    _bucket(endpoint, "killed")
    url = "s3://killed/plate.zarr"
    _upload(fs, plate, url)
    before = _objects(fs, "killed/plate.zarr")
    assert any(k.endswith("zarr.json") for k in before)

    killed = _cli(endpoint, "predict", url, "--model", str(ckpt), OMELOC_TEST_KILL_AT="level0_mid")
    assert killed.returncode == -9, (
        killed.stderr
    )  # SIGKILLed mid-write: journal and lock stay behind
    middle = _objects(fs, "killed/plate.zarr")
    assert ".omeloc_lock" in middle and len(middle) > len(before), "the kill came before any write"

    rerun = _cli(endpoint, "predict", url, "--model", str(ckpt))
    assert rerun.returncode == 0, rerun.stderr
    after = _objects(fs, "killed/plate.zarr")
    assert ".omeloc_lock" not in after and not any(k.startswith(".omeloc") for k in after)
    for (
        key,
        digest,
    ) in before.items():  # every original object: byte-identical (metadata docs gain the channel)
        if key.rsplit("/", 1)[-1] not in METADATA_DOCS:
            assert after[key] == digest, key
    local = tmp_path / "back.zarr"
    fs.get(url, str(local), recursive=True)
    assert_same_pixels(local, ref)
    # reading the plate straight from S3 through the API, with storage options
    opts = {
        "key": KEY,
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION},
    }
    assert (
        omeloc.open_plate(url, storage_options=opts).channel_names
        == omeloc.open_plate(ref).channel_names
    )


def test_the_s3_lock_is_a_conditional_put(s3, setup, monkeypatch):
    endpoint, fs = s3
    import zarr.storage

    async def check_then_put(
        *args, **kwargs
    ):  # zarr's racy default must not be what the lock uses on S3
        raise AssertionError("the S3 lock used check-then-put")

    monkeypatch.setattr(zarr.storage.FsspecStore, "set_if_not_exists", check_then_put)
    from omeloc.errors import ConcurrentWriteError
    from omeloc.writeback.journal import StoreIO
    from omeloc.writeback.lock import PlateLock

    _bucket(endpoint, "locked")
    _upload(fs, setup[0], "s3://locked/plate.zarr")
    opts = {
        "key": KEY,
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION},
    }
    io = StoreIO("s3://locked/plate.zarr", opts)
    with PlateLock(io, purpose="test"):
        other = PlateLock(StoreIO("s3://locked/plate.zarr", opts), purpose="other")
        with pytest.raises(ConcurrentWriteError, match="being written"):
            other.__enter__()
    assert io.get(".omeloc_lock") is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_endpoint_that_disappears_mid_write_loses_nothing(setup, tmp_path):
    plate, ckpt, ref = setup
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = s3fs.S3FileSystem(
        key=KEY, secret=SECRET, client_kwargs={"endpoint_url": endpoint, "region_name": REGION}
    )
    _bucket(endpoint, "vanishing")
    url = "s3://vanishing/plate.zarr"
    _upload(fs, plate, url)
    before = _objects(fs, "vanishing/plate.zarr")
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION=REGION,
        OMP_NUM_THREADS="1",
        OMELOC_TEST_PAUSE_AT="resized",
        OMELOC_TEST_PAUSE_SECONDS="4",
        AWS_MAX_ATTEMPTS="1",
    )
    writer = subprocess.Popen(
        [sys.executable, "-m", "omeloc.cli", "-q", "predict", url, "--model", str(ckpt)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            fs.invalidate_cache()
            attrs = json.loads(fs.cat_file("vanishing/plate.zarr/zarr.json")).get("attributes", {})
            if (attrs.get(JOURNAL_KEY) or {}).get("phase") == "resized":
                break
            assert writer.poll() is None, writer.communicate()
            assert time.time() < deadline, "the writer never reached its write phase"
            time.sleep(0.1)
    finally:
        server.stop()  # the endpoint disappears while the writer waits to write level 0
    _out, err = writer.communicate(timeout=300)
    last = err.strip().splitlines()[-1]
    assert writer.returncode == 2, (
        err
    )  # one line naming the problem (no connection) and the fix (recover)
    assert (
        last.startswith("omeloc predict: error:")
        and "Could not connect" in last
        and "omeloc recover" in last
    ), err
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # back (moto keeps its buckets in this process)
    try:
        fs.invalidate_cache()
        rerun = _cli(endpoint, "predict", url, "--model", str(ckpt))  # completes the journal's run
        assert rerun.returncode == 0, rerun.stderr
        after = _objects(fs, "vanishing/plate.zarr")
        for key, digest in before.items():
            if key.rsplit("/", 1)[-1] not in METADATA_DOCS:
                assert after[key] == digest, key
        local = tmp_path / "back.zarr"
        fs.get(url, str(local), recursive=True)
        assert_same_pixels(local, ref)
    finally:
        server.stop()
