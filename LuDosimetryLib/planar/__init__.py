"""Conjugate-view quantification of planar (whole-body or static) images: physics only, no I/O.

- :mod:`.conjugate` — geometric mean of the anterior and posterior views, attenuation correction from the
  μ line integral through the CT, source self-attenuation, counts → Bq with the planar sensitivity.
- :mod:`.windows` — the photopeak and its scatter windows among the frames, TEW scatter correction.
- :mod:`.projection` — 3-D volumes (CT μ, VOI masks, SPECT) projected onto the planar view; placing the
  planar image on the CT.
- :mod:`.regions` — regions drawn by projecting the VOIs, background, per-region activity.

Reading the planar DICOM files is :mod:`LuDosimetryLib.io.planar`; the whole-body / remainder-of-body / hybrid
stage of a run is :mod:`LuDosimetryLib.whole_body`.
"""
