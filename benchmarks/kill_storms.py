"""Kill storms on the surfaces the predict storms did not reach (issue 30, item 5).

Each storm SIGKILLs omeloc processes at random moments, again and again, then checks that
nothing was lost: original chunk files byte-identical, no half-made output that looks finished,
and after ``omeloc recover`` / a rerun the same result an uninterrupted run gives.

- ``import``: ``omeloc import-tiff`` killed mid-way: the output is absent or complete, the TIFFs
  untouched; the final import equals an uninterrupted one.
- ``train``: ``omeloc train --resume`` killed at random: every later ``--resume`` works, and the
  checkpoint that exists loads; the last run reaches its step count.
- ``two_writers``: two predicts of different models (different targets) into one plate at once,
  one or both killed: originals intact; after recover and reruns both channels equal the reference.
- ``rechunk_reads``: ``rechunk SRC DST`` while ``predict`` writes SRC, either killed: SRC's
  originals intact; DST is refused as incomplete or holds exactly SRC's channels.
- ``evaluate_reads``: ``evaluate`` while ``predict`` writes, predict killed: evaluate exits 0 or 2
  (never a crash), originals intact; recover + rerun equals the reference.

Usage::

    python benchmarks/kill_storms.py --work /tmp/storms --kills 20 [--only two_writers,train]

Prints one line per storm (kills, checks, failures) and writes ``results/kill_storms.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import omeloc

META = {"zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"}
RESULTS = Path(__file__).resolve().parent / "results"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMELOC_TEST_")}
    return dict(env, OMP_NUM_THREADS="1")


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "omeloc.cli", "-q", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "omeloc.cli", "-q", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def timed(*args: str) -> float:
    t0 = time.perf_counter()
    res = run(*args)
    if res.returncode != 0:
        raise SystemExit(f"uninterrupted {' '.join(args)} failed: {res.stderr}")
    return time.perf_counter() - t0


def kill_after(procs: list[subprocess.Popen], delay: float, rng: random.Random) -> list[int]:
    """Sleep ``delay`` s, SIGKILL a random non-empty subset of ``procs``, wait for all; their
    exit codes."""
    time.sleep(delay)
    victims = [p for p in procs if rng.random() < 0.6] or [rng.choice(procs)]
    for p in victims:
        if p.poll() is None:
            p.kill()
    codes = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        p.last_stderr = (err or "").strip()[-300:]
        codes.append(p.returncode)
    print(f"  exit codes {codes}", flush=True)
    return codes


def original_files(plate: Path) -> dict[str, str]:
    """sha256 of every non-metadata file (the chunks) below ``plate``."""
    return {
        str(p.relative_to(plate)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(plate.rglob("*"))
        if p.is_file() and p.name not in META and not p.name.startswith(".omeloc")
    }


def intact(plate: Path, before: dict[str, str]) -> list[str]:
    """Original chunk files that changed or vanished."""
    now = original_files(plate)
    return [k for k, v in before.items() if now.get(k) != v]


def channel_pixels(plate: Path, name: str) -> list[np.ndarray]:
    p = omeloc.open_plate(plate)
    out = []
    for img in p.images:
        c = img.channel_index(name)
        for level in range(len(img.level_paths)):
            out.append(np.asarray(img.level(level)[c].compute()))
    return out


def same_channel(a: Path, b: Path, name: str) -> bool:
    return all(
        np.array_equal(x, y)
        for x, y in zip(channel_pixels(a, name), channel_pixels(b, name), strict=True)
    )


class Storm:
    def __init__(self, name: str) -> None:
        self.name, self.kills, self.checks, self.failures = name, 0, 0, []

    def check(self, ok: bool, what: str) -> None:
        self.checks += 1
        if not ok:
            self.failures.append(what)
            print(f"  FAIL {self.name}: {what}", flush=True)

    def line(self) -> str:
        return (
            f"{self.name}: {self.kills} kills, {self.checks} checks, {len(self.failures)} failures"
            + (f" ({'; '.join(self.failures[:3])})" if self.failures else "")
        )


# -- fixtures ---------------------------------------------------------------------------------
def setup(work: Path) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    tpl = work / "template.zarr"
    if not tpl.exists():
        omeloc.make_plate(
            tpl,
            rows=1,
            cols=2,
            fields=1,
            size=96,
            chunks=(48, 48),
            levels=2,
            channels=("actin", "WAVE2", "tubulin"),
        )
    models = {}
    for name, (src, tgt) in {"a": ("actin", "WAVE2"), "b": ("actin", "tubulin")}.items():
        out = work / f"model-{name}"
        if not out.exists():
            omeloc.train(
                tpl,
                src,
                tgt,
                out=out,
                steps=2,
                crop=32,
                batch_size=2,
                depth=2,
                base_channels=4,
                val_wells=["A2"],
                progress=False,
            )
        models[name] = out
    ref = work / "ref.zarr"
    if not ref.exists():
        shutil.copytree(tpl, work / "ref.tmp")
        for m in models.values():
            omeloc.predict(work / "ref.tmp", m, progress=False)
        (work / "ref.tmp").rename(ref)
    return {"template": tpl, "ref": ref, **{f"model_{k}": v for k, v in models.items()}}


# -- storms -----------------------------------------------------------------------------------
def storm_two_writers(f: dict[str, Path], work: Path, kills: int, rng: random.Random) -> Storm:
    s = Storm("two_writers")
    plate = work / "two.zarr"
    shutil.rmtree(plate, ignore_errors=True)
    shutil.copytree(f["template"], plate)
    before = original_files(plate)
    t = timed(
        "predict",
        str(shutil.copytree(f["template"], work / "two-timing.zarr")),
        "--model",
        str(f["model_a"]),
    )
    while s.kills < kills:
        procs = [
            start("predict", str(plate), "--model", str(f[m]), "--overwrite")
            for m in ("model_a", "model_b")
        ]
        codes = kill_after(procs, rng.uniform(0.1, 1.2) * t, rng)
        s.kills += sum(c == -9 for c in codes)
        s.check(
            all(c in (0, 2, -9) for c in codes),
            f"exit codes {codes}: {[p.last_stderr for p in procs]}",
        )
        s.check(not intact(plate, before), "an original chunk changed")
    res = run("recover", str(plate), "--force")
    s.check(res.returncode == 0, f"recover: {res.stderr.strip()}")
    for m in ("model_a", "model_b"):
        res = run("predict", str(plate), "--model", str(f[m]), "--overwrite")
        s.check(res.returncode == 0, f"final predict {m}: {res.stderr.strip()}")
    for name in ("WAVE2 (virtual)", "tubulin (virtual)"):
        s.check(same_channel(plate, f["ref"], name), f"{name} differs from the reference")
    s.check(not intact(plate, before), "an original chunk changed")
    return s


def storm_rechunk_reads(f: dict[str, Path], work: Path, kills: int, rng: random.Random) -> Storm:
    s = Storm("rechunk_reads")
    src, dst = work / "rsrc.zarr", work / "rdst.zarr"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(f["template"], src)
    before = original_files(src)
    t = timed("rechunk", str(src), str(work / "rtiming.zarr"))
    shutil.rmtree(work / "rtiming.zarr")
    while s.kills < kills:
        procs = [
            start("rechunk", str(src), str(dst), "--overwrite"),
            start("predict", str(src), "--model", str(f["model_a"]), "--overwrite"),
        ]
        codes = kill_after(procs, rng.uniform(0.1, 1.5) * t, rng)
        s.kills += sum(c == -9 for c in codes)
        s.check(
            all(c in (0, 2, -9) for c in codes),
            f"exit codes {codes}: {[p.last_stderr for p in procs]}",
        )
        s.check(not intact(src, before), "an original chunk of SRC changed")
        if dst.exists():
            res = run("info", str(dst))
            if res.returncode == 2:
                s.check(
                    "incomplete copy" in res.stderr,
                    f"dst refused for another reason: {res.stderr.strip()}",
                )
            else:
                s.check(res.returncode == 0, f"info dst: {res.stderr.strip()}")
                if res.returncode == 0:
                    copied = omeloc.open_plate(dst).channel_names
                    s.check(
                        all(
                            same_channel(dst, f["template"], n)
                            for n in copied
                            if "virtual" not in n
                        ),
                        "a copied original channel differs",
                    )
    run("recover", str(src), "--force")
    return s


def storm_evaluate_reads(f: dict[str, Path], work: Path, kills: int, rng: random.Random) -> Storm:
    s = Storm("evaluate_reads")
    plate = work / "ev.zarr"
    shutil.rmtree(plate, ignore_errors=True)
    shutil.copytree(f["template"], plate)
    before = original_files(plate)
    assert run("predict", str(plate), "--model", str(f["model_a"])).returncode == 0
    t = timed("predict", str(plate), "--model", str(f["model_a"]), "--overwrite")
    while s.kills < kills:
        pred = start("predict", str(plate), "--model", str(f["model_a"]), "--overwrite")
        ev = start(
            "evaluate",
            str(plate),
            "--pred",
            "WAVE2 (virtual)",
            "--truth",
            "WAVE2",
            "--out",
            str(work / "evaluation"),
            "--no-noise-ceiling",
        )
        time.sleep(rng.uniform(0.1, 1.1) * t)
        if pred.poll() is None:
            pred.kill()
            s.kills += 1
        pred.communicate()
        _, ev_err = ev.communicate(timeout=900)
        print(f"  predict {pred.returncode}, evaluate {ev.returncode}", flush=True)
        s.check(
            ev.returncode in (0, 2),
            f"evaluate exit {ev.returncode}: {(ev_err or '').strip()[-300:]}",
        )
        s.check(not intact(plate, before), "an original chunk changed")
    s.check(run("recover", str(plate), "--force").returncode == 0, "recover failed")
    s.check(
        run("predict", str(plate), "--model", str(f["model_a"]), "--overwrite").returncode == 0,
        "rerun",
    )
    s.check(
        same_channel(plate, f["ref"], "WAVE2 (virtual)"),
        "the virtual channel differs from the reference",
    )
    return s


def _again(out: Path) -> list[str]:
    """``--resume`` when a killed run saved its state, ``--overwrite`` when it left only a
    folder."""
    from omeloc.learn.checkpoint import STATE_FILE

    if (out / STATE_FILE).exists():
        return ["--resume"]
    return ["--overwrite"] if out.exists() else []


def storm_train(f: dict[str, Path], work: Path, kills: int, rng: random.Random) -> Storm:
    s = Storm("train")
    out = work / "resumed"
    shutil.rmtree(out, ignore_errors=True)
    steps = "40"
    common = [
        "train",
        str(f["template"]),
        "--source",
        "actin",
        "--target",
        "WAVE2",
        "--out",
        str(out),
        "--steps",
        steps,
        "--crop",
        "32",
        "--batch-size",
        "2",
        "--depth",
        "2",
        "--val-wells",
        "A2",
    ]
    t = timed(*common[:-2], "--val-wells", "A2", "--out", str(work / "train-timing"))
    shutil.rmtree(work / "train-timing", ignore_errors=True)
    while s.kills < kills:
        proc = start(*common, *_again(out))
        codes = kill_after([proc], rng.uniform(0.1, 1.0) * t, rng)
        s.kills += codes[0] == -9
        s.check(codes[0] in (0, -9), f"train exit {codes[0]}: {proc.last_stderr}")
        if (out / "checkpoint.json").exists():
            why = ""
            try:
                omeloc.load_checkpoint(out)
            except Exception as err:  # noqa: BLE001 - a storm reports, it does not stop
                why = str(err)
            s.check(not why, f"the checkpoint left does not load ({why})")
        if codes[0] == 0:
            shutil.rmtree(out)
    res = run(*common, *_again(out))
    s.check(res.returncode == 0, f"final train: {res.stderr.strip()[-300:]}")
    if res.returncode == 0:
        s.check(omeloc.load_checkpoint(out) is not None, "the final checkpoint does not load")
    return s


def storm_import(f: dict[str, Path], work: Path, kills: int, rng: random.Random) -> Storm:
    import tifffile

    from omeloc.data.tiff_names import NF1_PATTERN

    s = Storm("import")
    tiffs = work / "tiffs"
    if not tiffs.exists():
        tiffs.mkdir()
        r = np.random.default_rng(0)
        for well in ("B7", "B8", "C7"):
            for site in (1, 2):
                for ch, stain in ((1, "DAPI"), (2, "GFP"), (3, "RFP")):
                    tifffile.imwrite(
                        tiffs / f"{well}_01_{ch}_{site}_{stain}_001.tif",
                        r.integers(0, 4000, (256, 256)).astype("uint16"),
                    )
    sources = original_files(tiffs)
    ref = work / "import-ref.zarr"
    shutil.rmtree(ref, ignore_errors=True)
    t = timed("import-tiff", str(tiffs), str(ref), "--pattern", NF1_PATTERN, "--chunk", "64")
    out = work / "import.zarr"
    while s.kills < kills:
        shutil.rmtree(out, ignore_errors=True)
        proc = start("import-tiff", str(tiffs), str(out), "--pattern", NF1_PATTERN, "--chunk", "64")
        codes = kill_after([proc], rng.uniform(0.1, 1.0) * t, rng)
        s.kills += codes[0] == -9
        s.check(codes[0] in (0, -9), f"import exit {codes[0]}: {proc.last_stderr}")
        if out.exists():
            p = omeloc.open_plate(out)
            s.check(
                all(same_channel(out, ref, n) for n in p.channel_names),
                "an import that exists differs",
            )
        s.check(original_files(tiffs) == sources, "a TIFF changed")
    shutil.rmtree(out, ignore_errors=True)
    s.check(
        run(
            "import-tiff", str(tiffs), str(out), "--pattern", NF1_PATTERN, "--chunk", "64"
        ).returncode
        == 0,
        "the final import failed",
    )
    s.check(
        all(same_channel(out, ref, n) for n in omeloc.open_plate(out).channel_names),
        "final import differs",
    )
    return s


STORMS = {
    "import": storm_import,
    "train": storm_train,
    "two_writers": storm_two_writers,
    "rechunk_reads": storm_rechunk_reads,
    "evaluate_reads": storm_evaluate_reads,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--only", default=",".join(STORMS))
    parser.add_argument("--seed", type=int, default=30)
    args = parser.parse_args()
    fixtures = setup(args.work)
    results = {}
    for name in args.only.split(","):
        t0 = time.perf_counter()
        storm = STORMS[name](fixtures, args.work, args.kills, random.Random(f"{args.seed}-{name}"))
        results[name] = {
            "kills": storm.kills,
            "checks": storm.checks,
            "failures": storm.failures,
            "seconds": round(time.perf_counter() - t0, 1),
            "load": os.getloadavg()[0],
        }
        print(
            storm.line(),
            f"[{results[name]['seconds']} s, load {results[name]['load']:.1f}]",
            flush=True,
        )
    RESULTS.mkdir(exist_ok=True)
    tag = "-".join(args.only.split(",")) if args.only != ",".join(STORMS) else "all"
    (RESULTS / f"kill_storms-{tag}.json").write_text(json.dumps(results, indent=1) + "\n")
    return 1 if any(r["failures"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
