"""The streams of a run: sources on the command line or a TOML file listing them, each with a unique stream id.

    [[stream]]
    source = "left.mp4"          # required: anything `run` takes as SOURCE (relative to this file's folder)
    id = "left"                  # default: the source's stem, made unique (phantom, phantom-2, ...)
    reference = "left-ref.json"  # default: --reference
    pace = "realtime"            # realtime, max or frames per second (default: --pace)
    fps = 20                     # image folders and the phantom (default: --fps)
    live = true                  # keep the newest frame, count drops (default: the source decides, or --live/--replay)
    loop = false                 # default: --loop

Every field is checked when the file is read, before any model loads; a bad one is one line naming the file, the
stream and the field.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

from typing import TYPE_CHECKING

from models.errors import BonestreamError
from pipeline.commands.numbers import FPS, POSITIVE

if TYPE_CHECKING:
    from pipeline.capture.frame import Source

MAX_STREAMS = 64  # what one `bonestream record` takes
INDEX = "streams.json"  # the run's index beside the streams' report folders: no stream may be named so


class SourcesFileError(BonestreamError):
    """A sources file that cannot be read or has a bad field."""


@dataclass(frozen=True)
class StreamSpec:
    """One stream as asked for: where its frames come from, its id, reference and pacing."""

    source: str
    id: str | None = None
    reference: str | None = None
    pace: str | float = "max"
    fps: float = 20.0
    live: bool | None = None
    loop: bool = False


def parse_pace(text: str) -> str | float:
    """realtime, max or frames per second (> 0): the argparse type of --pace."""
    if text in ("realtime", "max"):
        return text
    try:
        return POSITIVE(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: realtime, max or frames per second (> 0)") from None


def open_stream(spec: StreamSpec) -> Source:
    """The spec's source, played as the spec asks (see played)."""
    from pipeline.capture.open import open_source

    return played(open_source(spec.source, fps=spec.fps), spec)


def played(source: Source, spec: StreamSpec) -> Source:
    """``source`` as a stream plays it: as a device (``live``: real time, newest frame kept, drops counted), or
    replayed at ``pace``; looped with ``loop``. A device runs at its own rate. The one place for this order."""
    from pipeline.capture.open import as_live
    from pipeline.capture.pacing import paced

    source = as_live(source, spec.live, loop=spec.loop)
    if not source.live and (spec.pace != "max" or spec.loop):
        source = paced(source, spec.pace, loop=spec.loop)
    return source


def default_id(source: str) -> str:
    """A stream id from what the user typed: the file's stem, ``phantom``, ``video0``; characters a stream id may
    not hold become ``_``."""
    from pipeline.capture.live import is_device

    text = source.partition(":")[0] if source.startswith("phantom") else source
    stem = Path(text.rstrip("/")).stem if not is_device(text) or text.startswith("/dev/") else ("camera" if "!" in text else f"video{text}")
    sid = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-")[:60]  # it names output folders: never "." or ".."
    return sid if sid and sid != INDEX else "stream"


def with_ids(specs: Sequence[StreamSpec]) -> list[StreamSpec]:
    """Every spec with its id: given ids are kept (read_sources_file checked them), others come from the source's
    stem, a repeated one numbered (``phantom``, ``phantom-2``) so that topics and output folders never collide."""
    taken = {s.id for s in specs if s.id is not None}
    out = []
    for spec in specs:
        if spec.id is None:
            base = sid = default_id(spec.source)
            n = 1
            while sid in taken:
                n += 1
                sid = f"{base}-{n}"
            taken.add(sid)
            spec = replace(spec, id=sid)
        out.append(spec)
    if len(out) > MAX_STREAMS:
        raise BonestreamError(f"{len(out)} streams: at most {MAX_STREAMS} in one run")
    return out


_TYPES = {"source": str, "id": str, "reference": str, "pace": (str, int, float), "fps": (int, float), "live": bool, "loop": bool}


def _field(where: str, name: str, value: Any) -> Any:
    from pipeline.publish.message import STREAM_ID

    if not isinstance(value, _TYPES[name]) or (isinstance(value, bool) and _TYPES[name] is not bool):
        raise SourcesFileError(f"{where}: field {name!r} has the wrong type ({type(value).__name__})")
    try:
        if name == "pace":
            return parse_pace(str(value))
        if name == "fps":
            return FPS(str(value))
    except argparse.ArgumentTypeError as exc:
        raise SourcesFileError(f"{where}: field {name!r}: {exc}") from None
    if name in ("source", "id", "reference") and not value.strip():
        raise SourcesFileError(f"{where}: field {name!r} is empty")
    if name == "id" and not (STREAM_ID.fullmatch(value) and value[0].isalnum() and value != INDEX):
        raise SourcesFileError(f"{where}: field 'id' {value!r}: use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit (it names output folders), not {INDEX}")
    return value


def _local(folder: Path, spec: str) -> str:
    """Paths in the file are relative to its folder; the phantom, devices and URLs (``igtl://``) are not paths."""
    from pipeline.capture.live import is_device

    if spec.startswith("phantom") or "://" in spec or (is_device(spec) and not spec.startswith("/")) or Path(spec).is_absolute():
        return spec
    return str(folder / spec)


def read_sources_file(path: Path, defaults: StreamSpec) -> list[StreamSpec]:
    """The ``[[stream]]`` entries of a TOML file, each field checked; unset fields take ``defaults``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, as the tomli package (setup.cfg)
        import tomli as tomllib
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SourcesFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SourcesFileError(f"{path}: not valid TOML: {exc}") from None
    extra = set(doc) - {"stream"}
    if extra:
        raise SourcesFileError(f"{path}: unknown table or key {sorted(extra)[0]!r} (only [[stream]] entries)")
    entries = doc.get("stream")
    if not isinstance(entries, list) or not entries:
        raise SourcesFileError(f"{path}: no [[stream]] entries")
    known = {f.name for f in fields(StreamSpec)}
    specs = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise SourcesFileError(f"{path}: stream {i} is not a table (write each stream as a [[stream]] entry)")
        where = f"{path}: stream {i}" + (f" ({entry['id']})" if isinstance(entry.get("id"), str) else "")
        unknown = set(entry) - known
        if unknown:
            raise SourcesFileError(f"{where}: unknown field {sorted(unknown)[0]!r} (fields: {', '.join(_TYPES)})")
        if "source" not in entry:
            raise SourcesFileError(f"{where}: field 'source' is missing")
        values = {name: _field(where, name, value) for name, value in entry.items()}
        values["source"] = _local(Path(path).parent, values["source"])
        if "reference" in values:
            values["reference"] = _local(Path(path).parent, values["reference"])
        specs.append(replace(defaults, **values))
    ids = [s.id for s in specs if s.id is not None]
    twice = next((sid for sid in ids if ids.count(sid) > 1), None)
    if twice is not None:
        raise SourcesFileError(f"{path}: stream id {twice!r} is given to two streams")
    missing = next((i for i, s in enumerate(specs, 1) if s.reference is None), None)
    if missing is not None:
        raise SourcesFileError(f"{path}: stream {missing} has no 'reference' and no --reference was given")
    return specs
