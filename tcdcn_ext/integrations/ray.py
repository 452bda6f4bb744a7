"""Batch inference with Ray Data: a callable class for ``Dataset.map_batches`` (``pip install "tcdcn_ext[ray]"``).

::

    import ray
    from tcdcn_ext.integrations.ray import TCDCNPredictor

    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)    # or read_images(...)
    faces = ds.map_batches(TCDCNPredictor, batch_size=16, concurrency=4,          # 4 actors, model loaded once each
                           fn_constructor_kwargs={"points": 5})
    faces.write_parquet("s3://bucket/landmarks/")

Each actor builds one :class:`~tcdcn_ext.Aligner` (``threads`` torch threads) when it starts; every batch is then
decoded, detected and aligned with one batched forward for all faces of the batch's images. A batch may hold
encoded files (a ``bytes`` column, from ``read_binary_files``: an unreadable file becomes a row with ``error``),
decoded images (an ``image`` column of ``[H, W, 3]`` RGB arrays, from ``read_images``) or paths (a ``path`` column
alone, read by the actor), in any ``batch_format``. The rows come back as an Arrow table with the columns of
``tcdcn-align DIR --out`` (:data:`tcdcn_ext.inference.folder_align.COLUMNS`: ``file`` is the ``path`` column when there
is one, then size, error, ``boxes``, ``scores``, ``landmarks`` and one label and one probability column per attribute
task), so Ray's output and the folder CLI's can be read by the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["TCDCNPredictor"]


class TCDCNPredictor:
    """``map_batches`` UDF: faces, landmarks and attributes of a batch of images (see the module docstring).

    Args: ``points``, ``model``, ``averaged``, ``detector``, ``min_score``, ``calibrate``: as for
    :class:`~tcdcn_ext.Aligner`; ``threads``: torch threads of this actor (give the actor as many CPUs).
    """

    def __init__(self, points: int = 5, model: str | None = None, averaged: bool = False, detector: str = "auto",
                 min_score: float = 0.5, calibrate: bool = True, threads: int = 1) -> None:
        import torch

        from ..inference.aligner import Aligner
        from ..inference.folder_align import arrow_schema

        torch.set_num_threads(int(threads))
        self.aligner = Aligner(points=points, model=model, averaged=averaged, detector=detector,
                               min_score=min_score, calibrate=calibrate, progress=False)
        self.tasks = list(self.aligner.attribute_tasks)
        self.schema = arrow_schema(self.tasks)

    def __call__(self, batch: Mapping[str, Any]) -> Any:
        import pyarrow as pa

        from ..inference.images import ImageError, load_image
        from ..inference.folder_align import error_row, face_columns

        if hasattr(batch, "column_names"):  # batch_format="pyarrow"
            batch = {name: batch.column(name).to_pylist() for name in batch.column_names}
        if "bytes" in batch:
            sources, kind = list(batch["bytes"]), "bytes"
        elif "image" in batch:
            sources, kind = list(batch["image"]), "image"
        elif "path" in batch:
            sources, kind = list(batch["path"]), "path"
        else:
            raise KeyError(f"TCDCNPredictor: the batch needs a 'bytes', 'image' or 'path' column; it has {list(batch)}")
        names = [str(p) for p in batch["path"]] if "path" in batch else [f"row {i}" for i in range(len(sources))]
        rows: list[dict[str, Any] | None] = [None] * len(sources)
        good, images = [], []
        for i, src in enumerate(sources):
            try:
                images.append(self._decode(src, kind, load_image))
                good.append(i)
            except ImageError as exc:
                rows[i] = error_row(names[i], self.tasks, str(exc))
        if images:
            try:
                results = self.aligner.align_batch(images)
            except (ValueError, RuntimeError) as exc:  # detector failures: the batch's rows say so
                for i, im in zip(good, images):
                    rows[i] = error_row(names[i], self.tasks, f"{type(exc).__name__}: {exc}", im.shape[:2])
            else:
                for i, im, faces in zip(good, images, results):
                    rows[i] = {"file": names[i], "width": im.shape[1], "height": im.shape[0], "error": None,
                               **face_columns(faces, self.tasks)}
        return pa.Table.from_pylist(rows, schema=self.schema)

    @staticmethod
    def _decode(src: Any, kind: str, load_image: Any) -> np.ndarray:
        if kind == "bytes":
            import cv2

            from ..inference.images import ImageError

            bgr = cv2.imdecode(np.frombuffer(bytes(src), np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ImageError("cannot decode the image bytes (not an image, or a format OpenCV cannot read)")
            return load_image(bgr, "bgr")
        if kind == "image":
            return load_image(np.asarray(src), "rgb")
        return load_image(str(src))
