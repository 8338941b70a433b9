"""Open a BioImage Model Zoo package (``.zip``, a folder or its ``rdf.yaml``) as an omeloc model.

:func:`open_package` reads the package with bioimageio.spec (model spec 0.5; 0.4 is converted
by bioimageio.spec on load), checks everything omeloc needs before any pixel is read, and returns a
:class:`Package`: the parsed description, the folder its files are in, the chosen weights (with
their sha256 checked) and the :class:`~omeloc.modelio.describe.ModelDescription`.

A package is untrusted input: a zip is unpacked by omeloc into a cache folder keyed by its
sha256, refusing members that would leave it (``..``, absolute paths, links) and archives
larger than :data:`MAX_UNPACKED`; every file a description names must lie inside the package
(no URL is ever fetched); ``pytorch_state_dict`` weights ship Python code and run only with
``trust_code=True``.  bioimageio.core is not needed here (only bioimageio.spec, for parsing).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omeloc.errors import CheckpointError
from omeloc.modelio.describe import AxisSpec, ModelDescription, Step, TensorSpec
from omeloc.modelio.processing import SUPPORTED_STEPS

__all__ = ["MAX_UNPACKED", "RUNNABLE_WEIGHTS", "Package", "is_package", "open_package", "sha256_of"]

logger = logging.getLogger(__name__)

#: weight formats omeloc runs, in the order it prefers them
RUNNABLE_WEIGHTS = ("torchscript", "onnx", "pytorch_state_dict")
#: the most bytes a package zip may unpack to
MAX_UNPACKED = 4 << 30
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


class PackageError(CheckpointError):
    """A model package is malformed, unsupported, unsafe or does not reproduce its test output."""


def is_package(path: str | Path) -> bool:
    """Whether ``path`` looks like a BMZ package (a zip, an rdf.yaml, or a folder holding one)."""
    p = Path(path)
    if p.suffix.lower() == ".zip" or p.name.endswith(RDF_NAMES):
        return True
    return (
        p.is_dir()
        and any((p / n).is_file() for n in RDF_NAMES)
        and not (p / "checkpoint.json").is_file()
    )


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_root() -> Path:
    base = os.environ.get("OMELOC_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "omeloc"
    )
    return Path(base) / "bmz"


def _unpack(zpath: Path, digest: str) -> Path:
    """The zip unpacked (once) into the cache, member by member, refusing unsafe members."""
    dest = _cache_root() / digest
    if (dest / ".complete").is_file():
        return dest
    try:
        zf = zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, OSError) as err:
        raise PackageError(
            f"{zpath} is not a readable zip ({err}). Download the package again."
        ) from None
    with zf:
        members = zf.infolist()
        if sum(m.file_size for m in members) > MAX_UNPACKED:
            raise PackageError(
                f"{zpath} unpacks to more than {MAX_UNPACKED >> 30} GiB; omeloc refuses it."
            )
        tmp = dest.with_name(f".{digest}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for m in members:
                name = m.filename
                mode = (m.external_attr >> 16) & 0o170000
                if (
                    name.startswith(("/", "\\"))
                    or ".." in Path(name).parts
                    or ":" in name
                    or mode == 0o120000
                ):
                    raise PackageError(
                        f"{zpath} holds {name!r}, a member that would leave the package "
                        f"(absolute, '..' or a link); omeloc refuses it."
                    )
                if m.is_dir():
                    continue
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PackageError(
                f"{zpath} is a corrupted zip ({type(err).__name__}: {err}). "
                f"Download the package again."
            ) from None
        except PackageError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / ".complete").write_text(digest)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


def _locate(path: str | Path) -> tuple[Path, Path, str]:
    """(folder, rdf file, sha256 of the package file as given: the zip, or the rdf.yaml)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PackageError(
            f"No model package at {p}: it does not exist. Pass a BMZ .zip, a folder or its "
            "rdf.yaml."
        )
    if p.is_file() and p.suffix.lower() == ".zip":
        digest = sha256_of(p)
        folder = _unpack(p, digest)
    elif p.is_file():
        folder, digest = p.parent, sha256_of(p)
    else:
        folder = p
        digest = ""
    for name in [p.name] if p.is_file() and p.suffix.lower() != ".zip" else RDF_NAMES:
        if (folder / name).is_file():
            rdf = folder / name
            return folder.resolve(), rdf.resolve(), digest or sha256_of(rdf)
    raise PackageError(
        f"{p} has no rdf.yaml: not a BioImage Model Zoo package. Pass a BMZ .zip, a "
        f"folder or its rdf.yaml."
    )


def _load_descr(rdf: Path) -> Any:
    """The description, converted to model spec 0.5 (bioimageio.spec), validated without I/O."""
    try:
        from bioimageio.spec import InvalidDescr, load_description
        from bioimageio.spec.model import v0_5
    except ImportError as err:  # pragma: no cover - the bmz extra is missing
        raise PackageError(
            f"Reading model packages needs bioimageio.spec ({err}); install omeloc[bmz]."
        ) from None
    try:
        descr = load_description(rdf, format_version="latest", perform_io_checks=False)
    except Exception as err:  # noqa: BLE001 - bioimageio.spec raises many kinds on broken YAML
        raise PackageError(
            f"{rdf} is not a valid model description ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). Fix or re-export the package."
        ) from None
    if isinstance(descr, InvalidDescr) or not isinstance(descr, v0_5.ModelDescr):
        kind = getattr(descr, "type", "?")
        errors = getattr(getattr(descr, "validation_summary", None), "details", None) or []
        first = ""
        for d in errors:
            for e in getattr(d, "errors", []) or []:
                first = f"{'.'.join(map(str, e.loc))}: {e.msg}"
                break
            if first:
                break
        raise PackageError(
            f"{rdf} is not a valid model description (type {kind!r}"
            + (f"; {first[:200]}" if first else "")
            + "). Omeloc reads BMZ model spec 0.5 "
            "(and 0.4, converted). Fix or re-export the package."
        )
    return descr


def _inside(folder: Path, source: Any, what: str) -> Path:
    """The local file a description names, confined to the package folder."""
    text = str(source)
    if "://" in text and not text.startswith("file://"):
        raise PackageError(
            f"The package names {what} at {text}, a URL; omeloc never downloads. Use a "
            f"package (.zip) that contains it."
        )
    path = Path(getattr(source, "path", text.removeprefix("file://")))
    full = (folder / path).resolve() if not path.is_absolute() else path.resolve()
    if not full.is_relative_to(folder):
        raise PackageError(
            f"The package names {what} {text}, outside its folder {folder}; omeloc refuses it."
        )
    if not full.is_file():
        raise PackageError(
            f"The package's {what} {path.name} is missing from {folder}. Re-download or "
            f"re-export the package."
        )
    return full


def _check_sha(path: Path, declared: Any, what: str) -> str:
    seen = sha256_of(path)
    if declared is not None and str(declared).lower() != seen:
        raise PackageError(
            f"The sha256 of {what} {path.name} is {seen[:12]}..., not {str(declared)[:12]}... as "
            f"the package declares: the file was changed or corrupted. Re-download the package."
        )
    return seen


@dataclass(frozen=True)
class Package:
    """An opened, checked BMZ package.

    Attributes
    ----------
    path
        The package as given (zip, folder or rdf.yaml), resolved.
    folder
        Where its files are (the zip unpacked into omeloc's cache).
    descr
        bioimageio.spec's ``ModelDescr`` (spec 0.5).
    weights_format, weights_file, weights_sha256
        The weights omeloc runs and their checked digest.
    architecture
        For ``pytorch_state_dict``: ``(source file, callable name, kwargs)``.
    description
        The :class:`~omeloc.modelio.describe.ModelDescription`.
    sha256
        Of the package file (zip, or rdf.yaml).
    """

    path: Path
    folder: Path
    descr: Any
    weights_format: str
    weights_file: Path
    weights_sha256: str
    description: ModelDescription
    sha256: str
    architecture: tuple[Path, str, tuple[tuple[str, Any], ...]] | None = None

    @property
    def key(self) -> str:
        return f"bmz:{self.sha256[:16]}:{self.weights_format}:{self.weights_sha256[:16]}"


def open_package(
    path: str | Path, *, trust_code: bool = False, weights: str | None = None
) -> Package:
    """Open and check a BMZ package (nothing of it runs yet).

    Parameters
    ----------
    path
        A ``.zip``, a folder with ``rdf.yaml``, or the ``rdf.yaml`` itself.
    trust_code
        Allow ``pytorch_state_dict`` weights, whose architecture is Python code from the package.
    weights
        A weight format to use (default: the first of :data:`RUNNABLE_WEIGHTS` the package has,
        ``pytorch_state_dict`` only with ``trust_code``).

    Raises
    ------
    CheckpointError
        (:class:`PackageError`) one line: corrupted zip, invalid description, missing weights,
        sha256 mismatch, unsupported weights, axes or steps (listing what omeloc supports),
        state-dict weights without ``trust_code`` (naming the code file).
    """
    folder, rdf, digest = _locate(path)
    descr = _load_descr(rdf)
    description = describe_package(descr, digest)
    fmt = _choose_weights(descr, trust_code, weights, folder)
    entry = getattr(descr.weights, fmt)
    wfile = _inside(folder, entry.source, f"{fmt} weights")
    wsha = _check_sha(wfile, getattr(entry, "sha256", None), f"{fmt} weights")
    arch = None
    if fmt == "pytorch_state_dict":
        a = entry.architecture
        if not hasattr(a, "source"):
            raise PackageError(
                f"The package's pytorch_state_dict architecture imports "
                f"{getattr(a, 'import_from', '?')}.{a.callable} from an installed library; omeloc "
                "runs only architectures shipped in the package. Use its torchscript or onnx "
                "weights."
            )
        afile = _inside(folder, a.source, "architecture source")
        _check_sha(afile, getattr(a, "sha256", None), "architecture source")
        arch = (
            afile,
            str(a.callable),
            tuple(sorted((str(k), v) for k, v in (a.kwargs or {}).items())),
        )
    return Package(
        path=Path(path).expanduser().resolve(),
        folder=folder,
        descr=descr,
        weights_format=fmt,
        weights_file=wfile,
        weights_sha256=wsha,
        description=description,
        sha256=digest,
        architecture=arch,
    )


#: every weights format of the BMZ model spec 0.5, in omeloc's order of preference
WEIGHT_FORMATS = (
    "torchscript",
    "onnx",
    "pytorch_state_dict",
    "keras_hdf5",
    "keras_v3",
    "tensorflow_js",
    "tensorflow_saved_model_bundle",
)


def _declared_weights(descr: Any) -> tuple[str, ...]:
    """The weights formats the package declares, in :data:`WEIGHT_FORMATS` order."""
    return tuple(f for f in WEIGHT_FORMATS if getattr(descr.weights, f, None) is not None)


def _choose_weights(descr: Any, trust_code: bool, wanted: str | None, folder: Path) -> str:
    have = _declared_weights(descr)
    runnable = [f for f in RUNNABLE_WEIGHTS if f in have]
    if wanted is not None:
        if wanted not in have:
            raise PackageError(f"The package has no {wanted} weights (it has {', '.join(have)}).")
        runnable = [wanted]
    if not runnable:
        raise PackageError(
            f"The package's weights are {', '.join(have) or 'none'}; omeloc runs "
            f"{', '.join(RUNNABLE_WEIGHTS)} (the last with --trust-code). Convert the model "
            f"to one of these."
        )
    safe = [f for f in runnable if f != "pytorch_state_dict"]
    if safe:
        return safe[0]
    if not trust_code:
        a = descr.weights.pytorch_state_dict.architecture
        code = Path(str(getattr(a, "source", getattr(a, "import_from", "?")))).name
        raise PackageError(
            f"The package's only runnable weights are pytorch_state_dict, whose architecture is "
            f"Python code ({code} in {folder}) that running it executes. Read it, then pass "
            f"--trust-code to run it."
        )
    return "pytorch_state_dict"


# -- the ModelDescription of a spec-0.5 description ---------------------------------------------
def _axis(ax: Any, tensor: str) -> AxisSpec:
    kind = str(getattr(ax, "type", "space"))
    aid = str(ax.id)
    if kind == "batch":
        return AxisSpec(aid, "batch")
    if kind == "channel":
        return AxisSpec(
            aid,
            "channel",
            size=len(ax.channel_names),
            channel_names=tuple(str(n) for n in ax.channel_names),
        )
    size = getattr(ax, "size", None)
    common: dict[str, Any] = {
        "halo": int(getattr(ax, "halo", 0) or 0),
        "scale": float(getattr(ax, "scale", 1.0) or 1.0),
        "unit": str(ax.unit) if getattr(ax, "unit", None) else None,
    }
    if isinstance(size, int):
        return AxisSpec(aid, kind, size=size, **common)
    if hasattr(size, "step"):
        return AxisSpec(aid, kind, min=int(size.min), step=int(size.step), **common)
    if hasattr(size, "tensor_id"):
        if int(getattr(size, "offset", 0) or 0):
            raise PackageError(
                f"Output axis {tensor}.{aid} is {size.offset:+d} px off its input's size; omeloc "
                f"runs models whose outputs have their inputs' size (axes b, c, z, y, x)."
            )
        return AxisSpec(aid, kind, same_as=f"{size.tensor_id}.{size.axis_id}", **common)
    raise PackageError(
        f"Axis {tensor}.{aid} has a data-dependent size; omeloc runs image-to-image models "
        f"(fixed, min/step or input-referenced sizes)."
    )


def _steps(ops: Any, tensor: str) -> tuple[Step, ...]:
    out = []
    for op in ops or ():
        name = str(op.id)
        if name not in SUPPORTED_STEPS:
            raise PackageError(
                f"Tensor {tensor} declares processing {name!r}; omeloc supports "
                f"{', '.join(SUPPORTED_STEPS)}."
            )
        kwargs = (
            op.kwargs.model_dump(mode="json") if getattr(op, "kwargs", None) is not None else {}
        )
        out.append(Step.of(name, **{k: v for k, v in kwargs.items() if v is not None}))
    return tuple(out)


_SUPPORTED_AXES = "b, c, y, x and z of size 1 (one plane at a time)"


def describe_package(descr: Any, digest: str = "") -> ModelDescription:
    """The :class:`ModelDescription` of a bioimageio.spec 0.5 ``ModelDescr``.

    Raises :class:`PackageError` for what omeloc cannot run (listing what it can).
    """

    def tensor(t: Any, processing: str) -> TensorSpec:
        axes = tuple(_axis(a, str(t.id)) for a in t.axes)
        spec = TensorSpec(
            str(t.id),
            axes,
            _steps(getattr(t, processing, ()), str(t.id)),
            str(getattr(t, "description", "") or ""),
        )
        layout = spec.layout.replace("b", "")
        ok = layout in ("cyx", "yx") or (layout in ("czyx", "zyx") and _flat_z(spec))
        if not ok:
            raise PackageError(
                f"Tensor {t.id} has axes {','.join(a.id for a in axes)}; omeloc runs models "
                f"with axes {_SUPPORTED_AXES}."
            )
        return spec

    inputs = tuple(tensor(t, "preprocessing") for t in descr.inputs)
    outputs = tuple(tensor(t, "postprocessing") for t in descr.outputs)
    if len(inputs) != 1 or len(outputs) != 1:
        raise PackageError(
            f"The package has {len(inputs)} input(s) and {len(outputs)} output(s); omeloc runs "
            f"models with one input and one output tensor."
        )
    y = inputs[0].axis("y")
    pixel = (y.scale, inputs[0].axis("x").scale) if y is not None and y.unit else None
    weights = _declared_weights(descr)
    ident = (
        ("id", str(descr.id or "")),
        ("version", str(getattr(descr, "version", None) or "")),
        ("sha256", digest),
        ("format_version", str(descr.format_version)),
    )
    training = getattr(descr, "training_data", None)
    return ModelDescription(
        name=str(descr.name),
        kind="bmz",
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        pixel_size=pixel,
        unit=y.unit if pixel else None,
        identity=ident,
        training=(("training data", str(getattr(training, "id", training))),) if training else (),
        authors=tuple(str(a.name) for a in descr.authors),
        license=str(descr.license) if descr.license else None,
        citations=tuple(str(c.text) + (f" doi:{c.doi}" if c.doi else "") for c in descr.cite),
    )


def _flat_z(spec: TensorSpec) -> bool:
    z = spec.axis("z")
    return z is not None and (
        z.size == 1 or (z.size is None and (z.min or 1) == 1) or z.same_as is not None
    )
