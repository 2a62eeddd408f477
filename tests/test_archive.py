"""bonestream archive on a real local Ray (2 workers): short pieces of the shared sweep clip, a DICOM cine written
with pydicom, a corrupt file; a worker process killed mid-run; re-runs that must skip what is done."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import psutil
import pytest

from pipeline.archive.manifest import MANIFEST, Manifest
from pipeline.archive.replay import ClusterOptions, import_ray, ray_session
from pipeline.archive.report import SUMMARY
from pipeline.archive.worker import PARTIAL
from pipeline.cli import main
from pipeline.evaluate import RANDOM_WEIGHTS_NOTE
from pipeline.publish.files import VideoWriter
from test_sources import write_dicom

REPO = Path(__file__).resolve().parents[1]
PIECES = {"ward_a/p1.mp4": (0, 4), "ward_a/p2.mp4": (4, 8), "ward_b/long.mp4": (8, 24)}  # frames [start, stop) of the clip
CINE = ("ward_b/IM_0001", (24, 27))  # DICOM without a suffix: found by its DICM marker


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for the module, started by the command's own code; each run uses it (startup is slow)."""
    if importlib.util.find_spec("ray") is None:  # not imported here: import_ray sets the token mode before Ray loads
        pytest.skip("Ray is not installed (the [archive] extra)")
    ray = import_ray()
    with ray_session(ray, ClusterOptions(workers=2)):
        yield ray


@pytest.fixture(scope="module")
def exams(local_ray, tmp_path_factory, ultrabones, make_segmenter) -> dict[str, Path]:
    """exams/ with three MP4 pieces and a DICOM cine; broken/ with a truncated MP4; a random-weights reference. Frames
    are the clip's at half size (476x406), so masks and overlays cost a quarter."""
    root = tmp_path_factory.mktemp("archive")
    with av.open(str(ultrabones / "sweep_clip_frames150-889_20fps.mp4")) as clip:
        frames = [cv2.resize(f.to_ndarray(format="gray"), (476, 406), interpolation=cv2.INTER_AREA)
                  for _, f in zip(range(CINE[1][1]), clip.decode(video=0))]
    for name, (start, stop) in PIECES.items():
        with VideoWriter(root / "exams" / name, 20.0) as writer:
            for gray in frames[start:stop]:
                writer.write(np.repeat(gray[..., None], 3, axis=2))
    write_dicom(root / "exams" / CINE[0], np.stack(frames[CINE[1][0]:CINE[1][1]]), FrameTime=50.0)
    broken = root / "broken" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes((root / "exams" / "ward_a" / "p1.mp4").read_bytes()[:3000])
    reference = root / "ref.json"
    make_segmenter(frames[:3], input_size=(32, 40), k=3).reference.save(reference)
    return {"exams": root / "exams", "broken": root / "broken", "reference": reference}


def archive(exams: dict[str, Path], out: Path, *inputs: str) -> tuple[int, dict]:
    rc = main(["archive", *inputs, "--reference", str(exams["reference"]), "--out", str(out), "--workers", "2",
               "--weights", "random:0", "--no-progress"])
    return rc, json.loads((out / SUMMARY).read_text())


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def expected_frames() -> dict[str, int]:
    return {f"exams/{name}": stop - start for name, (start, stop) in [*PIECES.items(), CINE]}


def assert_complete(out: Path, key: str, frames: int) -> None:
    """An output folder as `bonestream segment` makes it, for exactly this recording's frames."""
    folder = out / key
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["frames"] == frames and summary["warning"].startswith("RANDOM WEIGHTS")
    assert len(list((folder / "masks").glob("*.png"))) == frames
    overlay = next(folder.glob("*_overlay.mp4"))
    with av.open(str(overlay)) as video:
        assert sum(1 for _ in video.decode(video=0)) == frames
    record = json.loads((folder / "recording.json").read_text())
    assert record["key"] == key and record["frames"] == frames


def test_archive_processes_all_and_reports_the_corrupt_one(exams, tmp_path):
    out = tmp_path / "out"
    rc, summary = archive(exams, out, str(exams["exams"]), str(exams["broken"]))
    assert rc == 1  # a failure is reported in the exit code, after every other recording was done
    want = expected_frames()
    assert (summary["recordings"], summary["done"], summary["failed"], summary["skipped"], summary["workers"]) == (5, 4, 1, 0, 2)
    assert summary["frames"] == sum(want.values()) and summary["frames_per_s"] > 0
    assert summary["random_weights"] and summary["note"] == RANDOM_WEIGHTS_NOTE
    assert sum(w["frames"] for w in summary["per_worker"].values()) == summary["frames"]
    [failure] = summary["failures"]
    assert failure["key"] == "broken/broken.mp4" and "broken.mp4" in failure["error"] and "video" in failure["error"]
    for key, frames in want.items():
        assert_complete(out, key, frames)
    assert not (out / "broken").exists() and not any((out / PARTIAL).iterdir())
    lines = manifest(out)
    assert sorted(line["key"] for line in lines if line["status"] == "done") == sorted(want)
    assert all(len(line["sha256"]) == 64 and line["reference"] == summary["reference"] for line in lines)

    # a re-run skips what is done (no output touched) and tries the failed one again
    stamps = {key: (out / key / "recording.json").stat().st_mtime_ns for key in want}
    rc, again = archive(exams, out, str(exams["exams"]), str(exams["broken"]))
    assert rc == 1 and (again["skipped"], again["done"], again["failed"], again["workers"]) == (4, 0, 1, 1)
    assert {key: (out / key / "recording.json").stat().st_mtime_ns for key in want} == stamps
    assert len(manifest(out)) == len(lines) + 1

    # the same files found under another folder name are the same content: nothing to do, Ray not started
    moved = exams["exams"].parent / "moved"
    os.symlink(exams["exams"], moved)
    rc, third = archive(exams, out, str(moved))
    assert rc == 0 and (third["skipped"], third["done"], third["workers"], third["startup_s"]) == (4, 0, 0, 0)


def kill_one_busy_worker(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first worker process of this test's Ray seen processing a recording (Ray titles it so)."""
    me = psutil.Process()
    while not stop.is_set():
        for proc in me.children(recursive=True):
            try:
                title = proc.cmdline()
            except psutil.Error:
                continue
            if title and title[0].startswith("ray::ArchiveWorker.process"):
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
                return
        time.sleep(0.01)


def test_worker_killed_mid_run_then_every_recording_done_exactly_once(exams, tmp_path):
    out = tmp_path / "out"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_one_busy_worker, args=(killed, stop), daemon=True)
    killer.start()
    try:
        rc, first = archive(exams, out, str(exams["exams"]))
    finally:
        stop.set()
        killer.join(timeout=30)
    assert killed, "no worker was seen processing a recording"
    assert first["workers_lost"] >= 1 and first["retried_after_worker_loss"] + first["failed"] >= 1  # the loss was seen and handled
    rc, again = archive(exams, out, str(exams["exams"]))
    assert rc == 0 and again["failed"] == 0
    assert again["done"] + again["skipped"] == 4 and first["done"] + again["done"] == 4
    done = [line["key"] for line in manifest(out) if line["status"] == "done"]
    assert sorted(done) == sorted(expected_frames())  # one done line per recording: none twice, none missing
    for key, frames in expected_frames().items():
        assert_complete(out, key, frames)
    rc, third = archive(exams, out, str(exams["exams"]))
    assert rc == 0 and third["skipped"] == 4 and third["done"] == 0 and len(manifest(out)) == len(done) + first["failed"]


def test_torn_manifest_line_is_ignored_and_the_next_starts_a_new_line(tmp_path):
    (tmp_path / MANIFEST).write_text('{"key": "a", "status": "done", "sha256": "x", "reference": "r"}\n{"key": "b", "sta')
    m = Manifest.open(tmp_path)
    assert m.unreadable == 1 and len(m.lines) == 1
    m.append({"key": "c", "status": "failed"})
    assert [line["key"] for line in Manifest.open(tmp_path).lines] == ["a", "c"]
    assert m.done("x", "r") is None  # done in the manifest, but its folder does not hold that output


def test_bad_inputs_are_one_line_before_ray_starts(exams, tmp_path, capsys):
    note = tmp_path / "notes.txt"
    note.write_text("not a recording")
    base = ["archive", "--reference", str(exams["reference"]), "--out", str(tmp_path / "out"), "--weights", "random:0"]
    assert main([*base[:1], str(note), *base[1:]]) == 2
    assert "notes.txt: not a video" in capsys.readouterr().err
    assert main([*base[:1], str(tmp_path / "missing"), *base[1:]]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
    assert main(["archive", str(exams["exams"]), "--reference", str(exams["reference"]), "--out", str(tmp_path / "o"), "--weights", "random:7"]) == 2
    assert "calibrated with weights random:0" in capsys.readouterr().err  # other weights than the reference's: refused
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_without_ray_the_command_says_how_to_install_it(tmp_path):
    code = "import sys; sys.modules['ray'] = None; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "archive", str(tmp_path), "--reference", "r.json", "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "pip install 'bonestream[archive]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_workers_that_cannot_fit_or_start_are_one_line(exams, tmp_path, capsys):
    base = ["archive", str(exams["exams"]), "--reference", str(exams["reference"]), "--out", str(tmp_path / "out"),
            "--weights", "random:0", "--no-progress"]
    assert main([*base, "--workers", "3"]) == 2  # the module's Ray has 2 CPUs: a third actor would wait for ever
    assert "3 workers x 1 CPU need 3 CPUs, the Ray cluster has 2" in capsys.readouterr().err
    assert main([*base, "--device", "cuda", "--workers", "1"]) == 2
    assert "the Ray cluster has 0" in capsys.readouterr().err
    assert main([*base, "--workers", "1", "--backend", "tensorrt"]) == 2  # no CUDA here: the engine cannot be built
    err = capsys.readouterr().err.strip()
    assert err.startswith("bonestream archive: error: a worker could not start: ") and "tensorrt" in err.lower()
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_recordings_are_keyed_by_input_name_and_path_and_outputs_are_not_walked(exams, tmp_path):
    from pipeline.archive.recordings import ArchiveInputError, find_recordings

    out = exams["exams"] / "results"  # an output folder inside an input: its overlay videos are no recordings
    (out / "x").mkdir(parents=True, exist_ok=True)
    (out / "x" / "p1_overlay.mp4").write_bytes(b"")
    (exams["exams"] / "ward_a" / ".p1.mp4.partial").write_bytes(b"")
    try:
        keys = [r.key for r in find_recordings([exams["exams"], exams["broken"] / "broken.mp4"], out)]
    finally:
        (exams["exams"] / "ward_a" / ".p1.mp4.partial").unlink()
        shutil.rmtree(out)
    assert sorted(keys) == sorted([*expected_frames(), "broken.mp4"])
    twin = tmp_path / "elsewhere" / "exams"
    (twin / "ward_a").mkdir(parents=True)
    (twin / "ward_a" / "p1.mp4").write_bytes((exams["exams"] / "ward_a" / "p1.mp4").read_bytes())
    with pytest.raises(ArchiveInputError, match="would share the output folder exams/ward_a/p1.mp4"):
        find_recordings([exams["exams"], twin], tmp_path / "out")


def test_a_recording_one_row_taller_is_served_by_the_reuse_rule(exams, tmp_path):
    """Exams encoded with a padded row (406 -> 407) keep the calibrated imaging area: done, masks at their own
    size; a recording the area does not fit is refused with the rule's reason, alone."""
    with av.open(str(exams["exams"] / "ward_a" / "p1.mp4")) as clip:
        frames = [f.to_ndarray(format="gray") for f in clip.decode(video=0)]
    padded = tmp_path / "in" / "padded.avi"  # a lossless codec keeps the rows exact
    small = tmp_path / "in" / "small.avi"
    for path, images in ((padded, [np.pad(g, ((0, 1), (0, 0))) for g in frames]), (small, [g[:200, :200] for g in frames])):
        path.parent.mkdir(exist_ok=True)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("ffv1", rate=20)
            stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], "gray"
            for g in images:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(g, format="gray")))
            out.mux(stream.encode())
    rc, summary = archive(exams, tmp_path / "out", str(tmp_path / "in"))
    assert rc == 1 and summary["done"] == 1 and summary["failed"] == 1
    mask = next((tmp_path / "out" / "in" / "padded.avi").rglob("masks/*.png"))
    assert cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE).shape == (407, 476)
    (failure,) = summary["failures"]
    assert "small.avi" in failure["key"] and "does not fit" in failure["error"]


def test_an_address_nobody_answers_is_one_line_not_minutes_of_retries(exams, tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    args = ["archive", str(exams["exams"]), "--reference", str(exams["reference"]), "--out", str(tmp_path / "o"), "--address", f"127.0.0.1:{port}"]
    assert main(args) == 2
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers there" in capsys.readouterr().err


def test_the_local_ray_runs_with_token_authentication(local_ray):
    """Ray's ports listen on every interface: the local instance bonestream starts was started in token mode with a
    random token of its own (the other tests show it works in that mode; a client without the token is refused by
    Ray, which retries for minutes before saying so, too long for this suite)."""
    assert os.environ["RAY_AUTH_MODE"] == "token" and len(os.environ["RAY_AUTH_TOKEN"]) == 64
