"""What the Aligner returns: :class:`Face` (box, score, landmarks, attributes) and :class:`Attribute`."""

from __future__ import annotations

from collections.abc import Callable

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models.landmarks import POSE_NAMES

__all__ = ["ATTRIBUTE_LABELS", "Attribute", "AttributeTable", "Face"]

#: Class names of the auxiliary tasks, in the model's class order (the staged data's 0-based codes).
ATTRIBUTE_LABELS: dict[str, tuple[str, ...]] = {
    "pose": tuple(POSE_NAMES),
    "gender": ("male", "female"),
    "glasses": ("no_glasses", "glasses"),
    "smile": ("not_smiling", "smiling"),
}


@dataclass(frozen=True)
class Attribute:
    """One auxiliary task's answer: the most likely ``label``, its ``probability`` and every class's probability."""

    label: str
    probability: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": self.probability, "probabilities": dict(self.probabilities)}


@dataclass(frozen=True, eq=False)
class Face:
    """A face: ``box`` ``(x0, y0, x1, y1)`` (the detector's box, or the box you gave), detector ``score`` in
    ``[0, 1]`` (1.0 for given boxes), ``landmarks`` float32 ``[P, 2]`` image pixels (read-only; 5-point order:
    :data:`tcdcn_ext.models.landmarks.LANDMARK_NAMES_5`) and ``attributes`` (pose, gender, glasses, smile; ``{}`` when
    the model has no auxiliary heads; for an Aligner's faces built on first read, so that a batch whose attributes are
    not looked at does not pay for them). Equality compares all fields (landmarks exactly)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    attributes: dict[str, Attribute] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Face):
            return NotImplemented
        return (self.box == other.box and self.score == other.score and self.attributes == other.attributes
                and np.array_equal(self.landmarks, other.landmarks))

    __hash__ = None  # type: ignore[assignment]  (holds an array)

    def __getattr__(self, name: str) -> Any:
        # Reached only for names missing from the instance: ``attributes`` of a Face made by an Aligner call is
        # built on first read, from the call's probability arrays (see AttributeTable).
        if name == "attributes":
            source = self.__dict__.get("_attribute_source")
            if source is not None:
                table, index = source
                value = self.__dict__.setdefault("attributes", table.attributes(index))
                self.__dict__.pop("_attribute_source", None)
                return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        # pickle / copy see the four fields, never the lazy source (which holds the whole call's probabilities)
        return {"box": self.box, "score": self.score, "landmarks": self.landmarks, "attributes": self.attributes}

    @classmethod
    def with_lazy_attributes(cls, box: tuple[float, float, float, float], score: float, landmarks: np.ndarray,
                   table: "AttributeTable", index: int) -> "Face":
        """The Aligner's constructor: fields set directly (the frozen dataclass ``__init__`` costs ~1.5 us a face)
        and ``attributes`` left to be built from ``table`` row ``index`` when first read."""
        face = object.__new__(cls)
        face.__dict__.update(box=box, score=score, landmarks=landmarks, _attribute_source=(table, index))
        return face

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: plain floats and lists."""
        return {
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "landmarks": [[float(x), float(y)] for x, y in self.landmarks.tolist()],
            "attributes": {k: a.to_dict() for k, a in self.attributes.items()},
        }


class AttributeTable:
    """The class probabilities ``{task: [F, C]}`` of one Aligner call, turned into :class:`Attribute` objects only
    for the faces whose ``attributes`` are read: building all of them (four frozen dataclasses and dicts per face)
    took ~6 us a face, a third of the batched forward pass."""

    __slots__ = ("_tasks", "_compute")

    def __init__(self, probs: dict[str, np.ndarray] | None = None,
                 compute: Callable[[], dict[str, np.ndarray]] | None = None) -> None:
        """``probs``, or ``compute``: a function giving them, called once, when the first face's attributes are
        read (the attribute network's pass over the call's faces runs only for calls whose attributes are used)."""
        self._tasks = None if probs is None else self._table(probs)
        self._compute = compute

    @staticmethod
    def _table(probs: dict[str, np.ndarray]) -> tuple:
        tasks = []
        for t, p in probs.items():
            names = ATTRIBUTE_LABELS.get(t)
            if names is None or len(names) != p.shape[1]:
                names = tuple(str(i) for i in range(p.shape[1]))
            tasks.append((t, names, p))
        return tuple(tasks)

    @property
    def tasks(self) -> tuple:
        if self._tasks is None:
            self._tasks = self._table(self._compute() if self._compute is not None else {})
            self._compute = None
        return self._tasks

    def attributes(self, index: int) -> dict[str, Attribute]:
        out = {}
        for t, names, p in self.tasks:
            row = p[index].astype(np.float64).tolist()  # plain Python floats
            j = int(p[index].argmax())
            out[t] = Attribute(label=names[j], probability=row[j], probabilities=dict(zip(names, row)))
        return out
