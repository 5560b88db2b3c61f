"""Equipment the synthetic patient's and the digital twin's files say they come from: the collection was
acquired on a Siemens Symbia Intevo Bold SPECT/CT."""
from __future__ import annotations

from ...io.dicom_common import Equipment

NM_MANUFACTURER = "SIEMENS NM"
CT_MANUFACTURER = "SIEMENS"
MODEL_NAME = "Symbia Intevo Bold"

#: The camera (NM and PT files: SPECT, projections, μ-maps, planar views, TIA map).
SIEMENS_NM = Equipment(manufacturer=NM_MANUFACTURER, model_name=MODEL_NAME)
#: Its CT (CT slices, SEG masks drawn on them).
SIEMENS_CT = Equipment(manufacturer=CT_MANUFACTURER, model_name=MODEL_NAME)
