"""Prefect task for the `sentiment` stage (logic: emotionclip.pipeline / the stage module)."""

from tasks._video_stage import video_stage_task

sentiment = video_stage_task("sentiment")
