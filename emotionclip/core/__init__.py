"""Foundations every other package builds on: the catalog, fsspec IO with atomic writes,
ids, errors, table schemas, the process environment, ffmpeg."""
