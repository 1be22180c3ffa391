"""Prefect task for the `frames` stage (logic: emotionclip.stages.registry / the stage module)."""

from tasks._video_stage import video_stage_task

frames = video_stage_task("frames")
