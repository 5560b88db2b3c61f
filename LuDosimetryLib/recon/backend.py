"""Lazy, contained import of PyTomography.

PyTomography 3.4 prints to stdout when imported and, unless Python was started with ``-W``, calls
``warnings.simplefilter("ignore")`` for the whole process (``pytomography/__init__.py``). It also keeps
its compute device in the module global ``pytomography.device``. :func:`pytomography_session` imports
it with stdout captured, restores the warnings filter right after the import and again on exit, and
sets ``pytomography.device`` to the device the caller passes only for the duration of the block, so no
global state leaks out of the reconstruction path.
"""
from __future__ import annotations

import contextlib
import io
import types
import warnings
from typing import Iterator, Optional

from ..errors import LuDosimetryError

#: How to get the reconstruction back end (named in the error when it is missing).
INSTALL_HINT = "install it with: pip install pytomography (the Slicer module's dependency installer does this)"


class BackendMissingError(LuDosimetryError):
    """PyTomography (or torch) cannot be imported: reconstruction and projection simulation are unavailable."""


def _missing(exc: BaseException, purpose: str, alternative: str = "") -> BackendMissingError:
    return BackendMissingError(f"{purpose} needs PyTomography, which cannot be imported "
                               f"({type(exc).__name__}: {exc}); {INSTALL_HINT}"
                               + (f"; or {alternative}" if alternative else ""))


def require_pytomography(purpose: str = "SPECT reconstruction", alternative: str = "") -> None:
    """Raise :class:`BackendMissingError` (one line naming ``purpose`` and ``alternative``) when PyTomography
    cannot be imported.

    Imports it as :func:`pytomography_session` does (stdout captured, warnings filter restored)."""
    saved = list(warnings.filters)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import torch  # noqa: F401
            import pytomography  # noqa: F401
            from pytomography.projectors.SPECT import SPECTSystemMatrix  # noqa: F401
    except ImportError as exc:
        raise _missing(exc, purpose, alternative) from None
    finally:
        _restore_filters(saved)


def _restore_filters(saved) -> None:
    warnings.filters[:] = saved
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()


def default_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"`` (nothing global is changed)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def pytomography_session(device: Optional[str] = None) -> Iterator[types.SimpleNamespace]:
    """Import the PyTomography pieces used here; yield them as a namespace.

    Parameters
    ----------
    device : str, optional
        torch device for this block (``"cpu"``, ``"cuda"``, ``"cuda:1"``); default: a GPU when torch
        sees one, else the CPU.

    Yields
    ------
    types.SimpleNamespace
        ``torch``, ``pytomography``, ``SPECTSystemMatrix``, ``SPECTObjectMeta``, ``SPECTProjMeta``,
        ``SPECTPSFMeta``, ``SPECTAttenuationTransform``, ``SPECTPSFTransform``, ``OSEM``, ``BSREM``,
        ``PoissonLogLikelihood``, ``RelativeDifferencePrior``, ``rotate_detector_z``, ``pad_object``,
        ``device`` (a ``torch.device``).
    """
    saved = list(warnings.filters)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            import torch
            import pytomography
            from pytomography.algorithms import BSREM, OSEM
            from pytomography.likelihoods import PoissonLogLikelihood
            from pytomography.metadata.SPECT import SPECTObjectMeta, SPECTProjMeta, SPECTPSFMeta
            from pytomography.priors import RelativeDifferencePrior
            from pytomography.projectors.SPECT import SPECTSystemMatrix
            from pytomography.transforms.SPECT import SPECTAttenuationTransform, SPECTPSFTransform
            from pytomography.utils import pad_object, rotate_detector_z
    except ImportError as exc:
        raise _missing(exc, "SPECT reconstruction and projection simulation") from None
    finally:
        _restore_filters(saved)
    dev = torch.device(device if device is not None else default_device())
    previous = pytomography.device
    pytomography.device = dev
    ns = types.SimpleNamespace(
        torch=torch, pytomography=pytomography, SPECTSystemMatrix=SPECTSystemMatrix,
        SPECTObjectMeta=SPECTObjectMeta, SPECTProjMeta=SPECTProjMeta, SPECTPSFMeta=SPECTPSFMeta,
        SPECTAttenuationTransform=SPECTAttenuationTransform, SPECTPSFTransform=SPECTPSFTransform,
        OSEM=OSEM, BSREM=BSREM, PoissonLogLikelihood=PoissonLogLikelihood,
        RelativeDifferencePrior=RelativeDifferencePrior, rotate_detector_z=rotate_detector_z,
        pad_object=pad_object, device=dev)
    try:
        yield ns
    finally:
        pytomography.device = previous
        _restore_filters(saved)
