"""Vendor-like DICOM writers of the synthetic patient and the digital twin (not used by the product).

They write what a camera, a PET/CT or MIM would export (CT and PT slices, whole-body planar views, PET,
SEG masks, the TIA map), with that equipment (:mod:`.vendor`), on top of the product's own writing
helpers in :mod:`LuDosimetryLib.io`.
"""
