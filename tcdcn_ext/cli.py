"""The command line, all of it: ``tcdcn-align``, ``tcdcn-train``, ``tcdcn-train-attributes``, ``tcdcn-eval``,
``tcdcn-export`` (the console scripts) and ``python -m tcdcn_ext {align,train,train-attributes,eval,export,
calibrate}``. Each command parses its flags here and
calls the library; nothing else in the package parses arguments.

``tcdcn-align``: facial landmarks for images, folders and videos, as JSON lines, with optional drawn overlays.

::

    tcdcn-align photo.jpg                       # one JSON line on stdout: {"file", "frame", "faces"}
    tcdcn-align photos/ --json faces.jsonl --draw overlays/
    tcdcn-align clip.mp4 --draw clip_landmarks.mp4
    tcdcn-align --demo                          # the bundled astronaut photo -> tcdcn_demo.png
    tcdcn-align photos/ --out faces.parquet --workers 2 --batch-size 16   # streamed, resumable (folder_align)

Videos are tracked (landmark-predicted boxes, re-detection when lost or every ``--redetect-every`` frames) and
smoothed with a one-euro filter (``--no-smooth`` to turn it off); they produce one line per frame. Progress goes to
stderr. Exit status: 0 when every input was processed, 1 when some failed (their lines carry ``"error"``), 2 for
usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .util.progress import progress_bar

__all__ = ["align_main", "calibrate_main", "eval_main", "export_main", "main", "train_attributes_main", "train_main"]


# ----------------------------------------------------------------------------------------------------------------
# tcdcn-align


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".jp2"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
DEMO_OUTPUT = "tcdcn_demo.png"


def _align_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tcdcn-align", description="TCDCN facial landmarks and attributes for images, "
                                "folders and videos (JSON lines; optional drawn overlays).")
    p.add_argument("inputs", nargs="*", metavar="IMG|DIR|VIDEO", help="image files, folders of images, videos")
    p.add_argument("--points", type=int, choices=(5, 68), default=5, help="landmark model (default 5)")
    p.add_argument("--model", default=None, help="weights file instead of the shipped model")
    p.add_argument("--averaged", action="store_true", help="TCDCN-Averaged: average over 20 shifted boxes")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--detector", default="auto", choices=("auto", "yunet", "yuface", "none"),
                   help="face detector (auto = yunet, the bundled YuNet; yuface: the same, by its earlier name)")
    p.add_argument("--max-side", type=int, default=None, help="detect on a copy downscaled to this longest side "
                   "(default: the detector's, see tcdcn_ext.inference.detector.DEFAULT_MAX_SIDE); 0: full resolution")
    p.add_argument("--min-face-size", type=float, default=0.0, help="smallest face to find, in pixels (default 0)")
    p.add_argument("--min-score", type=float, default=0.5, help="detector confidence threshold (default 0.5)")
    p.add_argument("--no-calibrate", action="store_true", help="use the detector's boxes uncalibrated")
    p.add_argument("--json", metavar="FILE", default="-", help="JSON lines output (default: stdout)")
    p.add_argument("--draw", metavar="OUTDIR|OUT.mp4", default=None,
                   help="write overlays: a folder for images (and videos), or a video file for one video input")
    p.add_argument("--demo", action="store_true", help=f"run on the bundled astronaut photo; writes {DEMO_OUTPUT} "
                   "(or --draw FILE) and prints the faces as JSON")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=16,
                   help="images per batched forward pass (default 16)")
    p.add_argument("--out", metavar="FILE.jsonl|FILE.parquet", default=None,
                   help="one folder -> one row per image, written as it goes; run again to resume after a kill "
                   "(tcdcn_ext.inference.folder_align)")
    p.add_argument("--workers", type=int, default=0, help="with --out: worker processes that decode, detect and "
                   "align (default 0: this process)")
    p.add_argument("--flush-every", type=int, default=512, help="with --out FILE.parquet: rows per Parquet part "
                   "(a kill loses at most this much work)")
    p.add_argument("--no-smooth", action="store_true", help="videos: no temporal smoothing")
    p.add_argument("--redetect-every", type=int, default=30, help="videos: run the detector every N frames")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _expand(inputs: list[str], recursive: bool) -> Iterator[tuple[str, Path]]:
    """("image" | "video" | "missing", path) for every input, folders expanded in sorted order."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            for f in sorted(f for f in found if f.is_file()):
                ext = f.suffix.lower()
                if ext in IMAGE_EXTENSIONS:
                    yield "image", f
                elif ext in VIDEO_EXTENSIONS:
                    yield "video", f
        elif path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            yield "video", path
        else:
            yield "image", path  # missing or unreadable files are reported by the Aligner, line by line


def _line(out: IO[str], file: str, frame: int | None, faces: list[Any] | None = None, error: str | None = None,
          **extra: Any) -> None:
    rec: dict[str, Any] = {"file": file, "frame": frame}
    if error is not None:
        rec["error"] = error
    else:
        rec["faces"] = [f.to_dict() for f in faces or []]
    rec.update(extra)
    out.write(json.dumps(rec) + "\n")
    out.flush()


def _draw_path(draw: str | None, src: Path) -> Path | None:
    if draw is None:
        return None
    ext = src.suffix.lower() if src.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
    return Path(draw) / (src.stem + ext)


def _write_image(path: Path, bgr: Any) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", bgr)
    if not ok:
        raise OSError(f"cannot encode {path}")
    buf.tofile(str(path))


def _run_images(aligner: Any, paths: list[Path], args: argparse.Namespace, out: IO[str]) -> int:
    from .inference.images import ImageError, to_pixels
    from .inference.detector import DetectorError
    from .inference.draw import draw_faces

    failures = 0
    bar = progress_bar(len(paths), "images", not args.quiet and len(paths) > 1, unit="img")
    for start in range(0, len(paths), max(1, args.batch)):
        chunk = paths[start:start + max(1, args.batch)]
        good, pixels = [], []
        for p in chunk:
            try:
                pixels.append(to_pixels(p, "rgb", str(p)))
                good.append(p)
            except ImageError as exc:
                failures += 1
                _line(out, str(p), None, error=str(exc))
        try:
            results = aligner.align_pixels(pixels, None, [str(p) for p in good])
        except (DetectorError, ValueError) as exc:
            for p in good:
                _line(out, str(p), None, error=str(exc))
            failures += len(good)
            continue
        for p, pix, faces in zip(good, pixels, results):
            _line(out, str(p), None, faces)
            target = _draw_path(args.draw, p)
            if target is not None:
                _write_image(target, draw_faces(pix.array if pix.order == "bgr" else pix.rgb()[:, :, ::-1], faces))
        bar.update(len(chunk))
    bar.close()
    return failures


def _run_video(aligner: Any, path: Path, args: argparse.Namespace, out: IO[str], draw_file: Path | None) -> int:
    import cv2

    from .inference.draw import draw_faces
    from .inference.tracking import FaceTracker

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        _line(out, str(path), None, error=f"{path}: cannot open the video")
        return 1
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    if not (0 < fps < 1000):
        fps = 30.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    tracker = FaceTracker(aligner, redetect_every=args.redetect_every, smooth=not args.no_smooth)
    writer = None
    bar = progress_bar(total, f"{path.name} frames", not args.quiet, unit="frame")
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            faces = tracker.update(frame, t=i / fps, color="bgr")
            _line(out, str(path), i, faces)
            if draw_file is not None:
                if writer is None:
                    draw_file.parent.mkdir(parents=True, exist_ok=True)
                    h, w = frame.shape[:2]
                    fourcc = "MJPG" if draw_file.suffix.lower() == ".avi" else "mp4v"
                    writer = cv2.VideoWriter(str(draw_file), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
                    if not writer.isOpened():
                        raise OSError(f"cannot write the video {draw_file}")
                writer.write(draw_faces(frame, faces, "bgr"))
            i += 1
            bar.update(1)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    bar.close()
    if i == 0:
        _line(out, str(path), None, error=f"{path}: no frame could be read")
        return 1
    return 0


def _demo(aligner: Any, args: argparse.Namespace, out: IO[str]) -> int:
    import importlib.resources

    import numpy as np

    from .inference.images import from_array
    from .inference.draw import draw_faces

    import cv2

    blob = (importlib.resources.files("tcdcn_ext") / "assets" / "astronaut.jpg").read_bytes()
    bgr = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    faces = aligner.align_pixels([from_array(bgr, "bgr", "astronaut.jpg")], None, ["astronaut.jpg"])[0]
    target = Path(args.draw) if args.draw else Path.cwd() / DEMO_OUTPUT
    if target.is_dir():
        target = target / DEMO_OUTPUT
    if target.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        target = target.with_suffix(".png")
    _write_image(target, draw_faces(bgr, faces, "bgr"))
    _line(out, "astronaut.jpg (bundled demo)", None, faces, drawn=str(target.resolve()))
    print(f"tcdcn-align: found {len(faces)} face(s); wrote {target.resolve()}", file=sys.stderr)
    return 0 if faces else 1


def _folder(args: argparse.Namespace) -> int:
    """``--out``: :func:`tcdcn_ext.inference.folder_align.align_folder` over one folder."""
    from .inference.detector import DetectorError
    from .inference.folder_align import align_folder
    from .models import WeightsError

    if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir() or args.draw or args.demo or args.json != "-":
        print("tcdcn-align: --out takes exactly one folder (and no --draw, --demo or --json)", file=sys.stderr)
        return 2
    kwargs = dict(points=args.points, device=args.device, averaged=args.averaged, detector=args.detector,
                  min_score=args.min_score, calibrate=not args.no_calibrate, model=args.model)
    try:
        stats = align_folder(args.inputs[0], args.out, kwargs, workers=args.workers, batch_size=args.batch,
                             recursive=args.recursive, progress=not args.quiet, flush_every=args.flush_every)
    except (WeightsError, DetectorError, ValueError, ImportError, OSError) as exc:
        print(f"tcdcn-align: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"tcdcn-align: {stats.aligned} images aligned ({stats.faces} faces, {stats.failed} failed) in "
              f"{stats.seconds:.1f} s, {stats.skipped} already in {args.out}", file=sys.stderr)
    return 1 if stats.failed else 0


def align_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-align`` / ``python -m tcdcn_ext align``: landmarks on images, folders and videos (see
    ``tcdcn-align --help``); returns the exit status."""
    parser = _align_parser()
    args = parser.parse_args(argv)
    if not args.inputs and not args.demo:
        parser.print_usage(sys.stderr)
        print("tcdcn-align: give images, folders or videos, or --demo", file=sys.stderr)
        return 2
    from .inference.aligner import Aligner
    from .inference.detector import DetectorError
    from .models import WeightsError

    if args.out is not None:
        return _folder(args)
    try:
        aligner = Aligner(points=args.points, device=args.device, averaged=args.averaged, detector=args.detector,
                          min_score=args.min_score, calibrate=not args.no_calibrate, model=args.model,
                          progress=not args.quiet, min_face_size=args.min_face_size,
                          **({} if args.max_side is None else {"max_side": args.max_side or None}))
    except (WeightsError, DetectorError, ValueError) as exc:
        print(f"tcdcn-align: {exc}", file=sys.stderr)
        return 2
    if not aligner.detects:
        print("tcdcn-align: --detector none cannot find faces in whole images (use auto)", file=sys.stderr)
        return 2
    out: IO[str] = sys.stdout if args.json == "-" else open(args.json, "w", encoding="utf-8")  # noqa: SIM115
    try:
        if args.demo:
            return _demo(aligner, args, out)
        items = list(_expand(args.inputs, args.recursive))
        videos = [p for kind, p in items if kind == "video"]
        draw_is_video = args.draw is not None and Path(args.draw).suffix.lower() in VIDEO_EXTENSIONS
        if draw_is_video and (len(videos) != 1 or len(items) != 1):
            print("tcdcn-align: --draw OUT.mp4 needs exactly one video input (give a folder for several inputs)",
                  file=sys.stderr)
            return 2
        failures = _run_images(aligner, [p for kind, p in items if kind == "image"], args, out)
        for v in videos:
            target = Path(args.draw) if draw_is_video else (Path(args.draw) / (v.stem + ".mp4") if args.draw else None)
            failures += _run_video(aligner, v, args, out, target)
        return 1 if failures else 0
    finally:
        if out is not sys.stdout:
            out.close()


# ----------------------------------------------------------------------------------------------------------------
# tcdcn-train


def train_parser() -> argparse.ArgumentParser:
    from .training.train import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(prog="tcdcn-train", description="Train TCDCN (paper Eq. 3 loss, Eq. 5 task-wise "
                                "early stopping) on staged crops (images/ + annotations.csv).")
    p.add_argument("--data", dest="train_dir", default="", help="training split folder (default: "
                   "$TCDCN_DATA or ../shared/data, mtfl/train for 5 points, 300w/train for 68)")
    p.add_argument("--out", dest="out_dir", default=d.out_dir)
    p.add_argument("--points", type=int, choices=(5, 68), default=d.points)
    p.add_argument("--aux-tasks", default=",".join(d.aux_tasks), help="comma list from pose,gender,glasses,smile "
                   "or '' for landmarks only")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (the paper's SGD uses 0.003)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--landmark-loss", choices=("l2", "l1"), default=d.landmark_loss)
    p.add_argument("--aux-weight", type=float, default=d.aux_weight, help="fixed lambda_a for every aux task")
    p.add_argument("--learn-lambda", action="store_true")
    p.add_argument("--no-early-stopping", dest="early_stopping", action="store_false")
    p.add_argument("--strip-k", type=int, default=d.strip_k)
    p.add_argument("--epsilon", type=float, default=d.epsilon)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--limit", type=int, default=None, help="use only the first N faces (smoke tests)")
    p.add_argument("--max-shift", type=float, default=d.max_shift)
    p.add_argument("--max-rotate", dest="max_rotate_deg", type=float, default=d.max_rotate_deg)
    p.add_argument("--zoom", type=float, nargs=2, default=d.zoom, metavar=("LO", "HI"))
    p.add_argument("--no-mirror", dest="mirror", action="store_false")
    p.add_argument("--balance-pose", type=float, default=d.balance_pose, help="oversample rare head poses: "
                   "sampling weight ~ freq(pose)^-B (0 = off, 1 = balanced)")
    p.add_argument("--model-json", default="{}", help='TCDCNConfig overrides, e.g. \'{"feature_dim": 256}\'')
    p.add_argument("--init-from", default=None, help="warm start from a checkpoint (heads are re-initialised)")
    p.add_argument("--box-scale", type=float, default=d.box_scale, help="enlarge the annotated boxes by this factor "
                   "about their centre (recorded in the model config; preprocess/predict apply it)")
    p.add_argument("--boxes", choices=("given", "landmarks"), default=d.boxes, help="training and validation face "
                   "boxes: the split's own (given) or made from the true 5 landmarks by the MTFL box model "
                   "(landmarks: the test faces' and the Aligner's refining pass's framing)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (on every rank under "
                   "torchrun) when it exists, else start afresh: one command for the first start and every restart")
    p.add_argument("--stop-after", type=int, default=None, help="end this invocation after epoch N (resume later)")
    p.add_argument("--quiet", dest="progress", action="store_false")
    p.add_argument("--refit-heads", metavar="WEIGHTS", default=None, help="do not train: refit the auxiliary heads "
                   "of WEIGHTS on its frozen feature (see refit_aux_heads) and write OUT/model.pt")
    return p


def train_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-train``: train a model (see ``tcdcn-train --help``)."""
    import logging
    import os

    from .training.train import TrainConfig, refit_aux_heads, train

    args = train_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: only rank 0 logs progress
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(message)s" if rank == 0 else f"%(asctime)s [rank {rank}] %(message)s",
                        datefmt="%H:%M:%S")
    kw = vars(args).copy()
    resume = kw.pop("resume")
    stop_after = kw.pop("stop_after")
    refit = kw.pop("refit_heads")
    if refit:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        report = refit_aux_heads(refit, Path(args.out_dir) / "model.pt", args.train_dir or None, args.val_fraction,
                                 args.seed, progress=args.progress, boxes=args.boxes)
        print(json.dumps(report, indent=2))
        return 0
    kw["aux_tasks"] = tuple(t for t in kw["aux_tasks"].split(",") if t)
    kw["model"] = json.loads(kw.pop("model_json"))
    cfg = TrainConfig(**kw)
    summary = train(cfg, resume=resume, stop_after=stop_after)
    if rank == 0:
        print(json.dumps(summary, indent=2, default=str))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# tcdcn-train-attributes


def train_attributes_parser() -> argparse.ArgumentParser:
    from .training.attributes import AttributeTrainConfig

    d = AttributeTrainConfig()
    p = argparse.ArgumentParser(prog="tcdcn-train-attributes", description="Train the attribute network (head "
                                "pose, gender, glasses, smile; tcdcn_ext.models.attributes) on a staged split.")
    p.add_argument("--data", default=None, help="staged training split (default: $TCDCN_DATA/mtfl/train)")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--max-shift", type=int, default=d.max_shift)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--model-json", default="{}", help="AttributeConfig overrides, e.g. '{\"input_size\": 64}'")
    p.add_argument("--stop-after", type=int, default=None, help="end this invocation after epoch N (the same "
                   "command continues from OUT/checkpoint.pt)")
    p.add_argument("--quiet", action="store_true")
    return p


def train_attributes_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-train-attributes``: train the attribute network (resumable; see ``--help``)."""
    args = train_attributes_parser().parse_args(argv)
    from .training.attributes import AttributeTrainConfig, train_attributes
    from .training.train import default_data_root

    data = args.data or str(default_data_root() / "mtfl" / "train")
    cfg = AttributeTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               weight_decay=args.weight_decay, val_fraction=args.val_fraction, seed=args.seed,
                               threads=args.threads, max_shift=args.max_shift, limit=args.limit,
                               model=json.loads(args.model_json))
    report = train_attributes(data, args.out, cfg, progress=not args.quiet, stop_after=args.stop_after)
    if report is None:
        print(f"stopped after epoch {args.stop_after}; run the same command again to continue")
        return 0
    print(json.dumps({"best_epoch": report["best_epoch"], "val": report["val"]}, indent=1))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# tcdcn-eval


def _eval_attribute_net(choice: str, num_points: int):
    """tcdcn-eval's ``--attributes``: the attribute network to score, or None for the model's own heads."""
    from .models import attributes as attr

    if choice == "heads" or (choice == "auto" and (num_points != 5 or not attr.shipped_attribute_net_available())):
        return None
    if num_points != 5:
        raise SystemExit("tcdcn-eval: --attributes network reads MTFL boxes: it needs 5-point data and model")
    return attr.load_attribute_net(None if choice in ("auto", "network") else choice)



def eval_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-eval``: score a model on a staged-crops folder with the paper's metrics."""
    p = argparse.ArgumentParser(prog="tcdcn-eval", description="Evaluate a TCDCN model on a folder in the staged "
                                "format (images/ + annotations.csv with box columns), using the annotated boxes.")
    p.add_argument("--model", default="5pt", help="'5pt', '68pt' or a weights .pt path")
    p.add_argument("--data", default=None, help="split folder (default: mtfl/test or 300w/test_common under "
                   "$TCDCN_DATA or ../shared/data)")
    p.add_argument("--json", default=None, help="write the summary JSON here")
    p.add_argument("--predictions", default=None, help="write per-face predictions CSV here")
    p.add_argument("--plot", default=None, help="write the CED plot PNG here")
    p.add_argument("--mirror-average", action="store_true", help="average with the mirrored face's prediction")
    p.add_argument("--averaged", action="store_true", help="TCDCN-Averaged: landmarks and attribute probabilities "
                   "averaged over 20 shifted input windows in one shift_average op per batch "
                   "(tcdcn_ext.inference.averaging.default_shifts)")
    p.add_argument("--inference-weights", choices=["auto", "float32", "float16", "int8"], default=None,
                   help="storage of the weights on the CPU inference path (TCDCN.set_inference_weights); default: "
                        "the model's own (int8 for the shipped 5-point model, else auto)")
    p.add_argument("--attributes", default="auto",
                   help="where the attribute predictions come from: 'auto' (the shipped attribute network for a "
                        "5-point model, as the Aligner prints them; else the model's heads), 'network', 'heads', "
                        "or an attribute network weights path")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from .training.datasets import load_staged
    from .models import load_model
    from .training import evaluate as ev
    from .training import reports
    from .training.train import default_data_root

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if args.inference_weights is not None:
        model.set_inference_weights(args.inference_weights)
    split = Path(args.data) if args.data else default_data_root() / (
        "mtfl/test" if model.num_points == 5 else "300w/test_common")
    fs = load_staged(split, progress=not args.quiet)
    if fs.num_points != model.num_points:
        raise SystemExit(f"tcdcn-eval: {split} has {fs.num_points}-point annotations but the model predicts "
                         f"{model.num_points}")
    if args.averaged and args.mirror_average:
        raise SystemExit("tcdcn-eval: --averaged and --mirror-average cannot be combined")
    pred, probs = ev.predict_faceset(model, fs, args.batch_size, progress=not args.quiet,
                                     mirror_average=args.mirror_average)
    if args.averaged:
        from .inference.averaging import predict_averaged

        pred, aprobs = predict_averaged(model, fs.images, fs.boxes, batch_size=args.batch_size, return_probs=True,
                                        progress=not args.quiet)
        probs.update(aprobs)
    net = _eval_attribute_net(args.attributes, model.num_points)
    if net is not None:
        from .models.attributes import attribute_inputs, attribute_probabilities

        chunks = [attribute_probabilities(net, attribute_inputs(fs.images[i:i + args.batch_size],
                                                                fs.boxes[i:i + args.batch_size], net.config))
                  for i in range(0, len(fs), args.batch_size)]
        probs.update({t: np.concatenate([c[t] for c in chunks]) for t in net.config.tasks})
    attrs = {k: v for k, v in fs.attributes.items() if k in probs}
    summary = ev.evaluate_predictions(pred, fs.landmarks, attrs or None, {k: probs[k] for k in attrs} or None)
    summary["model"], summary["data"], summary["faces"] = str(args.model), str(split), len(fs)
    err = ev.landmark_errors(pred, fs.landmarks, "inter_ocular" if model.num_points == 5 else "outer_corners")
    if args.json:
        reports.write_json(args.json, summary)
    if args.plot:
        reports.plot_ced({str(args.model): err}, args.plot, title=f"CED on {split.name} ({len(fs)} faces)")
    if args.predictions:
        pa = {k: (v.argmax(1), v) for k, v in probs.items()}
        reports.write_predictions_csv(args.predictions, [Path(n).name for n in fs.names], pred, pa)
    print(reports.format_table(summary))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# tcdcn-export


def export_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-export``: write a model as ONNX (standard operators) and/or as a torch.export program (``.pt2``)."""
    import torch

    from .models import load_model
    from .models.export import MIN_OPSET, check_onnx, to_onnx

    p = argparse.ArgumentParser(prog="tcdcn-export", description="Export a TCDCN model for deployment: an ONNX graph "
                                "of standard operators (onnxruntime and other runtimes, no tcdcn_ext needed) and/or "
                                "a torch.export program (.pt2, loads with torch.export.load; needs tcdcn_ext).")
    p.add_argument("--model", default="5pt", help="'5pt', '68pt' or a weights .pt path")
    p.add_argument("--onnx", default=None, metavar="PATH", help="write the ONNX graph here")
    p.add_argument("--pt2", default=None, metavar="PATH", help="write the torch.export program here")
    p.add_argument("--averaged", action="store_true", help="ONNX: TCDCN-Averaged over the model's default shifts "
                   "(tcdcn_ext.inference.averaging.default_shifts); input: crops with a margin (averaging.shift_crops)")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--check", action="store_true", help="run the written ONNX graph with onnxruntime on random "
                   "inputs and report its largest difference from the native model")
    args = p.parse_args(argv)
    if not (args.onnx or args.pt2):
        p.error("nothing to do: give --onnx PATH and/or --pt2 PATH")
    if args.averaged and args.pt2:
        p.error("--averaged applies to --onnx only (a .pt2 program holds the plain forward)")

    model = load_model(args.model)
    s = model.input_size
    if args.pt2:
        x = torch.zeros(2, 1, s, s)
        program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
        torch.export.save(program, args.pt2)
        print(f"tcdcn-export: wrote {args.pt2} (torch.export program, {args.model}, dynamic batch)")
    if args.onnx:
        shifts = None
        if args.averaged:
            from .inference.averaging import default_shifts

            shifts = default_shifts(model)
        try:
            to_onnx(model, args.onnx, shifts=shifts, opset=args.opset)
        except ImportError as exc:
            raise SystemExit(f"tcdcn-export: {exc}") from exc
        print(f"tcdcn-export: wrote {args.onnx} (ONNX opset {args.opset}, {args.model}"
              f"{', averaged' if args.averaged else ''}, dynamic batch)")
        if args.check:
            print(f"tcdcn-export: onnxruntime vs native: max |diff| of the landmarks "
                  f"{check_onnx(model, args.onnx, shifts):.3g}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# python -m tcdcn_ext calibrate


def calibrate_main(argv: Sequence[str] | None = None) -> int:
    """``python -m tcdcn_ext calibrate --fit TRAIN_DIR``: fit the detector -> annotated box calibration
    (:func:`tcdcn_ext.training.calibration.fit_box_calibration`) and print it as JSON."""
    p = argparse.ArgumentParser(prog="python -m tcdcn_ext calibrate", description="Fit the YuNet -> annotated box "
                                "calibration (tcdcn_ext.inference.detector.CALIBRATION_5PT / _68PT) on a staged split.")
    p.add_argument("--fit", metavar="TRAIN_DIR", required=True,
                   help="staged training split, e.g. mtfl/train (5 points) or 300w/train (68 points)")
    p.add_argument("--model", default="5pt", help="landmark model choosing the method (name or .pt path)")
    p.add_argument("--cache", default=None, help="npz cache of the raw detections")
    p.add_argument("--boxes", choices=("given", "landmarks"), default="given", help="the box convention the model "
                   "was trained on (tcdcn-train --boxes): the split's boxes, or boxes made from the true 5 landmarks")
    args = p.parse_args(argv)

    from .training.calibration import fit_box_calibration

    cal = fit_box_calibration(args.fit, args.model, cache=args.cache, boxes=args.boxes)
    print(json.dumps(cal, indent=2))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# python -m tcdcn_ext


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tcdcn_ext {align,train,eval,export,calibrate} ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"align": align_main, "train": train_main, "eval": eval_main, "export": export_main,
                "calibrate": calibrate_main}
    if not argv or argv[0] not in commands:
        if argv and argv[0] not in ("-h", "--help"):
            return align_main(argv)  # `python -m tcdcn_ext IMG ...` behaves like tcdcn-align
        print("usage: python -m tcdcn_ext {align,train,train-attributes,eval,export,calibrate} [options]   (align is "
              "the default)")
        return 0 if argv else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
