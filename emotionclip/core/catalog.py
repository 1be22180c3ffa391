"""The data catalog: where every artifact lives, which models a profile uses,
and every stage's parameters (with the paper's defaults).

`load_catalog()` reads `data_catalog.yaml`, applies overrides and validates it
with pydantic. A wrong key or value raises `CatalogError` naming the key path.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import string
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CATALOG = REPO_ROOT / "data_catalog.yaml"
CATALOG_ENV = "EMOTIONCLIP_CATALOG"

# Videos that also appear in BoLD; excluded by the authors' index script (docs/design.md section 4).
BOLD_OVERLAP_IDS = [
    "7YpF6DntOYw", "Db19rWN5BGo", "_a9SWtcaNj8", "lWXhqIAvarw", "CrlfWnsS7ac",
    "y7ncweROe9U", "phrYEKv0rmw", "oD_wxyTHJ2I", "914yZXz-iRs", "2qQs3Y9OJX0", "_mAfwH6i90E",
]

# MELD is cut from the Friends TV show (paper section 4.1); its title is excluded by a word rule.
DEFAULT_EXCLUDE_TITLE_PATTERNS = [r"\bfriends\b"]

STAGES = ("search", "download", "words", "frames", "sentences", "sentiment",
          "humans", "clips", "filter", "manifests", "card")


class CatalogError(ValueError):
    """A catalog that cannot be used; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# "s3:", "file:", "C:" at the start: a scheme or drive, so not a path under the data root.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class Artifacts(_Strict):
    """Locations relative to the data root; `{video_id}` is the only placeholder."""

    candidates: str = "search/candidates.parquet"
    download_archive: str = "download_archive.txt"
    video_dir: str = "videos/{video_id}"
    raw_dir: str = "videos/{video_id}/raw"
    info: str = "videos/{video_id}/info.json"
    words: str = "videos/{video_id}/words.parquet"
    frames: str = "videos/{video_id}/frames.zip"
    humans: str = "videos/{video_id}/humans.parquet"
    sentences: str = "videos/{video_id}/sentences.parquet"
    sentiment: str = "videos/{video_id}/sentiment.parquet"
    clips: str = "videos/{video_id}/clips.parquet"
    manifests: str = "manifests"
    rejected: str = "manifests/rejected.parquet"
    failures: str = "manifests/failures.parquet"
    clips_cache: str = "dataset/clips-cache.parquet"  # every done video's unfiltered clips (manifests stage)
    dataset_card: str = "card"
    # The dataset across runs (emotionclip.core.video_registry): one row per video, one per run.
    video_registry: str = "dataset/videos.parquet"
    runs: str = "dataset/runs.parquet"
    exclusions: str = "dataset/exclusions.yaml"  # ids and titles kept out of the dataset

    @field_validator("*")
    @classmethod
    def _under_data_root(cls, v: str) -> str:
        # A template must not reach outside the data root: stages write there, and
        # `..` or an absolute path would let a catalog overwrite any file.
        if not v.strip():
            raise ValueError("must not be empty")
        if v.startswith(("/", "\\")) or _SCHEME.match(v):
            raise ValueError(f"{v!r} must be a relative path under the data root (no absolute path or URL scheme)")
        if ".." in re.split(r"[/\\]", v):
            raise ValueError(f"{v!r} must stay under the data root (no '..' path components)")
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(v) if name is not None]
        except ValueError as e:
            raise ValueError(f"{v!r}: bad placeholder ({e})") from None
        if any(f != ("video_id", "", None) for f in fields):
            raise ValueError(f"{v!r}: the only placeholder allowed is {{video_id}}")
        return v


class ModelProfile(_Strict):
    """Model ids (hub ids, Ultralytics names) or folders relative to models_dir."""

    punctuation: str
    emotion: str
    detector: str
    clip_model: str
    clip_pretrained: str | None = None


class SearchParams(_Strict):
    backend: Literal["youtube-search-python", "yt-dlp"] = "youtube-search-python"
    mode: Literal["videos", "playlists"] = "videos"
    queries: list[str] = Field(default_factory=lambda: ["TV series", "TV shows"])
    results_per_query: int = Field(50, ge=1)
    max_videos: int = Field(100, ge=1)
    min_duration_s: float = Field(2400, ge=0)  # paper: >= 40 minutes
    require_english_captions: bool = True
    # Paper appendix A.1: videos appearing in downstream datasets removed by YouTube id and
    # title. Plus the data root's dataset/exclusions.yaml (emotionclip.core.exclusions).
    exclude_ids: list[str] = Field(default_factory=lambda: list(BOLD_OVERLAP_IDS))
    exclude_titles: list[str] = Field(default_factory=list)  # exact, ignoring case and spacing
    # Regular expressions, case-insensitive, searched in the title. Default: MELD's source
    # series, Friends (paper section 4.1). It also drops unrelated titles with the word
    # ("Best Friends Forever"): a few lost candidates cost less than Friends episodes in
    # pre-training, which would leak into the MELD evaluation.
    exclude_title_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE_TITLE_PATTERNS))

    @field_validator("exclude_title_patterns")
    @classmethod
    def _patterns_compile(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a valid regular expression ({e})") from None
        return v


class DownloadParams(_Strict):
    min_height: int = Field(256, ge=1)
    caption_langs: list[str] = Field(default_factory=lambda: ["en", "en-orig"])
    caption_formats: list[str] = Field(default_factory=lambda: ["json3", "vtt", "srt"])
    retries: int = Field(10, ge=0)
    sleep_requests_s: float = Field(1.0, ge=0)
    sleep_interval_s: float = Field(5.0, ge=0)
    max_sleep_interval_s: float = Field(30.0, ge=0)
    rate_limit_per_minute: float = Field(20, gt=0)
    # Runs that may fail a video transiently (throttled, network, 5xx) before later runs
    # stop retrying it; permanent failures are not retried (flow parameter retry_failed).
    max_attempts: int = Field(3, ge=1)
    # Within one run, Prefect's retries of a transient download failure, backoff factor in s.
    task_retries: int = Field(3, ge=0)
    task_retry_delay_s: float = Field(10.0, ge=0)


class FrameParams(_Strict):
    fps: int = Field(8, ge=1)  # paper: 8 FPS
    short_edge: int = Field(256, ge=16)  # paper: smaller edge 256
    jpeg_quality: int = Field(3, ge=2, le=31)


class SentenceParams(_Strict):
    chunk_words: int = Field(230, ge=8)  # reference FullStop wrapper
    overlap_words: int = Field(5, ge=0)
    batch_size: int = Field(8, ge=1)
    split_on: list[str] = Field(default_factory=lambda: [".", "?"])

    @model_validator(mode="after")
    def _overlap_smaller_than_chunk(self) -> "SentenceParams":
        if self.overlap_words * 2 >= self.chunk_words:
            raise ValueError("overlap_words must be less than half of chunk_words")
        return self


class SentimentParams(_Strict):
    batch_size: int = Field(64, ge=1)
    # Appendix B.1: the text for the text encoder and the sentiment model is capped at 76
    # tokens bracketed by [SOS]/[EOS]; the authors' code truncated the sentiment model's
    # input at 77 tokens (special tokens included), which we follow.
    max_length: int = Field(77, ge=8)


# Parameters that change how fast a stage runs, never its output: kept out of the
# fingerprint, so changing them re-runs nothing.
_NOT_FINGERPRINTED = {"decode_workers"}


class HumanParams(_Strict):
    imgsz: int = Field(640, ge=32)  # paper: YOLOv7 at 640
    conf: float = Field(0.25, ge=0, le=1)  # paper
    iou: float = Field(0.45, ge=0, le=1)  # paper; Ultralytics default is 0.7
    classes: list[int] = Field(default_factory=lambda: [0])
    batch_size: int = Field(32, ge=1)
    device: str = "auto"
    half: bool = True
    # ffmpeg processes decoding time segments of a video at once (emotionclip.core.segment_decode;
    # the frames are byte-identical to one process). auto: 1 on CPU, where detection sets the
    # pace; on a GPU min(4, cores // 4): one decoder gave 279-352 frames/s against 531-536 for
    # the detector on an H200 (README, Benchmarks), so about twice the decode is needed.
    decode_workers: int | Literal["auto"] = "auto"

    @field_validator("decode_workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if v != "auto" and int(v) < 1:
            raise ValueError("decode_workers must be 'auto' or >= 1")
        return v


class FilterParams(_Strict):
    # Authors' training code: 2 s < duration < 10 s, >= 3 chars, >= 8 frames.
    min_duration_s: float = Field(2.0, ge=0)
    max_duration_s: float = Field(10.0, gt=0)
    min_text_chars: int = Field(3, ge=0)
    min_frames: int = Field(8, ge=0)
    # Paper: neutral < 0.05 (authors' code: <= 0.05).
    max_neutral: float = Field(0.05, ge=0, le=1)
    min_person_frac: float = Field(0.0, ge=0, le=1)


class ManifestParams(_Strict):
    shard_size: int = Field(10000, ge=1)
    # A rebuild keeping fewer clips than the current generation by more than this
    # fraction (or none at all) is refused unless forced: a mistyped override or an
    # incomplete run must not replace good manifests. 1.0 refuses only the drop to zero.
    max_shrink_fraction: float = Field(0.5, ge=0, le=1)
    # Generations kept on disk for `emotionclip manifests rollback`; at least 2, so a
    # reader that opened the previous pointer still finds its shards.
    keep_generations: int = Field(5, ge=2)


class StageParams(_Strict):
    search: SearchParams = Field(default_factory=SearchParams)
    download: DownloadParams = Field(default_factory=DownloadParams)
    frames: FrameParams = Field(default_factory=FrameParams)
    sentences: SentenceParams = Field(default_factory=SentenceParams)
    sentiment: SentimentParams = Field(default_factory=SentimentParams)
    humans: HumanParams = Field(default_factory=HumanParams)
    filter: FilterParams = Field(default_factory=FilterParams)
    manifests: ManifestParams = Field(default_factory=ManifestParams)


class Catalog(_Strict):
    data_root: str = "data"
    models_dir: str = "models"
    profile: str = "paper"
    artifacts: Artifacts = Field(default_factory=Artifacts)
    profiles: dict[str, ModelProfile]
    stages: StageParams = Field(default_factory=StageParams)
    # Folder of the catalog file; relative paths resolve against it. Not part of the YAML.
    base_dir: str = Field(default=".", exclude=True)

    @field_validator("profiles")
    @classmethod
    def _has_profiles(cls, v: dict[str, ModelProfile]) -> dict[str, ModelProfile]:
        if not v:
            raise ValueError("at least one profile is required")
        return v

    @model_validator(mode="after")
    def _profile_exists(self) -> "Catalog":
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} is not one of {sorted(self.profiles)}")
        return self

    # -- resolved locations -------------------------------------------------
    def _resolve(self, p: str) -> str:
        if "://" in p or os.path.isabs(p):
            return p
        return str((Path(self.base_dir) / p).resolve())

    @property
    def root(self) -> str:
        """The data root as an absolute local path or an fsspec URL."""
        return self._resolve(self.data_root)

    @property
    def models_path(self) -> Path:
        return Path(self._resolve(self.models_dir))

    @property
    def models(self) -> ModelProfile:
        """The active profile's models."""
        return self.profiles[self.profile]

    def artifact(self, name: str, video_id: str | None = None) -> str:
        """Location of artifact `name` (for `video_id` when it is per video)."""
        from emotionclip.core.ids import validate_video_id

        template = getattr(self.artifacts, name)
        if "{video_id}" in template:
            if video_id is None:
                raise CatalogError(f"artifacts.{name}: needs a video_id")
            template = template.format(video_id=validate_video_id(video_id))
        root = self.root
        return f"{root.rstrip('/')}/{template}"

    def model_ref(self, name: str) -> str:
        """A profile model as a hub id / Ultralytics name, or an absolute folder
        when the entry names a path that exists under models_dir (pre-fetched or tiny)."""
        ref = getattr(self.models, name)
        if ref is None:
            return ref
        local = self.models_path / ref
        if ref.startswith(("tiny/", "./", "/")) or local.exists():
            return str(local if not os.path.isabs(ref) else Path(ref))
        return ref

    def stage_fingerprint(self, stage: str) -> str:
        """Hash of everything that determines a stage's output besides its inputs:
        the stage parameters and the model it uses. Caches key on this."""
        params = getattr(self.stages, stage, None)
        payload: dict[str, Any] = {"stage": stage}
        if params is not None:
            payload["params"] = params.model_dump(mode="json", exclude=_NOT_FINGERPRINTED)
        model_field = {"sentences": "punctuation", "sentiment": "emotion", "humans": "detector"}.get(stage)
        if model_field:
            payload["model"] = getattr(self.models, model_field)
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"base_dir"})


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"{key}: {msg}")
    return "invalid catalog: " + "; ".join(lines)


def deep_update(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `updates` into a copy of `base`."""
    out = copy.deepcopy(base)
    for k, v in (updates or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def dotted_to_nested(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """{"stages.filter.max_neutral": 0.2} -> {"stages": {"filter": {"max_neutral": 0.2}}}."""
    nested: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and "." not in key:
            nested = deep_update(nested, {key: value})
            continue
        parts = key.split(".")
        cur = nested
        for i, p in enumerate(parts[:-1]):
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):  # e.g. both `a=1` and `a.b=2`
                raise CatalogError(f"override {key}: {'.'.join(parts[:i + 1])} is already set to a value")
        cur[parts[-1]] = value
    return nested


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """One line: where (1-based line and column, when YAML says) and what is wrong."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(problem.split())


def _is_local_relative(p: str) -> bool:
    return "://" not in p and not os.path.isabs(p)


def default_catalog_path() -> Path:
    return Path(os.environ.get(CATALOG_ENV, DEFAULT_CATALOG))


def load_catalog(
    path: str | os.PathLike | None = None,
    *,
    profile: str | None = None,
    data_root: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Catalog:
    """Load and validate the catalog. `overrides` may be nested or dotted
    (`{"stages.filter.max_neutral": 0.2}`)."""
    p = Path(path) if path is not None else default_catalog_path()
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise CatalogError(f"catalog file not found: {p}") from None
    except yaml.YAMLError as e:
        raise CatalogError(f"catalog {p} is not valid YAML at {describe_yaml_error(e)}") from None
    except UnicodeDecodeError:
        raise CatalogError(f"catalog {p} is not UTF-8 text") from None
    except OSError as e:
        raise CatalogError(f"catalog {p} cannot be read: {e.strerror or e}") from None
    if not isinstance(raw, dict):
        raise CatalogError(f"catalog {p}: top level must be a mapping")
    raw = deep_update(raw, dotted_to_nested(overrides))
    if profile is not None:
        raw["profile"] = profile
    if data_root is not None:
        # Given by the caller (--data-root, a flow parameter): relative to the current
        # directory, like every other path on a command line. A data_root written in the
        # catalog file stays relative to the catalog's folder (Catalog._resolve).
        raw["data_root"] = str(Path(data_root).resolve()) if _is_local_relative(data_root) else data_root
    raw["base_dir"] = str(p.resolve().parent)
    return catalog_from_dict(raw)


def check_data_root(catalog: Catalog) -> str:
    """Make sure the data root can be written: create it when missing, then write and
    remove a probe file (on an object store, a probe object: wrong credentials or a
    missing bucket are one clear error here, not a bare `Forbidden` from the first
    stage). Raises CatalogError naming the root; returns the root."""
    root = catalog.root
    if "://" in root and not root.startswith("file://"):
        _check_remote_root(root)
        return root
    path = Path(root.removeprefix("file://"))
    if path.exists() and not path.is_dir():
        raise CatalogError(f"data root {path} is not writable: it is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
        raise CatalogError(f"data root {path} is not writable: {e.strerror or e}{where}") from None
    return root


def _check_remote_root(root: str) -> None:
    import uuid

    import fsspec

    probe = f"{root.rstrip('/')}/.write-check-{uuid.uuid4().hex}"
    try:
        fs, path = fsspec.core.url_to_fs(probe)
        fs.pipe_file(path, b"")
        fs.rm_file(path)
    except Exception as e:  # the store's own error types (botocore, gcsfs, ...): one message naming the root
        raise CatalogError(f"data root {root} is not writable: {type(e).__name__}: {e} (check the store's "
                           "credentials and endpoint, e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                           "AWS_ENDPOINT_URL_S3, and that the bucket exists)") from None


def catalog_from_dict(raw: dict[str, Any]) -> Catalog:
    try:
        return Catalog.model_validate(raw)
    except ValidationError as e:
        raise CatalogError(_format_validation_error(e)) from None


def manifests_location(path: str | os.PathLike | None = None, profile: str | None = None,
                       data_root: str | None = None, overrides: dict[str, Any] | None = None) -> str:
    """Where a build with these catalog arguments writes its manifests (what
    pre-training on that build reads)."""
    return load_catalog(path, profile=profile, data_root=data_root, overrides=overrides).artifact("manifests")
