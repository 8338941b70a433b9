"""Count what a block of code asks of zarr's stores: reads, writes, existence checks, listings.

Used by the scale benchmarks and the request-budget tests (``benchmarks/bench_plate_scale.py``,
``tests/ngff/test_scale.py``, ``tests/ngff/test_request_budget.py``): on an object store each
request is a round trip (20–50 ms), so requests per image must stay bounded by a constant, and no
metadata document may be read twice in one run. The counting is
:func:`omeloc.ngff.iostats.measure_io`
(what ``omeloc predict`` reports at its end); ``get`` of a metadata document (``zarr.json``,
``.zarray``, ``.zattrs``, ``.zgroup``, ``.zmetadata``) counts as a metadata read, any other ``get``
as a chunk read.
"""

from __future__ import annotations

from omeloc.ngff.documents import METADATA_NAMES
from omeloc.ngff.iostats import IOMeter, measure_io

__all__ = ["METADATA_NAMES", "StoreOps", "StoreReads", "count_store_ops", "count_store_reads"]

#: the operations seen (``metadata``, ``chunks``, ``ops``, ``keys``, ``total``,
#: ``repeated_metadata_reads()``)
StoreOps = IOMeter
StoreReads = IOMeter
#: count every operation of zarr's stores (all instances, all threads) inside the block
count_store_ops = measure_io
count_store_reads = measure_io
