"""The stage runner: lock-step replay loses nothing; live keeps the newest and counts every drop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from pipeline.capture.frame import Frame, Source, now_ns
from pipeline.capture.phantom import Phantom, PhantomConfig
from pipeline.capture.synthetic import PhantomSource
from pipeline.handoff import Handoff
from pipeline.latency import LatencyLog, latency_report, write_latency_report
from pipeline.publish.outputs import MaskFiles
from pipeline.run import Pipeline, Result, RunConfig


class Collect:
    name = "collect"
    overlay = "raw"
    lossless = True

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.results: list[Result] = []
        self.closed = False

    def write(self, result: Result) -> None:
        time.sleep(self.delay_s)
        self.results.append(result)

    def close(self) -> None:
        self.closed = True


CONFIG = PhantomConfig(height=96, width=128, n_frames=40)


@pytest.fixture(scope="module")
def segmenter(make_segmenter):
    ph = Phantom(CONFIG)
    return make_segmenter([ph.frame(i)[0] for i in (0, 20, 39)])


def test_handoff_policies() -> None:
    live = Handoff("x", 2, drop_oldest=True)
    for i in range(5):
        live.put(i)
    assert live.dropped.tolist() == [0, 1, 2] and [live.get(), live.get()] == [3, 4]
    replay = Handoff("y", 1, drop_oldest=False)
    replay.put(1)
    assert replay.get(0) == 1
    with pytest.raises(TimeoutError):
        replay.get(0.01)


def test_replay_processes_every_frame_in_order(segmenter, tmp_path: Path) -> None:
    out = Collect()
    summary = Pipeline(PhantomSource(CONFIG), segmenter, [out, MaskFiles(tmp_path / "masks")], RunConfig(batch_size=3)).run()
    assert [r.frame.id for r in out.results] == list(range(40))
    assert summary.read == summary.processed == summary.published == 40 and not summary.failed
    assert summary.dropped == {} and out.closed
    assert len(list((tmp_path / "masks").glob("*.png"))) == 40
    r = out.results[5]
    assert r.stamps["captured"] <= r.stamps["inferred"] <= r.stamps["labelled"] <= r.stamps["published"]
    assert r.prediction.overlay.shape == (96, 128, 3) and r.prediction.mask.shape == (96, 128)
    assert summary.outputs == {"collect": {"written": 40, "dropped": 0, "failed": 0}, "masks": {"written": 40, "dropped": 0, "failed": 0}}


def test_live_keeps_newest_and_counts_drops(segmenter) -> None:
    out = Collect(delay_s=0.02)  # a slow consumer behind a fast source
    summary = Pipeline(PhantomSource(CONFIG), segmenter, [out], RunConfig(live=True, queue_size=1)).run()
    ids = [r.frame.id for r in out.results]
    assert ids == sorted(set(ids)) and ids[-1] == 39  # newest kept, order kept
    dropped = sum(summary.dropped.values())
    assert dropped > 0 and summary.read == 40
    assert summary.processed + dropped + len(summary.failed) == summary.read
    all_ids = sorted(ids + [i for v in summary.dropped_ids.values() for i in v])
    assert all_ids == list(range(40))  # every frame accounted for by id


class OddFrames(Source):
    """Frames of the calibrated size, except frame 3 which has another size."""

    name = "odd"

    def __iter__(self) -> Iterator[Frame]:
        ph = Phantom(CONFIG)
        for i in range(6):
            image = ph.frame(i)[0]
            if i == 3:
                image = cv2.resize(image, (100, 80))
            yield Frame(i, image, f"odd_{i}", i / 20, now_ns())


def test_a_bad_frame_fails_alone(segmenter) -> None:
    out = Collect()
    summary = Pipeline(OddFrames(), segmenter, [out], RunConfig()).run()
    assert [r.frame.id for r in out.results] == [0, 1, 2, 4, 5]
    assert len(summary.failed) == 1 and summary.failed[0]["id"] == 3 and "size 100x80" in summary.failed[0]["error"]
    assert summary.failed[0]["stage"] == "preprocess"


def test_stop_mid_run_drains_what_was_read(segmenter) -> None:
    out = Collect()
    pipeline = Pipeline(PhantomSource(CONFIG), segmenter, [out], RunConfig())
    pipeline.on_result = lambda r: pipeline.stop() if r.frame.id == 5 else None
    summary = pipeline.run()
    assert summary.interrupted and 6 <= summary.read < 40
    assert [r.frame.id for r in out.results] == list(range(summary.read))  # nothing read was lost


def test_latency_report_json_and_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    log = LatencyLog(capacity=16)  # grows past its first capacity
    for i in range(60):
        t0 = i * 50_000_000
        inferred = t0 + int(rng.uniform(5, 9) * 1e6)
        log.add({"captured": t0, "inferred": inferred, "labelled": inferred + 1_000_000, "published": inferred + 1_500_000}, 6.0)
    report = latency_report(log, meta={"device": "test"})
    e2e = report["stages"]["end to end (captured -> published)"]
    assert report["frames_measured"] == 40 and e2e["count"] == 40
    assert 6.5 <= e2e["p50"] <= 10.5 and e2e["p99"] <= e2e["max"] and e2e["tail"] == pytest.approx(e2e["max"] - e2e["p95"])
    assert {"avg", "p90", "p95", "p99", "p99.9", "std", "flatness"} <= set(e2e)
    assert report["pipeline_overhead_ms"]["p50"] == pytest.approx(e2e["p50"] - 6.0)
    json_path, png_path = write_latency_report(report, log, tmp_path)
    assert json.loads(json_path.read_text())["device"] == "test"
    image = cv2.imread(str(png_path))
    assert image is not None and image.shape[0] > 200


def test_id_ranges_name_every_id() -> None:
    from pipeline.run import id_ranges

    assert id_ranges([3, 4, 5, 9, 11, 12]) == "3-5,9,11-12" and id_ranges([7]) == "7" and id_ranges([]) == ""
