"""DICOM Segmentation Storage (SEG, BINARY) writer: Boolean masks of a structure set as one file.

One frame per (segment, slice) that the segment touches, on the grid of the referenced image series
(PS3.3 A.51 Segmentation IOD; C.8.20 Segmentation Image module; C.7.6.16 Multi-frame Functional Groups;
C.7.6.17 Multi-frame Dimension). Frames are ordered segment by segment, slice by slice, with the
dimension index (ReferencedSegmentNumber, ImagePositionPatient).
"""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from ...errors import OutputError
from ...io.dicom_common import (PatientInfo, SeriesInfo, StudyInfo, code_item, derived_uid, format_ds, new_dataset,
                                write_dataset)
from ...io.rtstruct import ReferencedSeries
from .vendor import CT_MANUFACTURER, MODEL_NAME

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_DIM_ORG_UID_TEXT = "LuDosimetry SEG dimension organization"

#: Segmentation property category / type codes (DICOM CID 7150 / 7151, SNOMED CT).
ORGAN_CATEGORY = ("91723000", "SCT", "Anatomical Structure")
LESION_CATEGORY = ("49755003", "SCT", "Morphologically Altered Structure")
TYPE_CODES = {"liver": ("10200004", "SCT", "Liver"), "kidney": ("64033007", "SCT", "Kidney"),
              "spleen": ("78961009", "SCT", "Spleen"), "lesion": ("108369006", "SCT", "Neoplasm")}


def _type_for(name: str, kind: str) -> Tuple[str, str, str]:
    low = name.lower()
    for key, code in TYPE_CODES.items():
        if key in low:
            return code
    return TYPE_CODES["lesion"] if kind == "lesion" else ("91772007", "SCT", "Organ")


def write_seg(path: os.PathLike, masks: Mapping[str, np.ndarray], reference: sitk.Image,
              referenced: ReferencedSeries, patient: PatientInfo, study: StudyInfo, series: SeriesInfo, *,
              kind: str = "organ", content_label: str = "MASKS", colors: Optional[Mapping[str, Sequence[int]]] = None,
              content_datetime: Optional[datetime] = None) -> Path:
    """Write Boolean masks as a DICOM SEG (BINARY) referencing the image series ``referenced``.

    Parameters
    ----------
    path : path-like
        Output file (atomic write).
    masks : mapping of str to numpy.ndarray
        Segment label → (z, y, x) boolean mask on the grid of ``reference`` (values > 0.5 are in).
    reference : SimpleITK.Image
        Geometry of the referenced series (LPS, mm; slices along the third direction column).
    referenced : ReferencedSeries
        The image series the masks were drawn on (slice k ↔ ``sop_instance_uids[k]``).
    patient, study, series : identity (``series.modality`` becomes ``"SEG"``; ``frame_of_reference_uid``
        must be that of the referenced series).
    kind : {"organ", "lesion"}
        Picks the segmentation property category.
    content_label : str
        Content Label (CS, at most 16 characters, upper case).
    colors : mapping of str to (r, g, b), optional
        Unused in the file (CIELab would be needed); reserved.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    if not masks:
        raise OutputError("no mask to write", path)
    size = reference.GetSize()
    shape = (size[2], size[1], size[0])
    if len(referenced.sop_instance_uids) != shape[0]:
        raise OutputError(f"referenced series has {len(referenced.sop_instance_uids)} images but the reference "
                          f"grid has {shape[0]} slices", path)
    arrays = {}
    for name, m in masks.items():
        a = np.asarray(m)
        if a.shape != shape:
            raise OutputError(f"mask {name!r} has shape {a.shape}, expected {shape}", path)
        arrays[name] = a > 0.5
    series.modality = "SEG"
    series.frame_of_reference_uid = referenced.frame_of_reference_uid
    when = content_datetime or study.study_datetime
    uid = derived_uid(f"{series.series_instance_uid}/seg")
    ds = new_dataset(SEGMENTATION_STORAGE, patient, study, series, sop_instance_uid=uid, instance_number=1,
                     content_datetime=when)
    # Enhanced General Equipment (C.7.5.2): all type 1.
    ds.Manufacturer = CT_MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = "LUDOSIM-TWIN"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = "".join(ch for ch in content_label.upper() if ch.isalnum() or ch in " _")[:16] or "MASKS"
    ds.ContentDescription = series.description[:64]
    ds.ContentCreatorName = ""
    ds.SegmentationType = "BINARY"
    # Image Pixel for SEG BINARY: 1 bit, MONOCHROME2.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = shape[1], shape[2]
    ds.BitsAllocated = 1
    ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    # Segments
    cat = LESION_CATEGORY if kind == "lesion" else ORGAN_CATEGORY
    segs = []
    for i, name in enumerate(arrays, start=1):
        item = Dataset()
        item.SegmentNumber = i
        item.SegmentLabel = name[:64]
        item.SegmentAlgorithmType = "MANUAL" if kind == "lesion" else "SEMIAUTOMATIC"
        if kind != "lesion":
            item.SegmentAlgorithmName = "atlas and CNN based"
        item.SegmentedPropertyCategoryCodeSequence = DicomSequence([code_item(cat)])
        item.SegmentedPropertyTypeCodeSequence = DicomSequence([code_item(_type_for(name, kind))])
        segs.append(item)
    ds.SegmentSequence = DicomSequence(segs)
    # Geometry
    d = np.array(reference.GetDirection(), dtype=float).reshape(3, 3)
    spacing = reference.GetSpacing()
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [format_ds(spacing[1]), format_ds(spacing[0])]
    pm.SliceThickness = format_ds(spacing[2])
    pm.SpacingBetweenSlices = format_ds(spacing[2])
    shared.PixelMeasuresSequence = DicomSequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = [format_ds(v) for v in list(d[:, 0]) + list(d[:, 1])]
    shared.PlaneOrientationSequence = DicomSequence([po])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    # Dimensions
    dim_uid = derived_uid(_DIM_ORG_UID_TEXT)
    org = Dataset()
    org.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = DicomSequence([org])
    idx1 = Dataset()
    idx1.DimensionOrganizationUID = dim_uid
    idx1.DimensionIndexPointer = 0x0062000B  # ReferencedSegmentNumber
    idx1.FunctionalGroupPointer = 0x0062000A  # SegmentIdentificationSequence
    idx1.DimensionDescriptionLabel = "Segment"
    idx2 = Dataset()
    idx2.DimensionOrganizationUID = dim_uid
    idx2.DimensionIndexPointer = 0x00200032  # ImagePositionPatient
    idx2.FunctionalGroupPointer = 0x00209113  # PlanePositionSequence
    idx2.DimensionDescriptionLabel = "Position"
    ds.DimensionIndexSequence = DicomSequence([idx1, idx2])
    frames = []
    per_frame = []
    for seg_no, (name, arr) in enumerate(arrays.items(), start=1):
        slices = [k for k in range(shape[0]) if arr[k].any()] or [0]
        for k in slices:
            frames.append(arr[k])
            fg = Dataset()
            fc = Dataset()
            fc.DimensionIndexValues = [seg_no, k + 1]
            fg.FrameContentSequence = DicomSequence([fc])
            pp = Dataset()
            pp.ImagePositionPatient = [format_ds(v) for v in reference.TransformIndexToPhysicalPoint((0, 0, k))]
            fg.PlanePositionSequence = DicomSequence([pp])
            si = Dataset()
            si.ReferencedSegmentNumber = seg_no
            fg.SegmentIdentificationSequence = DicomSequence([si])
            der = Dataset()
            src = Dataset()
            src.ReferencedSOPClassUID = referenced.sop_class_uid
            src.ReferencedSOPInstanceUID = referenced.sop_instance_uids[k]
            src.PurposeOfReferenceCodeSequence = DicomSequence([code_item(("121322", "DCM", "Source image for image "
                                                                                         "processing operation"))])
            der.SourceImageSequence = DicomSequence([src])
            der.DerivationCodeSequence = DicomSequence([code_item(("113076", "DCM", "Segmentation"))])
            fg.DerivationImageSequence = DicomSequence([der])
            per_frame.append(fg)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.NumberOfFrames = len(frames)
    ds.ContentDate, ds.ContentTime = ds.ContentDate, ds.ContentTime
    # Common Instance Reference (C.12.2)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = referenced.series_instance_uid
    inst = []
    for u in dict.fromkeys(referenced.sop_instance_uids):
        it = Dataset()
        it.ReferencedSOPClassUID = referenced.sop_class_uid
        it.ReferencedSOPInstanceUID = u
        inst.append(it)
    ref_series.ReferencedInstanceSequence = DicomSequence(inst)
    ds.ReferencedSeriesSequence = DicomSequence([ref_series])
    bits = np.packbits(np.stack(frames).astype(np.uint8).reshape(-1), bitorder="little")
    data = bits.tobytes()
    if len(data) % 2:
        data += b"\0"
    ds.PixelData = data
    ds["PixelData"].VR = "OB"
    return write_dataset(ds, path)
