"""Clustering, voting and the calibrate-once / label-every-frame contract."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from calibration.calibrate import PRESETS, CalibrationSettings, calibrate, extract
from calibration.clustering import KMeansSettings, cluster, l2_normalize
from calibration.labelling import PatchLabeller
from calibration.voting import VoteSettings, required_votes, vote
from models.preprocess import Geometry
from pipeline.capture.phantom import Phantom, PhantomConfig
from pipeline.infer.backend import TorchBackend
from pipeline.infer.deployment import Deployment
from pipeline.segment.segmenter import BoneSegmenter


@pytest.mark.parametrize(("n", "fraction", "needed"), [(2, 0.65, 2), (3, 0.65, 2), (5, 0.65, 4), (10, 0.65, 7), (20, 0.65, 13), (3, 0.75, 3), (5, 0.75, 4), (10, 0.75, 8)])
def test_required_votes(n: int, fraction: float, needed: int) -> None:
    assert required_votes(n, fraction) == needed


def test_vote_on_planted_saliency() -> None:
    # 5 frames, 4 patches each, 3 clusters. Cluster 0 salient in 4 frames, cluster 1 in 3, cluster 2 never present in 2 frames.
    labels = [np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1])]
    sal = [
        np.array([0.9, 0.5, 0.3, 0.0]),  # c0 mean .7, c1 .3, c2 0
        np.array([0.2, 0.25, 0.15, 0.0]),  # c0 .2 (== tau), c1 .2, c2 0
        np.array([0.8, 0.0, 0.1, 0.1]),  # c0 .8, c1 0, c2 .1
        np.array([0.6, 0.3, 0.3, 0.3]),  # c0 .6, c1 .3, c2 absent
        np.array([0.05, 0.05, 0.4, 0.4]),  # c0 .05, c1 .4, c2 absent
    ]
    study = vote(labels, sal, 3, VoteSettings(tau=0.2, fraction=0.65))
    assert study.required == 4
    assert study.votes.tolist() == [4, 4, 0]  # ">=" counts the frame at exactly tau
    assert study.foreground.tolist() == [0, 1]
    assert np.isnan(study.mean_saliency[3, 2]) and np.isnan(study.mean_saliency[4, 2])
    strict = vote(labels, sal, 3, VoteSettings(tau=0.2, fraction=0.65, strict=True))
    assert strict.votes.tolist() == [3, 3, 0] and strict.foreground.tolist() == []


def test_cluster_recovers_planted_blobs_and_elbow_stops() -> None:
    rng = np.random.default_rng(0)
    centres = l2_normalize(rng.normal(size=(3, 384)))
    per_image = [np.repeat(centres, 40, axis=0) + rng.normal(scale=0.01, size=(120, 384)) for _ in range(3)]
    result = cluster([p.astype(np.float32) for p in per_image], KMeansSettings(sample_interval=2))
    # k=3 captures the blobs; k=4 gains < 2.5 % and triggers the stop, and the original keeps the triggering k
    assert result.k == 4 and result.chosen_by.startswith("elbow")
    assert [k for k, _ in result.curve] == [1, 2, 3, 4]
    truth = np.tile(np.repeat(np.arange(3), 40), 3)
    for c in range(result.k):  # no cluster mixes two planted blobs
        assert len(set(truth[result.labels == c])) == 1
    fixed = cluster([p.astype(np.float32) for p in per_image], KMeansSettings(k=2, sample_interval=2))
    assert fixed.k == 2 and fixed.chosen_by == "fixed"


def test_labeller_margin_sign_and_bounds() -> None:
    centroids = torch.eye(4, 8)
    labeller = PatchLabeller(centroids, torch.tensor([False, True, False, False]))
    keys = torch.stack([torch.eye(8)[1] * 3, torch.eye(8)[2], torch.eye(8)[1] + 0.9 * torch.eye(8)[0]])
    labels, fg, margin = labeller(keys)
    assert labels.tolist() == [1, 2, 1] and fg.tolist() == [True, False, True]
    assert margin[0] > 0 and margin[1] < 0 and 0 < margin[2] < margin[0]
    none = PatchLabeller(centroids, torch.zeros(4, dtype=torch.bool))(keys)[2]
    assert torch.all(none < 0) and torch.all(none >= -4)


@pytest.fixture(scope="module")
def phantom_frames() -> tuple[list[np.ndarray], list[str]]:
    ph = Phantom(PhantomConfig(height=96, width=128, n_frames=40))
    idx = [0, 10, 20, 30]
    return [ph.frame(i)[0] for i in idx], [f"phantom_{i:05d}" for i in idx]


@pytest.fixture(scope="module")
def small_reference(model, random_identity, phantom_frames):
    images, names = phantom_frames
    geometry = Geometry.fit(images[0].shape, input_size=(48, 64))
    settings = CalibrationSettings(kmeans=KMeansSettings(sample_interval=3))
    return calibrate(model, random_identity, geometry, images, names, settings, progress=False)


def test_calibrate_then_label_reproduces_transductive_labels(model, random_identity, phantom_frames, small_reference) -> None:
    images, names = phantom_frames
    ref = small_reference
    assert ref.frames == names and ref.calibration_labels.shape == (4, 6, 8)
    assert ref.weights["label"] == "random:0"
    # Runtime path: fresh preprocessing + backend on the same frames -> identical labels and bone flags
    seg = BoneSegmenter(ref, TorchBackend(Deployment.from_reference(model, random_identity.label, ref)), random_identity)
    predictions = seg.predict(images, names)
    fg_expected = np.isin(ref.calibration_labels, ref.foreground)
    for pred, expected in zip(predictions, fg_expected):
        np.testing.assert_array_equal(pred.patch_mask, expected)
        assert np.all((pred.margin > 0) == expected)
    keys, _, _ = extract(model, ref.geometry, images, names, attention=False, progress=False)
    labels = ref.labeller()(torch.from_numpy(keys))[0].numpy()
    np.testing.assert_array_equal(labels, ref.calibration_labels)
    # and the labels agree with faiss's own nearest-centroid search (the original's assignment)
    index = faiss.IndexFlatL2(384)
    index.add(ref.centroids)
    _, faiss_labels = index.search(l2_normalize(keys.reshape(-1, 384)), 1)
    assert np.mean(faiss_labels.ravel() == labels.ravel()) >= 0.999


def test_vote_table_is_consistent_with_labels(small_reference) -> None:
    ref = small_reference
    assert len(ref.votes) == ref.k and ref.mean_saliency.shape == (4, ref.k)
    assert sum(ref.cluster_sizes) == ref.calibration_labels.size
    assert set(ref.foreground) == {c for c in range(ref.k) if ref.votes[c] >= ref.required_votes}
    assert ref.settings["preset"] == "study" and ref.settings["voting"]["tau"] == 0.2


def test_original_preset_uses_lowres_saliency(model, random_identity, phantom_frames) -> None:
    images, names = phantom_frames
    geometry = Geometry.fit(images[0].shape, input_size=(32, 48), stride=4)
    preset = PRESETS["original"]
    settings = CalibrationSettings(kmeans=KMeansSettings(k=3, sample_interval=5), voting=preset.voting, heads=preset.heads, lowres_saliency=True, preset="original")
    ref = calibrate(model, random_identity, geometry, images, names, settings, progress=False)
    assert ref.calibration_labels.shape == (4, 7, 11) and ref.k == 3
    assert ref.required_votes == 3 and list(ref.settings["heads"]) == [0, 2, 4, 5]
