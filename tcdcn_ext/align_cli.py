"""``tcdcn-align``: facial landmarks for images, folders and videos, as JSON lines, with optional drawn overlays.

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
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["main"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".jp2"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
DEMO_OUTPUT = "tcdcn_demo.png"


def _parser() -> argparse.ArgumentParser:
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
                   "(default: the detector's, see tcdcn_ext.detect.DEFAULT_MAX_SIDE); 0: full resolution")
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
                   "(tcdcn_ext.folder_align)")
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


class _Progress:
    def __init__(self, label: str, total: int | None, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.5):
            return
        self.last = now
        of = f"/{self.total}" if self.total else ""
        print(f"\r{self.label}: {done}{of}", end="", file=sys.stderr, flush=True)

    def close(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            print(file=sys.stderr)


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
    bar = _Progress("images", len(paths), not args.quiet and len(paths) > 1)
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
        bar.update(start + len(chunk))
    bar.close(len(paths))
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
    bar = _Progress(f"{path.name} frames", total, not args.quiet)
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
            bar.update(i)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    bar.close(i)
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
    """``--out``: :func:`tcdcn_ext.folder_align.align_folder` over one folder."""
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tcdcn-align`` / ``python -m tcdcn_ext align``; returns the exit status."""
    parser = _parser()
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
    if aligner._detect is None:
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


if __name__ == "__main__":
    sys.exit(main())
