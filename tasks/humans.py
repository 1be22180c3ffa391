"""Prefect task for the `humans` stage (logic: emotionclip.stages.registry / the stage module)."""

from tasks._video_stage import video_stage_task

humans = video_stage_task("humans")
