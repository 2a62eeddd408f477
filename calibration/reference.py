"""The reference file: everything a calibration decided, as plain integrity-checked JSON.

No pickle: centroids are JSON numbers (a float32 written through float64 reads back bit-exact). A sha256 over
the canonical payload catches damage; format, version, geometry and weights are checked before any use.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from calibration.labelling import PatchLabeller
from models.errors import BonestreamError
from models.preprocess import Geometry
from models.weights import EMBED_DIM, PATCH
from pipeline.publish.files import write_json_atomic

FORMAT = "bonestream-reference"
VERSION = 1


class ReferenceError(BonestreamError):
    """A reference file that is missing, damaged, from another version, or does not fit the run."""


def _canonical(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _is_int(v: Any) -> bool:
    return type(v) is int  # not bool, not float: a hand edit that changes a type is refused, never cast


# field -> (check, what it must be): every payload field is required and typed; nothing is cast or defaulted
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "geometry": (lambda v: isinstance(v, dict), "an object"),
    "weights": (lambda v: isinstance(v, dict) and isinstance(v.get("label"), str) and isinstance(v.get("kind"), str),
                "an object with string 'label' and 'kind'"),
    "centroids": (lambda v: isinstance(v, list) and np.asarray(v).dtype.kind in "if", "a k x 384 list of numbers"),
    "foreground": (lambda v: isinstance(v, list) and all(map(_is_int, v)), "a list of integer cluster ids"),
    "votes": (lambda v: isinstance(v, list) and all(map(_is_int, v)), "a list of integers"),
    "required_votes": (_is_int, "an integer"),
    "mean_saliency": (lambda v: isinstance(v, list) and all(isinstance(r, list) for r in v), "a list of rows"),
    "cluster_sizes": (lambda v: isinstance(v, list) and all(map(_is_int, v)), "a list of integers"),
    "distance_stats": (lambda v: isinstance(v, list) and all(isinstance(d, dict) for d in v), "a list of objects"),
    "settings": (lambda v: isinstance(v, dict), "an object"),
    "frames": (lambda v: isinstance(v, list) and all(isinstance(f, str) for f in v), "a list of frame names"),
    "calibration_labels": (lambda v: isinstance(v, list) and np.asarray(v).dtype.kind == "i", "nested lists of integer cluster ids"),
    "versions": (lambda v: isinstance(v, dict), "an object"),
}
_GEOMETRY: dict[str, tuple[Callable[[Any], bool], str]] = {
    "frame_size": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_int, v)), "[height, width] integers"),
    "roi": (lambda v: isinstance(v, list) and len(v) == 4 and all(map(_is_int, v)), "[top, left, height, width] integers"),
    "input_size": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_int, v)), "[height, width] integers"),
    "stride": (_is_int, "an integer"),
    "resampling": (lambda v: isinstance(v, str), "a string"),
    "mean": (lambda v: isinstance(v, list) and all(type(x) in (int, float) for x in v), "a list of numbers"),
    "std": (lambda v: isinstance(v, list) and all(type(x) in (int, float) for x in v), "a list of numbers"),
    "patch": (_is_int, "an integer"),
}


def _schema_problem(payload: Mapping[str, Any]) -> str | None:
    """The first payload field that is missing or of the wrong type, named (before anything is built from it)."""
    for prefix, fields, doc in (("", _FIELDS, payload), ("geometry.", _GEOMETRY, payload.get("geometry"))):
        if not isinstance(doc, dict):
            return None  # reported as the parent field
        for name, (ok, what) in fields.items():
            if name not in doc:
                return f"field '{prefix}{name}' is missing"
            try:
                valid = ok(doc[name])
            except (TypeError, ValueError):  # ragged nested lists
                valid = False
            if not valid:
                return f"field '{prefix}{name}' must be {what}"
    return None


def _nan_to_none(table: np.ndarray) -> list:
    return [[None if math.isnan(v) else float(v) for v in row] for row in table.tolist()]


@dataclass
class Reference:
    """Calibrated centroids and bone votes, with the geometry and model identity they are only valid for."""

    geometry: Geometry
    weights: dict[str, Any]  # WeightsIdentity.to_dict()
    centroids: np.ndarray  # k x 384 float32
    foreground: tuple[int, ...]
    votes: list[int]
    required_votes: int
    mean_saliency: np.ndarray  # frames x k, NaN where absent
    cluster_sizes: list[int]
    distance_stats: list[dict[str, float]]  # per cluster: squared-distance percentiles of its members
    settings: dict[str, Any]
    frames: list[str]  # names of the reference frames, in order
    calibration_labels: np.ndarray  # frames x h x w cluster ids
    versions: dict[str, str] = field(default_factory=dict)
    calibrated_id: str | None = None  # set by at_frame_size: the file's id, kept when the geometry is fitted to a source

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def weights_label(self) -> str:
        return str(self.weights.get("label"))

    @property
    def is_random(self) -> bool:
        return self.weights.get("kind") == "random"

    def payload(self) -> dict[str, Any]:
        return {
            "geometry": self.geometry.to_dict(),
            "weights": dict(self.weights),
            "centroids": [[float(v) for v in row] for row in self.centroids.astype(np.float32)],
            "foreground": [int(c) for c in self.foreground],
            "votes": [int(v) for v in self.votes],
            "required_votes": int(self.required_votes),
            "mean_saliency": _nan_to_none(self.mean_saliency),
            "cluster_sizes": [int(v) for v in self.cluster_sizes],
            "distance_stats": self.distance_stats,
            "settings": self.settings,
            "frames": list(self.frames),
            "calibration_labels": self.calibration_labels.astype(int).tolist(),
            "versions": self.versions,
        }

    @property
    def id(self) -> str:
        """Short content hash naming this calibration in messages and reports."""
        return self.calibrated_id or hashlib.sha256(_canonical(self.payload())).hexdigest()[:16]

    def at_frame_size(self, size: tuple[int, int], where: str = "source") -> "Reference":
        """This calibration for a source whose frames are ``size`` (Geometry.at_frame_size states the rule); the
        centroids, labels and id are the same, only the frame the masks map back onto differs."""
        geometry = self.geometry.at_frame_size(size, where)
        return self if geometry is self.geometry else replace(self, geometry=geometry, calibrated_id=self.id)

    def weights_spec(self) -> str | None:
        """The ``--weights`` that gives the recorded weights: random weights from their seed, a checkpoint from the
        path it was calibrated with (its sha256 is checked on load), None (the official resolution) for official."""
        kind = self.weights.get("kind")
        if kind == "random":
            return self.weights_label
        if kind == "file":
            path = self.weights.get("path")
            if not (isinstance(path, str) and Path(path).is_file()):
                raise ReferenceError(
                    f"the reference was calibrated with the weights file {path} ({self.weights_label}), which is not "
                    "there; pass --weights PATH to that checkpoint"
                )
            return path
        return None

    def labeller(self, device: str | torch.device = "cpu") -> PatchLabeller:
        return PatchLabeller.build(self.centroids, self.foreground, device)

    def save(self, path: str | Path) -> None:
        payload = self.payload()
        write_json_atomic(
            Path(path),
            {"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(_canonical(payload)).hexdigest(), "payload": payload},
        )

    @classmethod
    def load(cls, path: str | Path) -> "Reference":
        path = Path(path)
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise ReferenceError(f"{path}: reference file not found (make one with `bonestream calibrate`)") from None
        except (OSError, ValueError) as exc:
            raise ReferenceError(f"{path}: not a readable reference file ({exc.__class__.__name__}: {exc}); it may be truncated") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ReferenceError(f"{path}: not a bonestream reference file (field 'format' is {doc.get('format') if isinstance(doc, dict) else None!r})")
        if doc.get("version") != VERSION:
            raise ReferenceError(f"{path}: reference format version {doc.get('version')!r}, this bonestream reads version {VERSION}; recalibrate")
        payload = doc.get("payload")
        try:
            digest = hashlib.sha256(_canonical(payload)).hexdigest() if isinstance(payload, dict) else None
        except ValueError:  # JSON read 1e999 as inf, which no reference holds
            raise ReferenceError(f"{path}: the payload holds a non-finite number; the file is damaged or was edited") from None
        if digest is None or digest != doc.get("sha256"):
            raise ReferenceError(f"{path}: integrity check failed (sha256 of the payload does not match); the file is damaged or was edited")
        if problem := _schema_problem(payload):
            raise ReferenceError(f"{path}: {problem}")
        try:
            centroids = np.asarray(payload["centroids"], dtype=np.float32)
            saliency = np.asarray([[np.nan if v is None else v for v in row] for row in payload["mean_saliency"]], dtype=np.float64)
            ref = cls(
                geometry=Geometry.from_dict(payload["geometry"]),
                weights=dict(payload["weights"]),
                centroids=centroids,
                foreground=tuple(int(c) for c in payload["foreground"]),
                votes=list(payload["votes"]),
                required_votes=int(payload["required_votes"]),
                mean_saliency=saliency.reshape(len(payload["frames"]), centroids.shape[0]),
                cluster_sizes=list(payload["cluster_sizes"]),
                distance_stats=list(payload["distance_stats"]),
                settings=dict(payload["settings"]),
                frames=list(payload["frames"]),
                calibration_labels=np.asarray(payload["calibration_labels"], dtype=np.int64),
                versions=dict(payload.get("versions", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReferenceError(f"{path}: reference payload is malformed ({exc.__class__.__name__}: {exc})") from None
        problem = ref.problem()
        if problem:
            raise ReferenceError(f"{path}: {problem}")
        return ref

    def problem(self) -> str | None:
        """The first field that makes this reference unusable, named, or None. Checked on load, before any model
        work: a hand-edited or foreign file must fail here, not as a shape error deep in an engine."""
        k = self.centroids.shape[0] if self.centroids.ndim == 2 else 0
        g = self.geometry
        grid = (len(self.frames), *g.grid)
        checks = (
            (len(g.mean) == len(g.std) == 3 and all(math.isfinite(v) for v in (*g.mean, *g.std)) and min(g.std) > 0,
             f"field 'geometry.std' {list(g.std)} / 'geometry.mean' {list(g.mean)}: three finite values each, std > 0"),
            (g.patch == PATCH, f"field 'geometry.patch' is {g.patch}, the model's patch is {PATCH}"),
            (self.centroids.ndim == 2 and self.centroids.shape[1] == EMBED_DIM and k >= 1,
             f"field 'centroids' has shape {self.centroids.shape}, expected k x {EMBED_DIM} (ViT-S/8 key dimension)"),
            (bool(np.isfinite(self.centroids).all()), "field 'centroids' holds a non-finite number"),
            (k >= 1 and bool(((norms := np.linalg.norm(self.centroids.astype(np.float64), axis=-1)) > 1e-6).all() and (norms <= 1 + 1e-4).all()),
             "field 'centroids': every centroid is a mean of unit keys, so its norm lies in (0, 1]"),
            (all(0 <= c < k for c in self.foreground) and len(set(self.foreground)) == len(self.foreground),
             f"field 'foreground' {list(self.foreground)} is not a set of cluster ids below k = {k}"),
            (len(self.votes) == k and len(self.cluster_sizes) == k and len(self.distance_stats) == k,
             f"fields 'votes', 'cluster_sizes', 'distance_stats' must have one entry per cluster (k = {k})"),
            (self.mean_saliency.shape == (len(self.frames), k), f"field 'mean_saliency' has shape {self.mean_saliency.shape}, expected {(len(self.frames), k)}"),
            (len(set(self.frames)) == len(self.frames) and len(self.frames) >= 1, "field 'frames' must name at least one frame, each once"),
            (self.calibration_labels.shape == grid and self.calibration_labels.size > 0 and 0 <= self.calibration_labels.min() and self.calibration_labels.max() < k,
             f"field 'calibration_labels' has shape {self.calibration_labels.shape}, expected {grid} with ids below k = {k}"),
        )
        return next((message for ok, message in checks if not ok), None)

    def check_weights(self, weights_label: str, where: str = "reference") -> None:
        """Keys from other weights live in another space: refuse to label them with these centroids."""
        if weights_label != self.weights_label:
            raise ReferenceError(
                f"{where}: calibrated with weights {self.weights_label} but the model has {weights_label}; "
                "recalibrate or pass the matching --weights"
            )
