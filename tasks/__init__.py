"""Prefect tasks: one module per pipeline stage, each a thin wrapper around the
library function in emotionclip/ that does the work."""
