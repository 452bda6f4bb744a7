"""The module paths of the flat package (before ``ops/``, ``models/``, ``inference/``, ``training/``, ``util/``):
``import tcdcn_ext.model``, ``from tcdcn_ext.aligner import Aligner`` and the like keep working.

:data:`MOVED` says where each old module went. An old module whose contents went to one new module *is* that
module (``tcdcn_ext.model is tcdcn_ext.models.tcdcn``); one whose contents were split is a module that looks each
name up in the new modules, in order. New code imports the new paths; nothing in the package uses these.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

#: old module (under ``tcdcn_ext.``) -> the modules (under ``tcdcn_ext.``) its contents moved to.
MOVED: dict[str, tuple[str, ...]] = {
    "_reference": ("ops._reference",),
    "nn": ("ops.nn",),
    "quantize": ("ops.quantize",),
    "model": ("models.tcdcn", "models.weights", "models.plan", "models.cuda_graph"),
    "yunet": ("models.yunet",),
    "export": ("models.export",),  # (its main(): tcdcn_ext.cli.export_main)
    "aligner": ("inference.aligner", "inference.images", "inference.results", "inference.preprocess"),
    "averaging": ("inference.averaging",),
    "detect": ("inference.detector", "inference.boxes", "training.calibration"),
    "draw": ("inference.draw",),
    "folder_align": ("inference.folder_align",),
    "tracking": ("inference.tracking",),
    "data": ("training.datasets", "inference.preprocess", "inference.boxes", "training.augment", "models.landmarks"),
    "evaluate": ("training.evaluate", "training.reports"),
    "early_stopping": ("training.early_stopping",),
    "distributed": ("training.distributed",),
    "train": ("training.train",),  # (its main() and build_parser(): tcdcn_ext.cli.train_main, train_parser)
    "checkpoint": ("util.files",),
    "align_cli": ("cli",),  # (its main(): tcdcn_ext.cli.align_main)
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``tcdcn_ext.<old>`` for every old name in :data:`MOVED`."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package == __package__ and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # the default module object; exec_module fills or replaces it

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__.rpartition(".")[2]
        targets = [importlib.import_module(f"{__package__}.{t}") for t in MOVED[name]]
        if len(targets) == 1:
            sys.modules[module.__name__] = targets[0]  # the import system returns what sys.modules holds
            return
        module.__doc__ = f"Moved: the contents of {module.__name__} are now in " + ", ".join(
            t.__name__ for t in targets) + "."

        def __getattr__(attr: str):
            for t in targets:
                if hasattr(t, attr):
                    return getattr(t, attr)
            raise AttributeError(f"module {module.__name__!r} has no attribute {attr!r} (its contents moved to "
                                 + ", ".join(t.__name__ for t in targets) + ")")

        module.__getattr__ = __getattr__
        module.__all__ = [n for t in targets for n in getattr(t, "__all__", ())]


def install() -> None:
    """Put the finder of the old module paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
