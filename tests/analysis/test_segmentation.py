"""Segmentation-based scores: nuclei segmented alike on the virtual and the real channel, matched at
IoU 0.5 (issue 28); on synthetic nuclei whose masks are known."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import omeloc
from omeloc.analysis.segmentation import match_objects, nuclei_scores, segment_nuclei
from omeloc.cli import main


def nuclei_field(seed: int = 0, shape=(192, 192), n: int = 14, radius: int = 9):
    """Non-overlapping bright disks on a noisy background: ``(image uint16, true labels)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    centres: list[tuple[int, int]] = []
    while len(centres) < n:
        cy, cx = (
            rng.integers(radius + 2, shape[0] - radius - 2),
            rng.integers(radius + 2, shape[1] - radius - 2),
        )
        if all((cy - y) ** 2 + (cx - x) ** 2 > (2 * radius + 4) ** 2 for y, x in centres):
            centres.append((int(cy), int(cx)))
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = len(centres)
    image = (
        200 + 1500 * (labels > 0) * rng.uniform(0.7, 1.0, n + 1)[labels] + rng.normal(0, 40, shape)
    )
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def test_the_pipeline_finds_the_known_nuclei():
    image, truth = nuclei_field()
    scores = match_objects(segment_nuclei(image), truth)
    assert scores.true == 14 and scores.f1 >= 0.9 and scores.dice >= 0.9


def test_touching_nuclei_are_split_by_the_watershed():
    yy, xx = np.mgrid[:64, :96]
    img = (
        ((yy - 32) ** 2 + (xx - 36) ** 2 <= 144) | ((yy - 32) ** 2 + (xx - 58) ** 2 <= 144)
    ).astype(float)
    assert segment_nuclei(img).max() == 2


def test_perfect_prediction_scores_one_and_a_shifted_one_less():
    image, _ = nuclei_field(seed=1)
    perfect = nuclei_scores(image, image)
    assert (
        perfect["nuclei_f1"] == 1.0
        and perfect["nuclei_dice"] == 1.0
        and perfect["nuclei_count_error"] == 0.0
    )
    near = nuclei_scores(
        np.roll(image, 3, axis=1), image
    )  # 3 px on a radius of 9: IoU ~0.65, still matched
    assert near["nuclei_f1"] == 1.0 and near["nuclei_dice"] < 1.0
    shifted = nuclei_scores(np.roll(image, 6, axis=1), image)  # 6 px: IoU ~0.41, no match
    assert shifted["nuclei_f1"] < 1.0 and shifted["nuclei_dice"] < near["nuclei_dice"]
    assert shifted["nuclei_count_error"] == 0.0  # as many nuclei, in the wrong places


def test_empty_and_full_cases_are_defined():
    empty = np.zeros((32, 32), np.int32)
    assert match_objects(empty, empty).f1 == 1.0
    one = empty.copy()
    one[4:10, 4:10] = 1
    s = match_objects(empty, one)
    assert s.f1 == 0.0 and s.recall == 0.0 and s.count_error == 1.0


def _rows(path):
    with open(path, newline="") as fh:
        return {r["well"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def nuclei_plate(tmp_path_factory):
    images = {}
    for i, (r, c) in enumerate((("A", "1"), ("A", "2"))):
        dna, _ = nuclei_field(seed=10 + i)
        virtual = dna if c == "1" else np.roll(dna, 6, axis=1)  # A1 perfect, A2 shifted
        images[(r, c, "0")] = np.stack([dna, virtual])
    return omeloc.write_plate(
        tmp_path_factory.mktemp("seg") / "p.zarr",
        images,
        channel_names=["DNA", "DNA (virtual)"],
        levels=1,
    )


def test_evaluate_segment_nuclei_columns_wells_and_heatmap(nuclei_plate, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(nuclei_plate),
                "--pred",
                "DNA (virtual)",
                "--truth",
                "DNA",
                "--out",
                str(out),
                "--segment",
                "nuclei",
                "--no-noise-ceiling",
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert "nuclei_f1" in capsys.readouterr().out
    fields = _rows(out / "metrics.csv")
    assert float(fields["A1"]["nuclei_f1"]) == 1.0 and float(fields["A1"]["nuclei_dice"]) == 1.0
    assert float(fields["A2"]["nuclei_f1"]) < 1.0
    wells = _rows(out / "wells.csv")
    assert float(wells["A1"]["nuclei_true"]) == 14 and float(wells["A2"]["nuclei_dice"]) < 1.0
    assert (out / "heatmap_nuclei_f1.png").stat().st_size > 0
    # the screening table can rank wells by a segmentation score
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(nuclei_plate),
                "--pred",
                "DNA (virtual)",
                "--truth",
                "DNA",
                "--out",
                str(tmp_path / "e2"),
                "--segment",
                "nuclei",
                "--metric",
                "nuclei_f1",
                "--no-noise-ceiling",
            ]
        )
        == 0
    )


def test_segment_metric_without_segment_refused(nuclei_plate, tmp_path, capsys):
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(nuclei_plate),
                "--pred",
                "DNA (virtual)",
                "--truth",
                "DNA",
                "--out",
                str(tmp_path / "e"),
                "--metric",
                "nuclei_f1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "--segment nuclei" in err and len(err.splitlines()) == 1
