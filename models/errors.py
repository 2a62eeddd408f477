"""The one error family users see: a problem with their input or configuration, printed without a traceback."""

import errno


class BonestreamError(ValueError):
    """An input, file or configuration problem the user can fix; the message names the file, frame or field."""


class FrameError(BonestreamError):
    """A frame that cannot be processed as it is (wrong size, dtype, channels)."""


class FrameSizeError(FrameError):
    """A frame of another size than the calibrated geometry: every frame of its source will be the same."""


NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # full disk, quota, file size limit


def no_room(exc: BaseException) -> bool:
    """True for a write the file system refused for lack of room: retrying the next frame would fail the same way."""
    return isinstance(exc, OSError) and exc.errno in NO_ROOM
