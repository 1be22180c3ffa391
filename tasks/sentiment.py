"""Prefect task for the `sentiment` stage (logic: emotionclip.stages.registry / the stage module)."""

from tasks._video_stage import video_stage_task

sentiment = video_stage_task("sentiment")
