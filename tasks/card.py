"""Prefect task for the dataset card (logic: emotionclip.stages.card); published as a markdown artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from emotionclip.core.catalog import Catalog


@task(name="dataset-card")
def dataset_card(catalog: Catalog, summary: dict) -> str:
    """Write the dataset card (Markdown + plots) and publish it as an artifact; returns its path."""
    from emotionclip.stages.card import write_card_from_disk

    path, markdown = write_card_from_disk(catalog, counts=summary)
    create_markdown_artifact(markdown=markdown, key="dataset-card", description="build-tv-dataset dataset card")
    return str(path)
