"""End to end on whole photos: tcdcn_ext's Aligner (bundled YuNet detector + landmarks) beside the peers' full
pipelines (dlib HOG + 68 points, MediaPipe face mesh, MTCNN), each with its own detector, in one run.

    . /path/to/peers-venv/bin/activate      # ../shared/peers/install_peers.sh makes it (dlib, mediapipe, MTCNN)
    python benchmarks/eval_scenes.py [--sets test,mtfl,rotation] [--methods ours5,ours68,dlib,mediapipe,mtcnn]
                                     [--limit N] [--rotation-limit 150]

tcdcn_ext is imported from this checkout (build it in place: ``python setup.py build_ext --inplace`` against the
same torch as the peers' venv, torch 2.13.0). Methods missing from the venv are skipped with a note.

Sets: ``test`` = ``scenes/test`` (the 554 HELEN + LFPW test photos of 300-W, one annotated face each), ``mtfl`` =
the 2,995 ``mtfl/test`` crops (AFLW faces) each given as a whole image, ``rotation`` = the first
``--rotation-limit`` scenes/test photos rotated in-plane by 0-90 degrees (15-degree steps; the canvas grows so
nothing is cut, the annotations rotate with the photo).

Scores, per annotated face: the 5-point error (eye centres, nose tip, mouth corners; for 68-point annotations and
methods the eye centres are the means of points 36-41 / 42-47, nose 30, mouth 48 / 54) of the method's best
detection in the photo, over the annotated eye-centre distance; a face without detections, or >= 10 % wrong, is a
failure. Headline: AUC of that error's cumulative curve on [0, 10 %] over ALL annotated faces (misses included).
Also: landmark recall (best detection < 10 %), detections not matching an annotated face on the single-face photos
(``extra``; unannotated background faces exist, see the data README), and for the 68-point methods the 68-point
error (outer eye corners 36/45 and inter-pupil) of the found faces, next to the same model on the annotated box.
Time: median per photo of the whole pipeline, one thread. Writes ``benchmarks/results/end_to_end_scenes.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("TCDCN_DATA", ROOT.parent / "shared" / "data"))
PEERS = ROOT.parent / "shared" / "peers"

MP_EYE_L = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173]  # image-left eye contour
MP_EYE_R = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398]
MP_NOSE, MP_MOUTH_L, MP_MOUTH_R = 1, 61, 291


def five_from_68(p: np.ndarray) -> np.ndarray:
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


# ----------------------------------------------------------------------------------------------------------------
# Methods: each maps an RGB uint8 photo to a list of (5 points [5, 2], 68 points [68, 2] or None, box or None)


class Ours:
    def __init__(self, points: int, search: bool = False) -> None:
        import torch

        from tcdcn_ext import Aligner

        torch.set_num_threads(1)
        self.name = f"tcdcn_ext {points} pt" + (" + rotation search" if search else "")
        self.aligner = Aligner(points=points, search_rotations=search)
        self.points = points
        self.version = "tcdcn_ext (this checkout)"

    def __call__(self, rgb):
        out = []
        for f in self.aligner(rgb):
            lm = np.asarray(f.landmarks, np.float64)
            out.append((lm if self.points == 5 else five_from_68(lm), None if self.points == 5 else lm, f.box))
        return out

    def on_boxes(self, rgb, boxes):
        return [np.asarray(f.landmarks, np.float64) for f in self.aligner.align(rgb, boxes)]


class Dlib:
    name = "dlib HOG (upsample 1) + 68"

    def __init__(self) -> None:
        import importlib.util

        import dlib

        spec = importlib.util.find_spec("face_recognition_models")
        model = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
        self.det, self.sp, self.dlib = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model)), dlib
        self.version = "dlib " + dlib.__version__

    def __call__(self, rgb):
        out = []
        for r in self.det(rgb, 1):
            s = self.sp(rgb, r)
            p = np.array([[s.part(i).x, s.part(i).y] for i in range(68)], np.float64)
            out.append((five_from_68(p), p, (r.left(), r.top(), r.right(), r.bottom())))
        return out


class MediaPipe:
    name = "MediaPipe face mesh"

    def __init__(self) -> None:
        import mediapipe as mp

        self.fm = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=5, refine_landmarks=False,
                                                  min_detection_confidence=0.5)
        self.version = "mediapipe " + mp.__version__

    def __call__(self, rgb):
        h, w = rgb.shape[:2]
        r = self.fm.process(rgb)
        out = []
        for lms in r.multi_face_landmarks or []:
            p = np.array([[lm.x * w - 0.5, lm.y * h - 0.5] for lm in lms.landmark])
            five = np.stack([p[MP_EYE_L].mean(0), p[MP_EYE_R].mean(0), p[MP_NOSE], p[MP_MOUTH_L], p[MP_MOUTH_R]])
            out.append((five, None, None))
        return out


class Mtcnn:
    name = "MTCNN (facenet-pytorch)"

    def __init__(self) -> None:
        sys.path.insert(0, str(PEERS))
        from run_peers import _torch, _torchvision_shim  # the harness's torchvision stand-in

        _torchvision_shim()
        _torch()
        from facenet_pytorch import MTCNN

        self.m = MTCNN(device="cpu", keep_all=True)
        self.version = "facenet-pytorch (MTCNN)"

    def __call__(self, rgb):
        boxes, _, pts = self.m.detect(rgb, landmarks=True)
        if boxes is None:
            return []
        return [(np.asarray(p, np.float64), None, tuple(b)) for b, p in zip(boxes, pts)]


METHODS = {"ours5": lambda: Ours(5), "ours68": lambda: Ours(68), "ours5s": lambda: Ours(5, True),
           "ours68s": lambda: Ours(68, True), "dlib": Dlib, "mediapipe": MediaPipe,
           "mtcnn": Mtcnn}


# ----------------------------------------------------------------------------------------------------------------
# Data


def load_faces(split: str, limit: int | None) -> list[tuple[Path, list[dict]]]:
    """[(photo, [{"box": [4], "points": [P, 2]}, ...])] for ``scenes/test`` or ``mtfl/test``."""
    folder = DATA / ("scenes/test" if split in ("test", "rotation") else "mtfl/test")
    photos: dict[str, list] = {}
    with open(folder / "annotations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        n = 68 if "x67" in row else 5
        pts = np.array([[float(row[f"x{k}"]), float(row[f"y{k}"])] for k in range(n)])
        box = [float(row[k]) for k in ("box_x0", "box_y0", "box_x1", "box_y1")]
        name = row["image"] if row["image"].endswith(".jpg") else row["image"] + ".jpg"
        photos.setdefault(name, []).append({"box": box, "points": pts})
    items = [(folder / "images" / k, v) for k, v in photos.items()]
    return items[:limit] if limit else items


def rotate(rgb: np.ndarray, faces: list[dict], degrees: float) -> tuple[np.ndarray, list[dict]]:
    """The photo rotated counter-clockwise by ``degrees`` on a canvas that holds all of it, and its annotations."""
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(w * c + h * s)), int(np.ceil(w * s + h * c))
    m[:, 2] += [(nw - w) / 2, (nh - h) / 2]
    out = cv2.warpAffine(rgb, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    moved = []
    for f in faces:
        p = f["points"] @ m[:, :2].T + m[:, 2]
        moved.append({"points": p, "box": [*p.min(0), *p.max(0)]})
    return out, moved


# ----------------------------------------------------------------------------------------------------------------
# Scoring


def five_gt(points: np.ndarray) -> np.ndarray:
    return points if len(points) == 5 else five_from_68(points)


def nme(pred: np.ndarray, gt: np.ndarray, norm: float) -> float:
    return float(np.linalg.norm(pred - gt, axis=1).mean() / norm)


def auc(errors: np.ndarray, limit: float = 0.10) -> float:
    """Area under the cumulative error curve on [0, limit], as a percentage of the full area (misses = inf)."""
    x = np.linspace(0, limit, 1001)
    curve = (errors[None, :] <= x[:, None]).mean(1)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 (the peers' venv) has only trapz
    return float(100 * trapezoid(curve, x) / limit)


def run_set(method, items, name: str, annotated_boxes: bool) -> dict:
    five_err, times, extra = [], [], 0
    e68_oc, e68_ip, e68_oc_box = [], [], []
    for path, faces, rgb in items:
        t0 = time.perf_counter()
        dets = method(rgb)
        times.append(time.perf_counter() - t0)
        used = set()
        for f in faces:
            gt5 = five_gt(f["points"])
            iod = float(np.linalg.norm(gt5[1] - gt5[0]))
            errs = [nme(d[0], gt5, iod) for d in dets]
            if not errs:
                five_err.append(np.inf)
                continue
            j = int(np.argmin(errs))
            five_err.append(errs[j])
            if errs[j] < 0.10:
                used.add(j)
            if dets[j][1] is not None and len(f["points"]) == 68 and errs[j] < 0.10:
                p, g = dets[j][1], f["points"]
                e68_oc.append(nme(p, g, float(np.linalg.norm(g[36] - g[45]))))
                e68_ip.append(nme(p, g, iod))
        if len(faces) == 1:
            extra += len(dets) - len(used)
        if annotated_boxes and getattr(method, "points", 0) == 68 and len(faces[0]["points"]) == 68:
            preds = method.on_boxes(rgb, [f["box"] for f in faces])
            for p, f in zip(preds, faces):
                e68_oc_box.append(nme(p, f["points"], float(np.linalg.norm(f["points"][36] - f["points"][45]))))
    e = np.array(five_err)
    row = {"set": name, "faces": len(e), "auc_5pt": auc(e), "failure_rate": float((e >= 0.10).mean()),
           "landmark_recall": float((e < 0.10).mean()), "missed": int(np.isinf(e).sum()),
           "mean_5pt_error_found": float(e[e < 0.10].mean()) if (e < 0.10).any() else None,
           "extra_detections_single_face_photos": extra, "median_ms_per_photo": 1e3 * float(np.median(times))}
    if e68_oc:
        row.update({"e68_outer_corners_found": float(np.mean(e68_oc)), "e68_inter_pupil_found": float(np.mean(e68_ip))})
    if e68_oc_box:
        row["e68_outer_corners_annotated_box"] = float(np.mean(e68_oc_box))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", default="test,mtfl,rotation")
    p.add_argument("--methods", default="ours5,ours68,dlib,mediapipe,mtcnn")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--rotation-limit", type=int, default=150)
    p.add_argument("--angles", default="0,15,30,45,60,75,90")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "end_to_end_scenes.json")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    methods, notes = {}, {}
    for key in args.methods.split(","):
        try:
            methods[key] = METHODS[key]()
        except Exception as exc:  # a peer missing from this venv: say so, run the rest
            notes[key] = f"skipped: {type(exc).__name__}: {exc}"
            print(f"{key}: {notes[key]}", file=sys.stderr)
    report = {"command": "python benchmarks/eval_scenes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "versions": {k: m.version for k, m in methods.items()}, "notes": notes, "rows": []}

    def load(split, limit):
        return [(path, faces, cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
                for path, faces in load_faces(split, limit)]

    sets = args.sets.split(",")
    for split in [s for s in sets if s in ("test", "mtfl")]:
        items = load(split, args.limit)
        for key, m in methods.items():
            row = run_set(m, items, "scenes/test" if split == "test" else "mtfl/test crops as photos", split == "test")
            row["method"] = m.name
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
    if "rotation" in sets:
        base = load("rotation", args.rotation_limit)
        for angle in (float(a) for a in args.angles.split(",")):
            items = []
            for path, faces, rgb in base:
                rgb_r, faces_r = rotate(rgb, faces, angle)
                items.append((path, faces_r, rgb_r))
            for key, m in methods.items():
                row = run_set(m, items, f"scenes/test rotated {angle:g} deg", False)
                row.update({"method": m.name, "angle": angle})
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
