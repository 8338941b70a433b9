"""Can a channel be appended to an image without rewriting any existing chunk file?"""

from __future__ import annotations

from .plate import Image

__all__ = ["append_problems"]


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
