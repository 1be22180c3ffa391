"""Prefect task for the `frames` stage (logic: emotionclip.pipeline / the stage module)."""

from tasks._video_stage import video_stage_task

frames = video_stage_task("frames")
