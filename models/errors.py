"""The one error family users see: a problem with their input or configuration, printed without a traceback."""


class BonestreamError(ValueError):
    """An input, file or configuration problem the user can fix; the message names the file, frame or field."""


class FrameError(BonestreamError):
    """A frame that cannot be processed as it is (wrong size, dtype, channels)."""


class FrameSizeError(FrameError):
    """A frame of another size than the calibrated geometry: every frame of its source will be the same."""
