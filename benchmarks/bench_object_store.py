"""A plate on an S3-compatible object store: requests per image, and what latency costs.

A moto S3 server (its own process, on 127.0.0.1) behind a counting proxy
(:mod:`omeloc.testing.s3proxy`, in this process) that adds ``D`` ms to every request and counts
requests by method and kind (metadata document, chunk, other). A synthetic plate of N images (fields
of 32², one level, channels actin and WAVE2) is uploaded, a tiny U-Net trained locally, then,
through the proxy, at each delay:

- ``omeloc predict --dry-run``: seconds, requests per image;
- ``omeloc predict`` (into a fresh copy of the plate): seconds, requests per image.

The two runs at D = 0 and D = 20 ms say how much of a run is round trips: with requests issued
one after another, the 20 ms run is slower by about requests × 20 ms; with them in flight
concurrently, by much less (issue 24's targets: ≤ 15 s slower, ≤ 12 requests per image for
predict, ≤ 3 for the dry run).

    python benchmarks/bench_object_store.py [--images 192] [--delays 0 20] [--out FILE]
    python benchmarks/bench_object_store.py --images 24 --delays 0 10     # a quick look, ~2 min

Needs ``moto[server]``, ``s3fs`` and ``boto3`` (the test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine, report

from omeloc.testing.s3proxy import S3Proxy, free_port

KEY, SECRET, REGION = "testing", "testing", "us-east-1"
#: images → (rows, columns, fields per well)
LAYOUTS = {24: (2, 6, 2), 96: (4, 6, 4), 192: (8, 12, 2), 384: (16, 24, 1)}


def serve_moto(port: int) -> None:
    """moto's S3 server on 127.0.0.1:``port`` until killed."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    while True:
        time.sleep(3600)


def _wait_for(port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _cli(endpoint: str, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION=REGION,
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "omeloc.cli", "-q", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return time.perf_counter() - start, proc


def _make_plate(root: Path, images: int) -> tuple[Path, str]:
    import omeloc

    rows, cols, fields = LAYOUTS[images]
    plate = omeloc.make_plate(
        root / "plate.zarr",
        rows=rows,
        cols=cols,
        fields=fields,
        size=32,
        chunks=(32, 32),
        levels=1,
        channels=("actin", "WAVE2"),
    )
    res = omeloc.train(
        plate,
        "actin",
        "WAVE2",
        out=root / "model",
        steps=1,
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        progress=False,
    )
    return plate, str(res.checkpoint)


def measure(images: int, delays: list[float], work: Path) -> list[dict]:
    """Per delay: dry run and predict through the counting proxy; a fresh plate copy each."""
    import boto3
    import s3fs

    plate, ckpt = _make_plate(work, images)
    moto_port = free_port()
    moto = _spawn("--serve-moto", str(moto_port))
    rows = []
    try:
        _wait_for(moto_port)
        direct = f"http://127.0.0.1:{moto_port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=direct,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )
        fs = s3fs.S3FileSystem(
            key=KEY, secret=SECRET, client_kwargs={"endpoint_url": direct, "region_name": REGION}
        )
        for i, delay in enumerate(delays):
            bucket = f"bench{i}"
            s3.create_bucket(Bucket=bucket)
            fs.put(str(plate), f"{bucket}/plate.zarr", recursive=True)
            rows.append(_one_delay(images, delay, f"s3://{bucket}/plate.zarr", ckpt, moto_port))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        moto.kill()
    return rows


def _one_delay(images: int, delay: float, url: str, ckpt: str, moto_port: int) -> dict:
    with S3Proxy(
        moto_port, delay_ms=delay
    ) as proxy:  # in this process: omeloc runs in a CLI subprocess
        row: dict = {"images": images, "delay_ms": delay}
        for what, extra in (("dry_run", ["--dry-run"]), ("predict", [])):
            proxy.reset()
            seconds, proc = _cli(proxy.endpoint, "predict", url, "--model", ckpt, *extra)
            if proc.returncode != 0:
                raise SystemExit(f"{what} at {delay} ms failed:\n{proc.stderr[-2000:]}")
            counts = proxy.counts()
            row[what] = {
                "seconds": round(seconds, 2),
                "requests": counts,
                "requests_per_image": round(counts["total"] / images, 1),
                "repeated": proxy.repeated(),
            }
        return row


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-moto":
        serve_moto(int(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=192, choices=sorted(LAYOUTS))
    ap.add_argument("--delays", type=float, nargs="+", default=[0.0, 20.0])
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "object_store.json"
    )
    args = ap.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args.images, args.delays, Path(tmp))
    lines = [
        "| images | delay ms | dry run s (requests/img) | predict s (requests/img) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['images']} | {r['delay_ms']:g} | {r['dry_run']['seconds']} "
            f"({r['dry_run']['requests_per_image']}) | {r['predict']['seconds']} "
            f"({r['predict']['requests_per_image']}) |"
        )
    report({"machine": machine(load), "rows": rows}, "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
