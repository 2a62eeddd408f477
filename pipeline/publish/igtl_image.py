"""OpenIGTLink IMAGE messages as bonestream sends and reads them (pyigtl), with one geometry convention.

3D Slicer (OpenIGTLinkIO) takes an IMAGE's matrix as IJK->RAS whatever its coordinate field says, so bonestream
states RAS and chooses the matrix for Slicer: IJK->RAS = diag(-column spacing, -row spacing, 1 mm). Column index i
then runs to the patient's left and row index j to posterior, which Slicer's axial (Red) slice view draws left to
right and top to bottom: the frame appears upright and unmirrored, as on the scanner. The origin (IJK 0,0,0, the
centre of the top-left pixel) is RAS (0, 0, 0); on the wire OpenIGTLink carries the image centre instead, which pyigtl
derives from the matrix. A frame is one slice (k = 1). The Image and its Prediction share dims and matrix, so the
label map lies exactly on the frame.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pyigtl

# Header version 1: the 58-byte header and the plain body, which every OpenIGTLink library reads (the C library 1.x and 2.x that
# older PLUS builds and Slicer 4 use take a version-2 message as one of an empty type); 2: OpenIGTLink 3's extended
# header with the message id and metadata (frame id, stream, clocks), for readers of OpenIGTLink 3 (Slicer 5, PLUS 2.8+)
DEFAULT_HEADER_VERSION = 1


def ijk_to_ras(spacing_mm: tuple[float, float]) -> np.ndarray:
    """The 4x4 IJK->RAS matrix of a frame with (row, column) ``spacing_mm``: see the module docstring."""
    row, col = spacing_mm
    return np.diag([-col, -row, 1.0, 1.0])


def image_message(
    pixels: np.ndarray, device: str, spacing_mm: tuple[float, float], timestamp_s: float, message_id: int,
    metadata: Mapping[str, str], header_version: int = DEFAULT_HEADER_VERSION,
) -> bytes:
    """One IMAGE message, packed: ``pixels`` an H x W uint8 plane, ``timestamp_s`` seconds since 1970 (UTC); the
    message id and ``metadata`` travel with header version 2 only (version 1 has no place for them)."""
    message = pyigtl.ImageMessage(
        pixels[np.newaxis], ijk_to_world_matrix=ijk_to_ras(spacing_mm), world_coordinate_system="ras",
        timestamp=timestamp_s, device_name=device,
    )
    message.header_version = header_version
    if header_version > 1:
        message.message_id = message_id & 0xFFFFFFFF
        message.metadata = dict(metadata)
    return message.pack()


def spacing_of(message: pyigtl.ImageMessage) -> tuple[float, float]:
    """(row, column) mm per pixel of a received IMAGE: the lengths of the matrix's j and i columns."""
    matrix = np.asarray(message.ijk_to_world_matrix, dtype=float)
    return float(np.linalg.norm(matrix[:3, 1])), float(np.linalg.norm(matrix[:3, 0]))
