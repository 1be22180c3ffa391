"""Synthetic media for tests, benchmarks and the demo corpus (generated with ffmpeg).

`make_test_video` draws lavfi test patterns. `make_sample_corpus` builds a small
corpus in the local-folder layout (`<stem>.mp4` + `<stem>.en.vtt`) with people
in frame (the two photos shipped inside the ultralytics package, each video with
its own crop and pan so the frames move) and English captions of emotional and
neutral sentences, a few too short or too long for the clip filter. The default
(8 videos of 80 s, 320x240) is sized so the demo's tiny models keep enough clips
for a training run: at least 64 with the sample deployment's thresholds
(tests/test_sample.py checks it). Everything is deterministic.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emotionclip.core.ffmpeg import run_ffmpeg


def make_test_video(
    path: str | Path,
    *,
    duration_s: float = 3.0,
    width: int = 320,
    height: int = 240,
    fps: float = 25,
    source: str = "testsrc2",
    codec: str = "libx264",
    vf: str | None = None,
) -> Path:
    """Write a synthetic video (lavfi `source`, then the optional filter chain `vf`)
    of the given size and length."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vcodec = ["-c:v", codec, "-pix_fmt", "yuv420p", "-preset", "ultrafast"] if codec == "libx264" else ["-c:v", codec]
    run_ffmpeg([
        "-y", "-f", "lavfi", "-i", f"{source}=size={width}x{height}:rate={fps}:duration={duration_s}",
        *(["-vf", vf] if vf else []), *vcodec, str(path),
    ])
    return path


# -- sample corpus ----------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    text: str
    duration_s: float
    kind: str  # an emotion, "neutral", "sound", "too_short" or "too_long"


# The first three videos open with these scripts, which carry the cases the
# caption readers and the clip filter must handle; every video then goes on with
# `_FILLER` lines. Durations are what the sentence lasts in the captions.
# Clip filter (docs/design.md section 4): 2 s < duration < 10 s.
SCRIPTS: tuple[tuple[str, tuple[Line, ...]], ...] = (
    # Manual captions, punctuation kept.
    ("vtt", (
        Line("I can't believe you lied to me again, I'm so angry right now!", 4.5, "anger"),
        Line("Okay.", 0.8, "too_short"),
        Line("This is the happiest day of my whole life, thank you so much!", 4.0, "joy"),
        Line("Please listen to me, because I need to explain everything that happened last week, "
             "from the moment I left the office until the moment I came back home.", 10.6, "too_long"),
    )),
    # YouTube-style automatic captions: rolling cues, word tags, no punctuation.
    ("auto_vtt", (
        Line("i'm so scared i think someone is in the house", 3.5, "fear"),
        Line("the meeting is on tuesday at ten in room four", 3.0, "neutral"),
        Line("i miss her so much i can't stop crying every night", 4.5, "sadness"),
        Line("wow i never expected to see you here", 2.8, "surprise"),
        Line("hi there", 1.2, "too_short"),
        Line("that smell is disgusting get it away from me", 3.5, "disgust"),
    )),
    # Manual captions with the markup real files carry (speaker labels, tags, entities, sound tags).
    ("vtt", (
        Line("[Music]", 1.5, "sound"),
        Line("&gt;&gt; MARK: You ruined everything, I hate you for this!", 4.0, "anger"),
        Line("<i>Please, just go away.</i>", 2.2, "sadness"),
        Line("I put the keys on the table next to the lamp.", 3.0, "neutral"),
        Line("We won! Mom &amp; Dad will be so proud of us!", 3.5, "joy"),
        Line("No.", 0.6, "too_short"),
        Line("Oh my god, what is that thing over there?", 2.5, "fear"),
    )),
)

# Lines of TV dialogue, ten per emotion; each video speaks them in its own order.
_FILLER: dict[str, tuple[str, ...]] = {
    "anger": (
        "Don't you dare walk away from me while I'm talking!",
        "You promised me, and you broke it like it was nothing.",
        "Get out of my office before I say something I regret.",
        "How many times do I have to tell you to stop?",
        "I'm sick of cleaning up your mess every single time.",
        "You had no right to read my letters!",
        "Stop lying to my face, I know what you did.",
        "This is the last time you humiliate me in front of everyone.",
        "Who gave you permission to sell my car?",
        "I trusted you with everything and you threw it away.",
    ),
    "joy": (
        "We got the house, we actually got the house!",
        "I passed the exam, I can't believe I passed!",
        "You came back, oh I'm so glad you came back.",
        "This is wonderful news, let's celebrate tonight!",
        "She said yes, she's going to marry me!",
        "Look at this view, isn't it beautiful?",
        "I love you so much, you make me so happy.",
        "We did it, the whole team did it together!",
        "Best birthday ever, thank you all for coming.",
        "I haven't laughed like that in years.",
    ),
    "sadness": (
        "I just wish I could tell him goodbye one more time.",
        "Nobody even noticed that I was gone.",
        "I lost my job today, I don't know what to do.",
        "She doesn't remember my name anymore.",
        "Everything we built is gone now.",
        "I'm so tired of being alone in this apartment.",
        "He never called back, not even once.",
        "I miss the way things used to be.",
        "It's my fault, all of it is my fault.",
        "I waited at the station all night for you.",
    ),
    "fear": (
        "Did you hear that noise coming from the basement?",
        "Lock the door, someone is following us!",
        "Please don't hurt me, I'll give you anything.",
        "The lights went out and the phone is dead.",
        "I think there's somebody standing behind the curtain.",
        "What if they find us here before morning?",
        "Don't open it, something is moving inside!",
        "I'm terrified of what the doctor is going to say.",
        "Run, they're coming up the stairs!",
        "Why is the back door wide open?",
    ),
    "surprise": (
        "You're pregnant? Since when?",
        "Wait, you two are brothers?",
        "I had no idea you could sing like that!",
        "You bought a boat without telling anyone?",
        "No way, is that really you after all these years?",
        "They cancelled the wedding? Just like that?",
        "You mean the money was in the attic the whole time?",
        "I never thought I would see you in this town again.",
        "Hold on, you're telling me she was here yesterday?",
        "A surprise party for me? Really?",
    ),
    "disgust": (
        "Ugh, there's hair in my soup again.",
        "That's revolting, take it off the table.",
        "I can't believe you would eat something off the floor.",
        "The fridge smells like something died in there.",
        "Gross, don't touch me with those hands!",
        "How can you live in a place this filthy?",
        "He's a liar and a cheat, he makes me sick.",
        "Those shoes are covered in mud, take them outside.",
        "This milk is sour, it's completely rotten.",
        "You kissed him? That's disgusting.",
    ),
    "neutral": (
        "The train leaves at half past seven from platform two.",
        "Could you pass me the salt and the pepper, please?",
        "I'll pick up the groceries on the way home.",
        "The report is due on Friday afternoon.",
        "We parked the car behind the old library.",
        "My sister lives two streets away from the school.",
        "Turn left at the bakery and then keep going straight.",
        "The meeting was moved to the small conference room.",
        "I usually take the bus when it rains.",
        "The printer on the second floor needs paper.",
    ),
}
# Filler lines last 0.4 s a word, within 2.5-6 s. The tiny punctuation model ends a
# sentence every ~4.5 words wherever the script does, so this rate (with 80 s videos)
# is what leaves enough of its sentences inside the filter's 2-10 s.
_S_PER_WORD = 0.4
_FILLER_S = (2.5, 6.0)

# Pan paths over the two photos (people stay in frame), one per video:
# (image, zoom over the frame size, scale filter, crop x, crop y, extra filters).
_SHOTS = (
    ("zidane.jpg", 1.15, "scale=-2:{h2}", "(iw-ow)*(0.5+0.5*sin(2*PI*t/9))", "(ih-oh)*(0.5+0.5*sin(2*PI*t/6))", ""),
    ("bus.jpg", 1.15, "scale={w2}:-2", "(iw-ow)*(0.5+0.5*sin(2*PI*t/7))", "(ih-oh)*(0.45+0.4*sin(2*PI*t/11))", ""),
    ("zidane.jpg", 1.5, "scale=-2:{h2}", "(iw-ow)*(0.5-0.5*cos(2*PI*t/12))", "(ih-oh)*(0.3+0.3*sin(2*PI*t/5))", ""),
    ("bus.jpg", 1.4, "scale={w2}:-2", "(iw-ow)*(0.5-0.5*cos(2*PI*t/13))", "(ih-oh)*(0.6+0.35*sin(2*PI*t/8))", "hflip"),
    ("zidane.jpg", 1.8, "scale=-2:{h2}", "(iw-ow)*(0.5+0.5*sin(2*PI*t/15))", "(ih-oh)*(0.4+0.2*cos(2*PI*t/7))", ""),
    ("bus.jpg", 1.25, "scale={w2}:-2", "(iw-ow)*(0.5+0.5*cos(2*PI*t/10))", "(ih-oh)*(0.3+0.25*sin(2*PI*t/9))", ""),
    ("zidane.jpg", 1.3, "scale=-2:{h2}", "(iw-ow)*(0.5-0.5*sin(2*PI*t/8))", "(ih-oh)*(0.5-0.5*cos(2*PI*t/10))",
     "hflip"),
    ("bus.jpg", 1.7, "scale={w2}:-2", "(iw-ow)*(0.5-0.5*sin(2*PI*t/11))", "(ih-oh)*(0.5+0.3*cos(2*PI*t/6))", "hflip"),
)

# The default corpus: the tiny models keep 79 clips of it with the sample deployment's
# thresholds; shorter or fewer videos would leave too few for batches of 16.
SAMPLE_VIDEOS = 8
SAMPLE_DURATION_S = 80.0
_START_S = 0.5  # first sentence starts here
_GAP_S = 0.4  # silence between sentences


def _asset(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.origin:
        raise RuntimeError("the sample corpus needs the ultralytics package (its bundled photos)")
    path = Path(spec.origin).parent / "assets" / name
    if not path.exists():
        raise RuntimeError(f"ultralytics ships no {path}")
    return path


def _ts(t: float) -> str:
    ms = int(round(t * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    return f"{h:02d}:{m:02d}:{rem // 1000:02d}.{rem % 1000:03d}"


def _layout(script: tuple[Line, ...], duration_s: float) -> list[tuple[float, float, Line]]:
    """Place the lines one after another; drop those that do not fit the video."""
    out, t = [], _START_S
    for line in script:
        if t + line.duration_s > duration_s - 0.1:
            break
        out.append((t, t + line.duration_s, line))
        t += line.duration_s + _GAP_S
    return out


def _filler(i: int) -> tuple[Line, ...]:
    """Every `_FILLER` line once, in video i's own order, with its duration."""
    rng = random.Random(100 + i)
    lines = [(kind, text) for kind, texts in _FILLER.items() for text in texts]
    rng.shuffle(lines)
    lo, hi = _FILLER_S
    return tuple(Line(text, round(min(hi, max(lo, len(text.split()) * _S_PER_WORD + rng.uniform(-0.2, 0.4))), 1), kind)
                 for kind, text in lines)


def sample_script(i: int, duration_s: float = SAMPLE_DURATION_S) -> tuple[str, list[tuple[float, float, Line]]]:
    """Caption kind ("vtt" or "auto_vtt") and the timed lines (start, end, line) of sample video i.
    The kind is that of script i % 3; videos 0-2 open with their script's lines; filler lines
    follow until the video ends."""
    kind, script = SCRIPTS[i % len(SCRIPTS)]
    opening = script if i < len(SCRIPTS) else ()
    return kind, _layout(opening + _filler(i), duration_s)


def _word_times(text: str, start: float, end: float, rng: random.Random) -> list[tuple[str, float]]:
    """Word start times inside [start, end], longer words taking longer (with jitter)."""
    words = text.split()
    weights = [len(w) + 2 + rng.uniform(0, 1.5) for w in words]
    total = sum(weights)
    times, t = [], start
    for w, wt in zip(words, weights):
        times.append((w, round(t, 3)))
        t += (end - start) * wt / total
    return times


def _manual_vtt(cues: list[tuple[float, float, Line]]) -> str:
    out = ["WEBVTT", "Kind: captions", "Language: en", ""]
    for i, (s, e, line) in enumerate(cues, 1):
        out += [str(i), f"{_ts(s)} --> {_ts(e)}", line.text, ""]
    return "\n".join(out)


def _rolling_vtt(cues: list[tuple[float, float, Line]], rng: random.Random, words_per_line: int = 6) -> str:
    """YouTube's automatic WebVTT: each cue shows the previous line again plus the
    new line, whose words after the first carry `<time><c> word</c>` tags; a 10 ms
    cue with the finished line sits between them."""
    words: list[tuple[str, float, float]] = []
    for s, e, line in cues:
        ws = _word_times(line.text, s, e, rng)
        words += [(w, t, e) for w, t in ws]
    lines = [words[i:i + words_per_line] for i in range(0, len(words), words_per_line)]
    out = ["WEBVTT", "Kind: captions", "Language: en", ""]
    prev = " "
    for i, ln in enumerate(lines):
        start = ln[0][1]
        end = lines[i + 1][0][1] - 0.01 if i + 1 < len(lines) else ln[-1][2]
        tagged = ln[0][0] + "".join(f"<{_ts(t)}><c> {w}</c>" for w, t, _ in ln[1:])
        out += [f"{_ts(start)} --> {_ts(end)} align:start position:0%", prev, tagged, ""]
        plain = " ".join(w for w, _, _ in ln)
        out += [f"{_ts(end)} --> {_ts(end + 0.01)} align:start position:0%", plain, " ", ""]
        prev = plain
    return "\n".join(out)


def _write_video(path: Path, image: Path, shot: tuple[str, float, str, str, str, str], duration_s: float,
                 width: int, height: int, fps: int) -> None:
    _, zoom, scale, x, y, extra = shot
    # Scale the photo larger than the frame, then pan a frame-sized window over it.
    scale = scale.format(w2=int(width * zoom) // 2 * 2, h2=int(height * zoom) // 2 * 2)
    n = int(round(duration_s * fps))
    # Decode the photo once and repeat it (loop filter), instead of -loop 1 re-decoding it per frame.
    vf = (f"{scale},loop=loop={n - 1}:size=1:start=0,setpts=N/{fps}/TB,"
          f"crop={width}:{height}:x='{x}':y='{y}',{extra + ',' if extra else ''}setsar=1,format=yuv420p")
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    run_ffmpeg(["-y", "-i", str(image), "-vf", vf, "-frames:v", str(n), "-r", str(fps),
                "-c:v", "libx264", "-preset", "ultrafast", "-g", str(2 * fps), "-pix_fmt", "yuv420p",
                "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", str(tmp)])
    tmp.replace(path)


def make_sample_corpus(
    folder: str | Path,
    n_videos: int = SAMPLE_VIDEOS,
    duration_s: float = SAMPLE_DURATION_S,
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    seed: int = 0,
) -> list[Path]:
    """Write `n_videos` short videos with people in frame plus English captions
    (`<stem>.mp4` + `<stem>.en.vtt`, the local-folder layout) into `folder`;
    return the video paths. Video i has captions of the kind of script i % 3 (manual
    with punctuation, rolling automatic without, manual with markup; see
    `sample_script`) and shot i % 8 (its own photo crop, zoom and pan)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    videos = []
    for i in range(n_videos):
        kind, cues = sample_script(i, duration_s)
        shot = _SHOTS[i % len(_SHOTS)]
        stem = f"sample_{i:02d}"
        rng = random.Random(seed * 1000 + i)
        text = _rolling_vtt(cues, rng) if kind == "auto_vtt" else _manual_vtt(cues)
        caption = folder / f"{stem}.en.vtt"
        tmp = caption.with_name(f".{caption.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(caption)
        video = folder / f"{stem}.mp4"
        _write_video(video, _asset(shot[0]), shot, duration_s, width, height, fps)
        videos.append(video)
    return videos


def _spec(kwargs: dict[str, Any]) -> str:
    """What `.complete` records: the corpus's parameters and its scripts, so a corpus made by
    an older version of this module (or with other parameters) is made again."""
    import hashlib
    import inspect

    bound = inspect.signature(make_sample_corpus).bind("", **kwargs)
    bound.apply_defaults()
    params = {k: v for k, v in bound.arguments.items() if k != "folder"}
    scripts = repr((SCRIPTS, _FILLER, _S_PER_WORD, _FILLER_S, _SHOTS, _START_S, _GAP_S))
    return json.dumps({**params, "scripts": hashlib.sha256(scripts.encode()).hexdigest()[:16]}, sort_keys=True)


def ensure_sample_corpus(folder: str | Path, **kwargs: Any) -> Path:
    """Generate the sample corpus (`make_sample_corpus(folder, **kwargs)`) into `folder`
    once. Safe when several runs ask at the same time (a file lock; the second finds
    `.complete` and returns). A corpus made with other parameters or scripts (a data
    root from an older version) is replaced."""
    from filelock import FileLock

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = _spec(kwargs)
    done = folder / ".complete"
    with FileLock(str(folder.with_name(folder.name + ".lock"))):
        if not done.exists() or done.read_text(encoding="utf-8") != spec:
            done.unlink(missing_ok=True)
            for old in folder.glob("sample_*"):  # an older corpus may have had more videos
                old.unlink()
            make_sample_corpus(folder, **kwargs)
            done.write_text(spec, encoding="utf-8")
    return folder


def source_folder(catalog: Any, source: str, folder: str | None) -> str:
    """The local folder a build imports for source `folder` (the user's) or `sample`
    (the generated corpus, written on first use: under the data root when it is a
    local folder, else in a local cache, since on an object store it is only the
    import's source)."""
    from emotionclip.core import io

    if source == "sample":
        default = Path(catalog.root) / "sample_corpus" if io.is_local(catalog.root) \
            else io.local_cache_dir("sample_corpus")
        return str(ensure_sample_corpus(folder or default))
    if folder is None:
        raise ValueError("source='folder' needs the `folder` parameter")
    return str(folder)
