"""The one layout rule: may a channel be written without rewriting a file that holds an original
channel?

A chunk (or, when the array is sharded, a shard) is one file or object.  When a storage unit
holds ``k > 1`` channels along ``c`` (ome-zarr-py's and ngff-zarr's default puts every channel
in one chunk), writing channel ``i`` rewrites the whole unit ``i // k``, and with it every
other channel stored there.  The rule, used alike by ``omeloc info``, the write-back's
preflight (``predict``, ``add_channel``):

- writing channel ``i`` is allowed when every *other* existing channel in its storage unit,
  at every level, is a virtual channel omeloc wrote (whose old bytes the journal keeps, so
  a rollback restores them);
- in particular appending to ``n`` channels is always allowed when ``n`` is a multiple of
  ``k`` (the new channel starts a unit of its own), and a chunk of 1 along ``c`` always
  qualifies;
- it is refused only when an *original* channel's file would be rewritten.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from omeloc.ngff.plate import Image

__all__ = [
    "append_problems",
    "channels_per_file",
    "shared_channels",
    "virtual_channels",
    "write_problems",
]


def channels_per_file(image: Image, level: int = 0) -> tuple[str, int]:
    """The storage unit of a level (``"shard"`` or ``"chunk"``) and how many channels it holds
    along ``c``."""
    c_axis = image.axes.index("c")
    shards = image.shards(level)
    return ("shard", shards[c_axis]) if shards else ("chunk", image.chunks(level)[c_axis])


def virtual_channels(image: Image) -> frozenset[int]:
    """Indices of the channels omeloc wrote into ``image`` (its ``omeloc.channels[name].virtual``
    record)."""
    record = image.attrs.get("omeloc") if isinstance(image.attrs, Mapping) else None
    channels = record.get("channels") if isinstance(record, Mapping) else None
    if not isinstance(channels, Mapping):
        return frozenset()
    return frozenset(
        i
        for i, name in enumerate(image.channel_names)
        if isinstance(channels.get(name), Mapping) and channels[name].get("virtual") is True
    )


def shared_channels(image: Image, index: int | None = None) -> dict[int, tuple[int, ...]]:
    """Per level, the other existing channels stored in the files that writing channel ``index``
    rewrites.

    Parameters
    ----------
    image : Image
        The image as it is now.
    index : int, optional
        The channel to write; ``None`` (default) for a channel appended after the last.

    Returns
    -------
    dict
        Level → channel indices (empty tuple: the write touches no other channel's bytes).
    """
    c_axis = image.axes.index("c")
    out: dict[int, tuple[int, ...]] = {}
    for level in range(len(image.level_paths)):
        n_c = image.shapes[level][c_axis]
        target = n_c if index is None else index
        _, k = channels_per_file(image, level)
        first = target // k * k
        out[level] = tuple(i for i in range(first, min(first + k, n_c)) if i != target)
    return out


def write_problems(
    image: Image, index: int | None = None, virtual: Collection[int] | None = None
) -> list[str]:
    """Reasons why writing channel ``index`` would rewrite a file holding an original channel
    (empty: allowed).

    Parameters
    ----------
    image : Image
        The image as it is now.
    index : int, optional
        The channel to write (replace); ``None`` (default) appends a channel.
    virtual : collection of int, optional
        Channels that are not original (omeloc wrote them); default :func:`virtual_channels`.

    Returns
    -------
    list of str
        One line per level that breaks the rule, e.g. ``"level '0': 3 channels in chunks of 2
        along c: the new channel's chunk file holds original channel(s) 2"``.
    """
    virtual = virtual_channels(image) if virtual is None else frozenset(virtual)
    c_axis = image.axes.index("c")
    problems = []
    for level, mates in shared_channels(image, index).items():
        originals = [i for i in mates if i not in virtual]
        if originals:
            kind, k = channels_per_file(image, level)
            n_c = image.shapes[level][c_axis]
            which = "the new channel's" if index is None else f"channel {index}'s"
            problems.append(
                f"level {image.level_paths[level]!r}: {n_c} channels in {kind}s of {k} along c: "
                f"{which} {kind} file holds original channel(s) {', '.join(map(str, originals))}"
            )
    return problems


def append_problems(image: Image, virtual: Collection[int] | None = None) -> list[str]:
    """Reasons why appending a channel to ``image`` would rewrite a file holding an original
    channel.

    Empty when it is allowed (see the module docstring): :func:`write_problems` for a new channel.
    """
    return write_problems(image, None, virtual)
