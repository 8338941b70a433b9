"""NGFF I/O: plate/image views, axes by meaning, stores (folders, URLs, ``.ozx`` zips,
bioformats2raw wrappers), the one place for NGFF 0.4 / 0.5 differences, the layout rule,
pyramids, writer, info."""
