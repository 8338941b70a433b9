"""Axes by meaning: which axis of an NGFF image is time, channel, z, y or x.

NGFF names axes freely and types them (``"time"``, ``"channel"``, ``"space"``, or custom);
tools spell the names differently (iohub writes ``T, C, Z, Y, X``, most others ``t, c, z, y,
x``).  omeloc works with one key per axis, ``t``, ``c``, ``z``, ``y`` or ``x``, found from the
axis' ``type`` first and its name (any case) second, so every reader of :class:`Image.axes
<omeloc.ngff.plate.Image>` can keep asking ``axes.index("c")``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omeloc.errors import NotOmeZarrError

__all__ = ["AXIS_KEYS", "axis_keys", "stored_axis_names"]

#: The keys omeloc gives the axes it understands, in NGFF's order.
AXIS_KEYS = ("t", "c", "z", "y", "x")

_NAME_ALIASES = {"time": "t", "channel": "c", "channels": "c", "ch": "c"}
_TYPE_KEYS = {"time": "t", "channel": "c"}
_SPACE_BY_POSITION = {1: ("x",), 2: ("y", "x"), 3: ("z", "y", "x")}


def stored_axis_names(axes_meta: Sequence[Any]) -> tuple[str, ...]:
    """The axis names as the metadata spells them (NGFF 0.4+: dicts with ``name``; 0.3: strings)."""
    return tuple(str(a.get("name", "")) if isinstance(a, Mapping) else str(a) for a in axes_meta)


def _space_keys(axes_meta: Sequence[Any]) -> dict[int, str]:
    """Keys of the ``space`` axes: their name when it is z/y/x, else by position (the last is x)."""
    space = [
        i
        for i, a in enumerate(axes_meta)
        if isinstance(a, Mapping) and str(a.get("type", "")).lower() == "space"
    ]
    names = [stored_axis_names([axes_meta[i]])[0].lower() for i in space]
    if all(n in ("z", "y", "x") for n in names) and len(set(names)) == len(names):
        return dict(zip(space, names))
    return dict(zip(space, _SPACE_BY_POSITION.get(len(space), ())))


def axis_keys(axes_meta: Sequence[Any], where: str) -> tuple[str, ...]:
    """One key per axis (``t``, ``c``, ``z``, ``y``, ``x``; other axes keep their lower-case name).

    An axis is the channel axis when its ``type`` is ``"channel"`` or, without a type, when
    its name is ``c``/``C``/``channel``; time likewise.  Space axes named z/y/x (any case) keep
    that name; otherwise the last space axis is x, the one before y, a third z.

    Parameters
    ----------
    axes_meta : sequence
        ``multiscales[0].axes`` as stored.
    where : str
        The image, for messages.

    Returns
    -------
    tuple of str

    Raises
    ------
    NotOmeZarrError
        Two axes with one meaning, or no c, y or x axis.

    Examples
    --------
    >>> axis_keys([{"name": n, "type": t} for n, t in zip("TCZYX", ["time", "channel"] + ["space"] * 3)], "img")
    ('t', 'c', 'z', 'y', 'x')
    >>> axis_keys([{"name": "ch", "type": "channel"}, {"name": "row", "type": "space"},
    ...            {"name": "col", "type": "space"}], "img")
    ('c', 'y', 'x')
    """  # noqa: E501
    names = stored_axis_names(axes_meta)
    space = _space_keys(axes_meta)
    keys = []
    for i, (meta, name) in enumerate(zip(axes_meta, names)):
        kind = str(meta.get("type", "")).lower() if isinstance(meta, Mapping) else ""
        low = name.lower()
        key = space.get(i) or _TYPE_KEYS.get(kind) or _NAME_ALIASES.get(low, low)
        keys.append(key)
    doubled = sorted({k for k in keys if keys.count(k) > 1})
    if doubled:
        raise NotOmeZarrError(
            f"Image {where} has axes {', '.join(names)} with more than one {'/'.join(doubled)} "
            f"axis. Fix multiscales[0].axes (one axis per meaning, typed time/channel/space)."
        )
    missing = [a for a in ("c", "y", "x") if a not in keys]
    if missing:
        raise NotOmeZarrError(
            f"Image {where} has axes {''.join(names)!r} without {', '.join(missing)}; omeloc needs "
            f"c, y and x. Add a channel axis (e.g. rewrite the image as cyx)."
        )
    return tuple(keys)
