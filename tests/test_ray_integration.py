"""tcdcn_ext.integrations.ray: ``ds.map_batches(TCDCNPredictor, concurrency=2)`` under ``ray.init(num_cpus=2)`` over a
folder gives the Aligner's faces, in the columns of ``tcdcn-align DIR --out``."""

from __future__ import annotations

import pytest
from test_folder_align import _check_against_aligner, _make_folder

ray = pytest.importorskip("ray", reason="ray is not installed (pip install \"tcdcn_ext[ray]\")")
pytest.importorskip("ray.data", reason="ray is installed without Ray Data (pip install \"ray[data]\")")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    # Ray's workers start in the driver's working directory and put it first on their path: from the checkout, its
    # source tcdcn_ext (no compiled _C where the package is installed, as in CI) would shadow the installed one.
    import os

    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray_cwd"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        os.chdir(here)


def test_map_batches_matches_the_aligner(ray_cluster, tmp_path):
    from tcdcn_ext.folder_align import COLUMNS
    from tcdcn_ext.integrations.ray import TCDCNPredictor

    root = _make_folder(tmp_path / "photos", n=10)
    files = sorted(str(p) for p in root.glob("*.jpg"))
    ds = ray.data.read_binary_files(files, include_paths=True)
    # Two actors of half a CPU each: the other CPU stays free for the read tasks (two 1-CPU actors would take both
    # CPUs of this 2-CPU cluster and the reads would wait for ever).
    out = ds.map_batches(TCDCNPredictor, batch_size=4, concurrency=2, num_cpus=0.5, batch_format="pyarrow")
    rows = out.take_all()
    assert set(COLUMNS) <= set(rows[0]) and {"pose", "pose_probability", "smile"} <= set(rows[0])
    prefix = str(root) + "/"
    for r in rows:  # relative names, as the folder CLI writes them
        assert r["file"].startswith(prefix) or r["file"].startswith(prefix.lstrip("/"))
        r["file"] = r["file"].rsplit("/", 1)[1]
    _check_against_aligner(rows, root)


def test_path_and_image_columns(ray_cluster, tmp_path):
    import numpy as np

    from tcdcn_ext.aligner import load_image
    from tcdcn_ext.integrations.ray import TCDCNPredictor

    root = _make_folder(tmp_path / "photos", n=2)
    paths = [str(root / "img_000.jpg"), str(root / "img_001.jpg")]
    predictor = TCDCNPredictor()  # the UDF in this process: the three input kinds give the same rows
    by_path = predictor({"path": np.array(paths)}).to_pylist()
    by_image = predictor({"image": [load_image(p) for p in paths], "path": np.array(paths)}).to_pylist()
    assert by_path == by_image and all(r["num_faces"] > 0 for r in by_path)
    with pytest.raises(KeyError, match="'bytes', 'image' or 'path'"):
        predictor({"pixels": np.zeros(1)})
