"""The stages of build-tv-dataset, one module per stage, and their registry."""
