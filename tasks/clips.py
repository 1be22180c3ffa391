"""Prefect task for the `clips` stage (logic: emotionclip.stages.registry / the stage module)."""

from tasks._video_stage import video_stage_task

clips = video_stage_task("clips")
