"""Data in: TIFF import and synthetic plates."""
