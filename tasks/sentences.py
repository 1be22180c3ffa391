"""Prefect task for the `sentences` stage (logic: emotionclip.stages.registry / the stage module)."""

from tasks._video_stage import video_stage_task

sentences = video_stage_task("sentences")
