"""`emotionclip viz ...`: plots of the model.

    emotionclip viz attention (--checkpoint C | --official-checkpoint F [--allow-pickle])
                              --manifests M --clip-id ID [--layers 1-4] --out PNG
                              [--catalog/-c CAT] [--profile/-p P] [--data-root R]

draws the frame encoder's HMN and CLS attention maps for one manifest clip (paper
Fig. 5, appendix Figs. 6-8): one row per frame, the HMN token's attention in layers
1-4, then the CLS token's, the subject outlined.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from emotionclip.cli._common import CatalogOpt, DataRootOpt, ProfileOpt, open_catalog

app = typer.Typer(no_args_is_help=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command("attention")
def attention_cmd(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="One of our EmotionCLIP checkpoints."),
    official_checkpoint: Optional[Path] = typer.Option(None, "--official-checkpoint", help="The authors' released checkpoint."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Let an official checkpoint that needs full unpickling load (trusted files only)."),
    clip_model: str = typer.Option("ViT-B-32", "--clip-model", help="OpenCLIP architecture of the official checkpoint (the authors': ViT-B-32)."),
    manifests: str = typer.Option(..., "--manifests", help="Manifests folder, shard file or fsspec URL."),
    clip_id: str = typer.Option(..., "--clip-id", help="The manifest clip to draw."),
    layers: Optional[str] = typer.Option(
        None, "--layers", help="Frame-encoder layers, 1-based: '1-4' or '1,6,12' (default: 1-4 as in the paper's "
                               "figures, capped at the model's depth)."),
    out: str = typer.Option(..., "--out", help="The PNG to write (local path or fsspec URL)."),
    num_frames: int = typer.Option(8, "--num-frames", help="Frames (rows), uniformly spaced over the clip."),
    device: str = typer.Option("cpu", "--device"),
    catalog: Optional[Path] = CatalogOpt,
    profile: Optional[str] = ProfileOpt,
    data_root: Optional[str] = DataRootOpt,
) -> None:
    """HMN and CLS attention maps of one clip's frames (paper Fig. 5); prints a JSON line."""
    if (checkpoint is None) == (official_checkpoint is None):
        raise _fail("give exactly one of --checkpoint, --official-checkpoint")
    if num_frames < 1:
        raise _fail("--num-frames must be at least 1")
    cat = open_catalog(catalog, profile, data_root, None)

    from emotionclip.core.errors import StageError
    from emotionclip.models import frame_encoder as fe
    from emotionclip.models.attention import parse_layers
    from emotionclip.models.checkpoint import load_model, load_official_checkpoint
    from emotionclip.viz.attention import plot_clip_attention

    try:
        if checkpoint is not None:
            model = load_model(checkpoint, map_location=device)
        else:
            model = load_official_checkpoint(official_checkpoint, clip_model=clip_model, allow_pickle=allow_pickle,
                                             map_location=device)
    except FileNotFoundError as e:
        raise _fail(f"checkpoint not found: {e.filename or e}")
    except (ValueError, RuntimeError, KeyError) as e:  # not a checkpoint, wrong architecture, ...
        raise _fail(f"cannot load {checkpoint or official_checkpoint}: {e}")
    model.eval()
    if model.subject_mode == "vanilla":
        raise _fail("the model's subject_mode is vanilla: it has no HMN token to draw (use a sap or saam model)")
    depth = fe.num_layers(model.clip.visual)
    try:
        chosen = parse_layers(layers, depth) if layers is not None else tuple(range(1, min(4, depth) + 1))
    except ValueError as e:
        raise _fail(f"--layers {layers!r}: {e}")

    try:
        plot_clip_attention(model, manifests, clip_id, cat, out, layers=chosen, num_frames=num_frames,
                            title=f"{clip_id} ({model.subject_mode})")
    except FileNotFoundError as e:
        raise _fail(f"not found: {e.filename or e}")
    except StageError as e:  # the clip's frames could not be read
        raise _fail(str(e), code=1)
    except ValueError as e:  # unknown clip id, a manifest that fails its schema, ...
        raise _fail(str(e))
    typer.echo(json.dumps({"out": str(out), "clip_id": clip_id, "layers": list(chosen),
                           "subject_mode": model.subject_mode}))
