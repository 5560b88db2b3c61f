"""DICOM and file input/output: study inventory, images, RT structures, RT Dose, atomic export."""
