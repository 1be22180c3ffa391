"""Prefect task for the `words` stage (logic: emotionclip.stages.registry / the stage module)."""

from tasks._video_stage import video_stage_task

words = video_stage_task("words")
