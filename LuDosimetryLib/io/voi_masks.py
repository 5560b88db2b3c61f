"""VOI masks in one compact NRRD file: bit ``i`` of the voxel's bytes says whether it lies in VOI ``i``.

Overlapping VOIs (a lesion inside an organ) keep their own masks, which a label map cannot. The file is
a vector image of ``ceil(n / 8)`` unsigned bytes per voxel (gzip), on the grid of the image the masks
were drawn on; the VOI names, in bit order, are the JSON list in the header field
:data:`NAMES_FIELD`. VOI ``i`` is ``(voxel[i // 8] >> (i % 8)) & 1``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import OutputError, StructureError

#: Header field holding the VOI names (JSON list, bit order).
NAMES_FIELD = "LuDosimetry_voi_names"


def write_voi_masks(path, masks: Mapping[str, np.ndarray], reference: sitk.Image,
                    metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write VOI masks (z, y, x; a voxel is in a VOI where its weight is ≥ 0.5) on ``reference``'s grid, with
    ``metadata`` (header fields, e.g. what the grid is of) beside the names.

    Raises
    ------
    OutputError
        The file cannot be written.
    """
    path = Path(path)
    names = list(masks)
    shape = sitk.GetArrayViewFromImage(reference).shape[:3]
    packed = np.zeros(shape + (max(1, (len(names) + 7) // 8),), dtype=np.uint8)
    for i, name in enumerate(names):
        inside = np.asarray(masks[name]) >= 0.5
        if inside.shape != shape:
            raise ValueError(f"mask {name!r} has shape {inside.shape}, the grid {shape}")
        packed[..., i // 8] |= (inside.astype(np.uint8) << np.uint8(i % 8))
    image = sitk.GetImageFromArray(packed, isVector=True)
    image.SetOrigin(reference.GetOrigin())
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    for key, value in (metadata or {}).items():
        image.SetMetaData(str(key), str(value))
    image.SetMetaData(NAMES_FIELD, json.dumps(names))
    try:
        sitk.WriteImage(image, str(path), True)
    except RuntimeError as exc:
        raise OutputError(f"cannot write the VOI masks ({str(exc).strip().splitlines()[-1]})", path) from None
    return path


def read_voi_masks(path) -> Tuple[Dict[str, np.ndarray], sitk.Image]:
    """The masks of a file of :func:`write_voi_masks`.

    Returns
    -------
    masks : dict name → bool ndarray (z, y, x)
    grid : SimpleITK.Image
        An empty (uint8) image with the masks' geometry, and the ``metadata`` of :func:`write_voi_masks`.

    Raises
    ------
    StructureError
        The file cannot be read or is not a VOI mask file.
    """
    try:
        image = sitk.ReadImage(str(path))
        names = json.loads(image.GetMetaData(NAMES_FIELD))
    except (RuntimeError, ValueError) as exc:
        raise StructureError(f"not a LuDosimetry VOI mask file ({type(exc).__name__})", path) from None
    packed = sitk.GetArrayFromImage(image)
    if packed.ndim == 3:
        packed = packed[..., None]
    if not isinstance(names, list) or packed.shape[-1] * 8 < len(names):
        raise StructureError("not a LuDosimetry VOI mask file (names do not match the bits)", path)
    masks = {str(name): ((packed[..., i // 8] >> np.uint8(i % 8)) & 1).astype(bool) for i, name in enumerate(names)}
    grid = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    grid.SetOrigin(image.GetOrigin())
    grid.SetSpacing(image.GetSpacing())
    grid.SetDirection(image.GetDirection())
    for key in image.GetMetaDataKeys():
        if key != NAMES_FIELD and not key.startswith(("NRRD_", "ITK_")):
            grid.SetMetaData(key, image.GetMetaData(key))
    return masks, grid
