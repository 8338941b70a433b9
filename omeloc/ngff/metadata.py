"""Typed read views of NGFF metadata: the plate, well and multiscales records omeloc reads.

omeloc reads a plate's metadata into these small frozen dataclasses, parsed where the JSON
is read (:mod:`omeloc.ngff.plate`), with one-line errors naming the broken key.  Decision:
these, not ome-zarr-models' pydantic models at run time.  omeloc opens what it can use
(upper- or lower-case axis names, missing scales, extra keys) and checks what it relies on
itself (DESIGN: the published validators accept an ``omero`` list shorter than the channel
axis and wells of different channel counts, so omeloc's own checks are needed anyway); a
full model validation per image would add its cost on plates of thousands of images; and
the models are two separate trees (``v04``, ``v05``) where omeloc reads one shape.
ome-zarr-models stays the independent check, in the tests, that what omeloc *writes* is
valid NGFF (``tests/ngff/test_written_metadata_validates.py``), so it is a test dependency.

The write-back edits documents as raw JSON (:mod:`omeloc.writeback.journal`), keeping every
key it does not know: these views are for reading only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omeloc.errors import NotOmeZarrError
from omeloc.ngff.format import safe_key

__all__ = ["Acquisition", "Dataset", "Multiscale", "PlateMeta", "WellImage", "WellMeta"]


@dataclass(frozen=True)
class Dataset:
    """One level of a multiscale image: its array path and its scale (``None``: no scale given)."""

    path: str
    scale: tuple[float, ...] | None


@dataclass(frozen=True)
class Multiscale:
    """``multiscales[0]`` of an image: its axes (as stored), levels and NGFF version (if named)."""

    axes: tuple[Any, ...]
    datasets: tuple[Dataset, ...]
    version: str | None = None

    @classmethod
    def from_json(cls, ome: Mapping[str, Any], url: str, what: str) -> Multiscale:
        """The first multiscale of an image's NGFF metadata ``ome``; ``what`` names it in messages.

        Raises
        ------
        NotOmeZarrError
            No ``multiscales``, no axes, or no datasets with a path.
        UnsafePathError
            A dataset path that leaves the image.
        """
        multiscales = ome.get("multiscales")
        if (
            not multiscales
            or not isinstance(multiscales, Sequence)
            or not isinstance(multiscales[0], Mapping)
        ):
            raise NotOmeZarrError(
                f"{url} has no 'multiscales' metadata, so it is not an OME-Zarr image. "
                f"Point omeloc at an image group."
            )
        ms = multiscales[0]
        axes = ms.get("axes")
        if not axes or not isinstance(axes, Sequence) or isinstance(axes, str):
            raise NotOmeZarrError(
                f"Image {url} has no multiscales axes (NGFF < 0.4?). Convert it to NGFF 0.4 or 0.5."
            )
        datasets = ms.get("datasets") or []
        if not datasets or not all(isinstance(d, Mapping) and "path" in d for d in datasets):
            raise NotOmeZarrError(
                f"Image {url} has no datasets with a 'path' in multiscales[0]. Fix its metadata."
            )
        levels = tuple(
            Dataset(
                path=safe_key(
                    str(d["path"]),
                    f"Image {what} lists dataset path",
                    "Fix its multiscales metadata.",
                ),
                scale=_scale(d),
            )
            for d in datasets
        )
        version = ms.get("version")
        return cls(
            axes=tuple(axes), datasets=levels, version=None if version is None else str(version)
        )


def _scale(dataset: Mapping[str, Any]) -> tuple[float, ...] | None:
    """The last ``scale`` transform of a dataset (``None`` when it has none)."""
    scale = None
    for t in dataset.get("coordinateTransformations") or []:
        if isinstance(t, Mapping) and t.get("type") == "scale" and "scale" in t:
            scale = tuple(float(s) for s in t["scale"])
    return scale


def channel_labels(ome: Mapping[str, Any]) -> list[Any]:
    """``omero.channels[].label`` of an image's NGFF metadata (``None``: a channel without)."""
    omero = ome.get("omero") or {}
    channels = omero.get("channels", []) if isinstance(omero, Mapping) else []
    return [c.get("label") for c in channels if isinstance(c, Mapping)]


@dataclass(frozen=True)
class WellImage:
    """A field a well lists: its path and the id (as text) of its acquisition, if given."""

    path: str
    acquisition: str | None = None


@dataclass(frozen=True)
class WellMeta:
    """A well's ``well`` metadata: the fields it lists."""

    images: tuple[WellImage, ...]

    @classmethod
    def from_json(cls, ome: Mapping[str, Any], wpath: str) -> WellMeta:
        """The ``well`` metadata of well ``wpath`` (entries without a path are skipped)."""
        well = ome.get("well") or {}
        listed = [
            i
            for i in (well.get("images", []) if isinstance(well, Mapping) else [])
            if isinstance(i, Mapping) and "path" in i
        ]
        return cls(
            images=tuple(
                WellImage(
                    path=safe_key(
                        str(i["path"]), f"Well {wpath} lists image path", "Fix the well's metadata."
                    ),
                    acquisition=None if i.get("acquisition") is None else str(i["acquisition"]),
                )
                for i in listed
            )
        )


@dataclass(frozen=True)
class Acquisition:
    """An acquisition a plate lists: its id (as text) and name (if given)."""

    id: str
    name: str | None = None


@dataclass(frozen=True)
class PlateMeta:
    """A plate's ``plate`` metadata: name, rows, columns, well paths, acquisitions and version."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    wells: tuple[str, ...]
    name: str | None = None
    acquisitions: tuple[Acquisition, ...] = ()
    version: str | None = None

    @classmethod
    def from_json(cls, plate: Mapping[str, Any], url: str) -> PlateMeta:
        """The ``plate`` metadata of the plate at ``url``.

        Raises
        ------
        NotOmeZarrError
            Rows, columns or well paths missing.
        """
        try:
            rows = tuple(str(r["name"]) for r in plate["rows"])
            cols = tuple(str(c["name"]) for c in plate["columns"])
            wells = tuple(str(w["path"]) for w in plate["wells"])
        except (KeyError, TypeError) as err:
            raise NotOmeZarrError(
                f"Plate {url} has incomplete 'plate' metadata (missing {err}). "
                f"It needs rows, columns and wells with paths."
            ) from err
        acqs = tuple(
            Acquisition(id=str(a["id"]), name=None if a.get("name") is None else str(a["name"]))
            for a in plate.get("acquisitions") or []
            if isinstance(a, Mapping) and a.get("id") is not None
        )
        name, version = plate.get("name"), plate.get("version")
        return cls(
            rows=rows,
            columns=cols,
            wells=wells,
            name=None if not name else str(name),
            acquisitions=acqs,
            version=None if version is None else str(version),
        )
