"""Can a channel be appended to an image without rewriting any existing chunk file?"""

from __future__ import annotations

from omeloc.ngff.plate import Image

__all__ = ["append_problems", "writeback_problems"]


def append_problems(image: Image) -> list[str]:
    """Reasons why appending a channel to ``image`` would rewrite existing chunks (empty: it is safe).

    Appending a channel leaves every existing chunk file untouched only if, at every level,
    the channel count is a multiple of the chunk (and shard) size along ``c``.
    """
    c_axis = image.axes.index("c")
    problems = []
    for level, path in enumerate(image.level_paths):
        shape = image.shapes[level]
        n_c = shape[c_axis]
        for kind, block in (("chunk", image.chunks(level)), ("shard", image.shards(level))):
            if block is not None and n_c % block[c_axis] != 0:
                problems.append(
                    f"level {path!r}: {n_c} channels in {kind}s of {block[c_axis]} along c"
                )
    return problems


def writeback_problems(image: Image) -> list[str]:
    """Reasons why omeloc's write-back refuses ``image`` (empty: it can add or replace channels).

    Stricter than :func:`append_problems`: every level must store one channel per chunk
    (and per shard).  With ``k > 1`` channels per chunk a first append may leave the
    original chunks alone (when the channel count is a multiple of ``k``, e.g. ome-zarr-py's
    default of all channels in one chunk), but the new channel's chunk then has room for
    ``k - 1`` more, so the next append or any replacement of that channel rewrites a chunk
    that holds other channels.  One channel per chunk keeps every write-back local.
    """
    c_axis = image.axes.index("c")
    problems = append_problems(image)
    for level, path in enumerate(image.level_paths):
        for kind, block in (("chunk", image.chunks(level)), ("shard", image.shards(level))):
            if block is not None and block[c_axis] != 1 and not any(p.startswith(f"level {path!r}") for p in problems):
                problems.append(f"level {path!r}: {kind}s of {block[c_axis]} channels (omeloc needs 1)")
    return problems
