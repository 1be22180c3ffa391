"""Prefect task for the `clips` stage (logic: emotionclip.pipeline / the stage module)."""

from tasks._video_stage import video_stage_task

clips = video_stage_task("clips")
