"""Absorbed dose: HU→density, dose voxel kernels, kernel convolution and local deposition."""
from __future__ import annotations

from .convolve import dose_dvk
from .density import density_from_hu
from .kernel_files import DoseKernel, KernelFileError, check_kernel_grid, read_dose_kernel
from .kernels import dose_voxel_kernel
from .local import dose_ldm, dose_ldm_photons

__all__ = ["density_from_hu", "dose_voxel_kernel", "dose_dvk", "dose_ldm", "dose_ldm_photons",
           "DoseKernel", "KernelFileError", "read_dose_kernel", "check_kernel_grid"]
