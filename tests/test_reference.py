"""Reference files: exact round trip, and a clear error for every way one can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.calibrate import calibrate
from calibration.calibrate import CalibrationSettings
from calibration.clustering import KMeansSettings
from calibration.reference import Reference, ReferenceError
from models.errors import FrameError
from models.preprocess import Geometry
from pipeline.capture.phantom import Phantom, PhantomConfig
from pipeline.segment.segmenter import BoneSegmenter


@pytest.fixture(scope="module")
def reference(model, random_identity) -> Reference:
    ph = Phantom(PhantomConfig(height=80, width=96, n_frames=10))
    images = [ph.frame(i)[0] for i in (0, 5, 9)]
    geometry = Geometry.fit(images[0].shape, input_size=(40, 48))
    return calibrate(model, random_identity, geometry, images, ["a", "b", "c"], CalibrationSettings(kmeans=KMeansSettings(sample_interval=2)), progress=False)


def test_round_trip_is_exact(reference: Reference, tmp_path: Path) -> None:
    path = tmp_path / "ref.json"
    reference.save(path)
    loaded = Reference.load(path)
    assert loaded.id == reference.id
    np.testing.assert_array_equal(loaded.centroids, reference.centroids)  # float32 bit-exact through JSON
    assert loaded.centroids.dtype == np.float32
    assert loaded.geometry == reference.geometry and loaded.foreground == reference.foreground
    np.testing.assert_array_equal(loaded.calibration_labels, reference.calibration_labels)
    np.testing.assert_array_equal(np.isnan(loaded.mean_saliency), np.isnan(reference.mean_saliency))
    doc = json.loads(path.read_text())
    assert doc["format"] == "bonestream-reference" and doc["payload"]["weights"]["kind"] == "random"
    assert b"pickle" not in path.read_bytes()
    assert not list(tmp_path.glob(".*partial"))


def _saved(reference: Reference, tmp_path: Path) -> tuple[Path, dict]:
    path = tmp_path / "ref.json"
    reference.save(path)
    return path, json.loads(path.read_text())


def test_tampered_payload_fails_integrity(reference: Reference, tmp_path: Path) -> None:
    path, doc = _saved(reference, tmp_path)
    doc["payload"]["foreground"] = [0]
    path.write_text(json.dumps(doc))
    with pytest.raises(ReferenceError, match="integrity check failed"):
        Reference.load(path)


def test_truncated_and_foreign_files(reference: Reference, tmp_path: Path) -> None:
    path, _ = _saved(reference, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReferenceError, match="truncated"):
        Reference.load(path)
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ReferenceError, match="not a bonestream reference"):
        Reference.load(path)
    with pytest.raises(ReferenceError, match="not found"):
        Reference.load(tmp_path / "missing.json")


def test_other_version_is_refused(reference: Reference, tmp_path: Path) -> None:
    path, doc = _saved(reference, tmp_path)
    doc["version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(ReferenceError, match="version 99"):
        Reference.load(path)


def test_other_weights_are_refused(reference: Reference) -> None:
    with pytest.raises(ReferenceError, match="random:0 but the model has random:1"):
        BoneSegmenter.create(reference, "random:1", progress=False)


def test_frames_of_another_geometry_are_refused(reference: Reference) -> None:
    seg = BoneSegmenter.create(reference, "random:0", progress=False)
    with pytest.raises(FrameError, match="clip frame 3: size 100x80"):
        seg.predict([np.zeros((80, 100), np.uint8)], ["clip frame 3"])


def _resigned(path: Path, doc: dict) -> None:
    """An edited file with a valid checksum: what a careless tool (or person) might write."""
    import hashlib

    from calibration.reference import _canonical

    doc["sha256"] = hashlib.sha256(_canonical(doc["payload"])).hexdigest()
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda p: p.update(centroids=[row[:383] for row in p["centroids"]]), "field 'centroids' has shape"),
        (lambda p: p.update(foreground=[99]), "field 'foreground' [99]"),
        (lambda p: p.update(foreground=[0, 0]), "field 'foreground' [0, 0]"),
        (lambda p: p["geometry"].update(std=[0.0, 0.224, 0.225]), "std > 0"),
        (lambda p: p.update(calibration_labels=p["calibration_labels"][:2]), "field 'calibration_labels' has shape"),
        (lambda p: p.update(votes=p["votes"][:-1]), "one entry per cluster"),
        (lambda p: p["geometry"].update(patch=16), "field 'geometry.patch' is 16"),
        # types are checked, never cast; nothing is defaulted
        (lambda p: p.update(foreground=["0"]), "field 'foreground' must be a list of integer cluster ids"),
        (lambda p: p.update(foreground=[0.7]), "field 'foreground' must be"),
        (lambda p: p.update(foreground=[True]), "field 'foreground' must be"),
        (lambda p: p.update(calibration_labels=[[[float(v) for v in row] for row in f] for f in p["calibration_labels"]]),
         "field 'calibration_labels' must be nested lists of integer cluster ids"),
        (lambda p: p["geometry"].pop("stride"), "field 'geometry.stride' is missing"),
        (lambda p: p["geometry"].update(frame_size="64x80"), "field 'geometry.frame_size' must be [height, width] integers"),
        (lambda p: p.update(frames=list(range(len(p["frames"])))), "field 'frames' must be a list of frame names"),
        (lambda p: p.update(settings=[]), "field 'settings' must be an object"),
        (lambda p: p.update(weights=["random:0"]), "field 'weights' must be an object"),
        (lambda p: p.update(centroids=[["x"] * 384 for _ in p["centroids"]]), "field 'centroids' must be a k x 384 list of numbers"),
        (lambda p: p.update(centroids=[[0.0] * 384 for _ in p["centroids"]]), "its norm lies in (0, 1]"),
        (lambda p: p.pop("votes"), "field 'votes' is missing"),
    ],
)
def test_every_field_is_validated_on_load(reference: Reference, tmp_path: Path, edit, needle: str) -> None:
    path, doc = _saved(reference, tmp_path)
    edit(doc["payload"])
    _resigned(path, doc)
    with pytest.raises(ReferenceError, match=None) as error:
        Reference.load(path)
    assert needle in str(error.value) and str(path) in str(error.value)


def test_a_non_finite_number_is_a_clear_error(reference: Reference, tmp_path: Path) -> None:
    path, _ = _saved(reference, tmp_path)
    text = path.read_text()
    first = json.loads(text)["payload"]["centroids"][0][0]
    path.write_text(text.replace(repr(first), "1e999", 1))  # JSON reads it as inf
    with pytest.raises(ReferenceError, match="non-finite"):
        Reference.load(path)
