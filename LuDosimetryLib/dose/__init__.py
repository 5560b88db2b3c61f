"""Absorbed dose: HU→density, body outline, dose voxel kernels, kernel convolution and local deposition."""
from __future__ import annotations

from .convolve import dose_dvk
from .density import density_from_hu
from .kernel_files import DoseKernel, KernelFileError, check_kernel_grid, read_dose_kernel
from .kernels import dose_voxel_kernel, dose_voxel_kernel_parts, split_kernel
from .local import dose_ldm, dose_ldm_photons
from .media import body_outline

__all__ = ["density_from_hu", "body_outline", "dose_voxel_kernel", "dose_voxel_kernel_parts", "split_kernel",
           "dose_dvk", "dose_ldm", "dose_ldm_photons",
           "DoseKernel", "KernelFileError", "read_dose_kernel", "check_kernel_grid"]
