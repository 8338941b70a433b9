"""NGFF I/O: plate/image views, the one place for NGFF 0.4 / 0.5 differences, layout rules, pyramids, writer, rechunk, info."""
