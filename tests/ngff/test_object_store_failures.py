"""Object stores that fail: an unreachable endpoint, a missing bucket, denied access (issue 30, item
3).

Each is one line on stderr with exit 2 and no "Exception ignored ... coroutine" noise (the pending
requests on zarr's I/O loop are cancelled inside it before exit); and ``rechunk`` copies into S3,
where a killed copy is refused like a local one (a marker, since S3 has no rename).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import assert_same_pixels, random_plate_images

import omeloc
from omeloc.errors import InputError, StoreAccessError
from omeloc.ngff.stores import store_failure
from omeloc.ngff.writer import write_plate
from omeloc.writeback.rechunk import incomplete_copy

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")

pytestmark = pytest.mark.slow

KEY, SECRET, REGION = "testing", "testing", "us-east-1"


@pytest.fixture(scope="module")
def s3():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name=REGION,
    ).create_bucket(Bucket="plates")
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    path = tmp_path_factory.mktemp("s3f") / "src.zarr"
    write_plate(
        path,
        random_plate_images(cols=("1",), fields=("0",), shape=(2, 48, 40)),
        channel_names=["a", "b"],
        chunks=(32, 32),
        levels=2,
    )
    return path


def _cli(endpoint: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OMELOC_TEST_")}
    full.update(
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION=REGION,
        AWS_MAX_ATTEMPTS="2",
        OMP_NUM_THREADS="1",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "omeloc.cli", "-q", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _one_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err[-3000:]
    assert "Exception ignored" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_endpoint_is_one_line_exit_2_without_coroutine_noise(src, tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    for args in (
        ["info", "s3://plates/p.zarr"],
        ["recover", "s3://plates/p.zarr"],
        ["rechunk", "s3://plates/p.zarr", str(tmp_path / "d.zarr")],
        ["rechunk", str(src), "s3://plates/copy.zarr"],
    ):
        _one_line(_cli(endpoint, *args), "Cannot reach the object store", "AWS_ENDPOINT_URL")
    assert not (tmp_path / "d.zarr").exists()


def test_a_missing_bucket_is_named_as_such(s3):
    err = _one_line(
        _cli(s3, "info", "s3://no-such-bucket/p.zarr"), "bucket 'no-such-bucket' does not exist"
    )
    assert "not a Zarr group" not in err
    # an existing bucket without the plate stays "not a Zarr group"
    _one_line(_cli(s3, "info", "s3://plates/absent.zarr"), "is not a Zarr group")


def test_denied_access_is_one_line():
    """botocore's ClientError as s3fs raises it for a 403 (moto's server does not enforce
    policies)."""
    from botocore.exceptions import ClientError

    denied = ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject"
    )
    try:
        try:
            raise denied
        except ClientError as err:
            raise PermissionError("Access Denied") from err
    except PermissionError as err:
        found = store_failure(err)
    assert (
        isinstance(found, StoreAccessError)
        and "denied" in str(found)
        and "credentials" in str(found)
    )
    assert store_failure(ValueError("a bug")) is None


def test_rechunk_into_s3_is_marked_until_done_and_refused_when_killed(s3, src):
    url = "s3://plates/killed.zarr"
    killed = _cli(s3, "rechunk", str(src), url, OMELOC_TEST_KILL_AT="rechunk_copied")
    assert killed.returncode == -9, killed.stderr[-2000:]
    opts = {
        "key": KEY,
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": s3, "region_name": REGION},
    }
    assert incomplete_copy(url, opts) is not None
    with pytest.raises(InputError, match="incomplete copy"):
        omeloc.open_plate(url, storage_options=opts)
    _one_line(_cli(s3, "info", url), "incomplete copy", f"omeloc recover {url}")
    res = _cli(s3, "recover", url)
    assert res.returncode == 0 and "finished the interrupted rechunk" in res.stdout, res.stderr[
        -2000:
    ]
    assert incomplete_copy(url, opts) is None
    plate = omeloc.open_plate(url, storage_options=opts)
    local = omeloc.open_plate(src)
    for a, b in zip(plate.images, local.images):
        assert (a.level(1).compute() == b.level(1).compute()).all()
        assert a.chunks(0)[0] == 1
    # a finished copy is not replaced without --overwrite
    _one_line(_cli(s3, "rechunk", str(src), url), "already exists")
    assert _cli(s3, "rechunk", str(src), url, "--overwrite").returncode == 0


def test_rechunk_from_s3_to_a_local_folder(s3, src, tmp_path):
    fs = s3fs.S3FileSystem(
        key=KEY, secret=SECRET, client_kwargs={"endpoint_url": s3, "region_name": REGION}
    )
    fs.put(str(src), "plates/src.zarr", recursive=True)
    res = _cli(s3, "rechunk", "s3://plates/src.zarr", str(tmp_path / "local.zarr"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_pixels(src, tmp_path / "local.zarr")
