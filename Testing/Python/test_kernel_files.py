"""Dose voxel kernels read from files (LuDosimetryLib.dose.kernel_files) and their use in the DVK dose.

Test files are made here from our own kernel (``dose_voxel_kernel``): an Interfile header + raw data pair
and a voxel S-value table in the layout of the Lanconelli et al. (2012) database. The PyTheranostics 0.1
Monte Carlo kernel is read when its wheel is in the peer cache (see test_dose_kernel_peer.py).
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from LuDosimetryLib.cli import main
from LuDosimetryLib.dose import (DoseKernel, KernelFileError, check_kernel_grid, dose_dvk, dose_voxel_kernel,
                                 read_dose_kernel)
from LuDosimetryLib.errors import LuDosimetryError, OptionError
from LuDosimetryLib.pipeline import RunOptions, run_study, write_outputs

H = (4.8, 4.8, 4.8)


@pytest.fixture(scope="module")
def kernel():
    """Our Lu-177 kernel at 4.8 mm, 11³ voxels (Gy/decay)."""
    return dose_voxel_kernel(H, radius_mm=24.0)


def write_interfile(folder: Path, values_gy: np.ndarray, spacing_mm, *, stem: str = "kernel",
                    units: str = "mGy/decay", scale: float = 1e3, number_format: str = "short float",
                    byte_order: str = "LITTLEENDIAN", offset: int = 0, drop=(), data_name=None,
                    encoding: str = "latin-1") -> Path:
    """Interfile 3.3 header + raw data of ``values_gy`` (z, y, x) × ``scale``; returns the header path."""
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = values_gy.shape
    dtype = np.dtype(("<" if byte_order == "LITTLEENDIAN" else ">")
                     + ("f8" if number_format == "long float" else "f4"))
    data = folder / f"{stem}.img"
    data.write_bytes(b"\x07" * offset + (np.asarray(values_gy) * scale).astype(dtype).tobytes())
    keys = [("!INTERFILE", ""), ("!imaging modality", "nucmed"), ("!version of keys", "3.3"),
            ("!data offset in bytes", str(offset)), ("!name of data file", data_name or data.name),
            ("!imagedata byte order", byte_order), ("Number of dimensions", "3"),
            ("!matrix size [1]", str(nx)), ("!matrix size [2]", str(ny)), ("!matrix size [3]", str(nz)),
            ("!number format", number_format), ("!number of bytes per pixel", str(dtype.itemsize)),
            ("scaling factor (mm/pixel) [1]", str(spacing_mm[0])),
            ("scaling factor (mm/pixel) [2]", str(spacing_mm[1])),
            ("scaling factor (mm/pixel) [3]", str(spacing_mm[2])), ("units", units),
            ("!END OF INTERFILE", "")]
    text = "".join(f"{k} := {v}\r\n" for k, v in keys if k not in drop)
    header = folder / f"{stem}.hdr"
    header.write_bytes(text.encode(encoding))
    return header


def write_table(path: Path, values_gy: np.ndarray, *, title: str = "Lu177 - 4.8mm - Soft tissue",
                units: str = "mGy/(MBq·s)", scale: float = 1e9, skip=None, encoding: str = "utf-8") -> Path:
    """Voxel S-value table (octant i, j, k ≥ 0 of the centred ``values_gy``, × ``scale``)."""
    c = [n // 2 for n in values_gy.shape]
    octant = values_gy[c[0]:, c[1]:, c[2]:]
    lines = [title, f"i\tj\tk\tS [{units}]"]
    for k in range(octant.shape[0]):
        for j in range(octant.shape[1]):
            for i in range(octant.shape[2]):
                if (i, j, k) != skip:
                    lines.append(f"{i}\t{j}\t{k}\t{octant[k, j, i] * scale:.9e}")
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
    return path


def _one_line(exc_info, name: str) -> str:
    assert isinstance(exc_info.value, LuDosimetryError)  # the CLI prints these as one line, exit 2
    msg = str(exc_info.value)
    assert "\n" not in msg and name in msg, msg
    return msg


# --- Interfile --------------------------------------------------------------------------------------

@pytest.mark.parametrize("units,scale,number_format,byte_order,offset", [
    ("mGy/decay", 1e3, "short float", "LITTLEENDIAN", 0),
    ("Gy/decay", 1.0, "long float", "BIGENDIAN", 0),
    ("mGy/(MBq\u00b7s)", 1e9, "float", "LITTLEENDIAN", 32),
    ("mGy/MBqs", 1e9, "short float", "BIGENDIAN", 0),
])
def test_interfile_round_trip_and_units(tmp_path, kernel, units, scale, number_format, byte_order, offset):
    hdr = write_interfile(tmp_path, kernel, H, units=units, scale=scale, number_format=number_format,
                          byte_order=byte_order, offset=offset, encoding="utf-8")  # '·' as UTF-8, read as latin-1
    k = read_dose_kernel(hdr)
    assert isinstance(k, DoseKernel)
    assert k.values_gy_per_decay.dtype == np.float64 and k.values_gy_per_decay.shape == kernel.shape
    rtol = 1e-15 if number_format == "long float" else 2e-7  # float32 storage
    np.testing.assert_allclose(k.values_gy_per_decay, kernel, rtol=rtol, atol=0)
    assert k.spacing_mm == H
    assert k.source == str(hdr)
    assert "11×11×11" in k.description
    assert not k.values_gy_per_decay.flags.writeable


def test_interfile_axis_order_with_anisotropic_voxels(tmp_path):
    spacing = (4.0, 3.0, 5.0)  # (x, y, z) → shape (z, y, x) = (9, 13, 9)
    ours = dose_voxel_kernel(spacing, radius_mm=20.0, include_photons=False)
    assert len(set(ours.shape)) > 1
    k = read_dose_kernel(write_interfile(tmp_path, ours, spacing))
    assert k.spacing_mm == spacing
    np.testing.assert_allclose(k.values_gy_per_decay, ours, rtol=2e-7)


def test_data_file_path_finds_the_header_beside_it(tmp_path, kernel):
    hdr = write_interfile(tmp_path, kernel, H)
    k = read_dose_kernel(hdr.with_suffix(".img"))
    assert k.source == str(hdr)
    np.testing.assert_allclose(k.values_gy_per_decay, kernel, rtol=2e-7)


def test_units_given_by_the_caller(tmp_path, kernel):
    hdr = write_interfile(tmp_path, kernel, H, drop=("units",))
    with pytest.raises(KernelFileError, match="does not state its units") as exc:
        read_dose_kernel(hdr)
    _one_line(exc, hdr.name)
    k = read_dose_kernel(hdr, units="mGy/decay")
    np.testing.assert_allclose(k.values_gy_per_decay, kernel, rtol=2e-7)
    with pytest.raises(KernelFileError, match="not understood"):
        read_dose_kernel(hdr, units="Bq/mL")
    # the file states mGy/decay: a caller saying Gy/decay contradicts it
    stated = write_interfile(tmp_path / "stated", kernel, H)
    with pytest.raises(KernelFileError, match="disagree") as exc:
        read_dose_kernel(stated, units="Gy/decay")
    _one_line(exc, stated.name)


def test_unknown_units_are_refused(tmp_path, kernel):
    hdr = write_interfile(tmp_path, kernel, H, units="Bq/mL")
    with pytest.raises(KernelFileError, match="not a dose per decay") as exc:
        read_dose_kernel(hdr)
    _one_line(exc, hdr.name)


def test_spacing_argument_supplies_a_missing_voxel_size(tmp_path, kernel):
    hdr = write_interfile(tmp_path, kernel, H, drop=("scaling factor (mm/pixel) [3]",))
    with pytest.raises(KernelFileError, match="voxel size") as exc:
        read_dose_kernel(hdr)
    _one_line(exc, hdr.name)
    assert read_dose_kernel(hdr, spacing_mm=4.8).spacing_mm == H


# --- voxel S-value tables -----------------------------------------------------------------------------

def test_table_octant_is_mirrored_to_the_full_kernel(tmp_path, kernel):
    path = write_table(tmp_path / "Lu177_4.8mm_softtissue.txt", kernel)
    k = read_dose_kernel(path)
    assert k.spacing_mm == H and k.source == str(path)
    assert "Lu177 - 4.8mm - Soft tissue" in k.description
    assert "mGy/(MBq·s) in the file" in k.description  # the units' own parenthesis survives
    np.testing.assert_allclose(k.values_gy_per_decay, kernel, rtol=1e-9, atol=0)


def test_table_in_mgy_per_decay_with_latin1_dot_and_spacing_argument(tmp_path, kernel):
    path = write_table(tmp_path / "t.dat", kernel, title="Lu-177 soft tissue", units="mGy/decay", scale=1e3,
                       encoding="latin-1")
    with pytest.raises(KernelFileError, match="no voxel size") as exc:
        read_dose_kernel(path)
    _one_line(exc, path.name)
    k = read_dose_kernel(path, spacing_mm=4.8)
    np.testing.assert_allclose(k.values_gy_per_decay, kernel, rtol=1e-9)
    titled = write_table(tmp_path / "titled.txt", kernel)
    with pytest.raises(KernelFileError, match="title says 4.8 mm"):
        read_dose_kernel(titled, spacing_mm=5.0)


def test_table_with_a_missing_voxel_is_refused(tmp_path, kernel):
    path = write_table(tmp_path / "holes.txt", kernel, skip=(2, 1, 0))
    with pytest.raises(KernelFileError, match=r"\(i, j, k\) = \(2, 1, 0\) is missing") as exc:
        read_dose_kernel(path)
    _one_line(exc, path.name)


def test_table_with_a_bad_row_is_refused(tmp_path, kernel):
    path = write_table(tmp_path / "bad.txt", kernel)
    path.write_bytes(path.read_bytes() + b"1 2 x 3.0\r\n")
    with pytest.raises(KernelFileError, match="not 'i j k S' numbers") as exc:
        read_dose_kernel(path)
    _one_line(exc, path.name)


# --- bad input ----------------------------------------------------------------------------------------

def test_missing_file_and_missing_data_file(tmp_path, kernel):
    with pytest.raises(KernelFileError, match="does not exist") as exc:
        read_dose_kernel(tmp_path / "nope.hdr")
    _one_line(exc, "nope.hdr")
    hdr = write_interfile(tmp_path, kernel, H, data_name="elsewhere.img")
    with pytest.raises(KernelFileError, match="'elsewhere.img' named by the header is missing") as exc:
        read_dose_kernel(hdr)
    _one_line(exc, hdr.name)


def test_raw_data_without_header_and_other_files_are_refused(tmp_path, kernel):
    hdr = write_interfile(tmp_path, kernel, H)
    hdr.unlink()
    img = tmp_path / "kernel.img"
    with pytest.raises(KernelFileError, match="not a dose kernel") as exc:
        read_dose_kernel(img)
    _one_line(exc, img.name)
    notes = tmp_path / "notes.txt"
    notes.write_text("Lu177 kernel\nsome numbers 1 2 3\n")
    with pytest.raises(KernelFileError, match="not a dose kernel"):
        read_dose_kernel(notes)


def test_size_mismatch_between_header_and_data(tmp_path, kernel):
    hdr = write_interfile(tmp_path, kernel, H)
    img = hdr.with_suffix(".img")
    img.write_bytes(img.read_bytes()[:-4])
    with pytest.raises(KernelFileError, match="holds 5320 bytes .* need 5324") as exc:
        read_dose_kernel(hdr)
    _one_line(exc, hdr.name)


def test_even_sizes_are_refused(tmp_path, kernel):
    hdr = write_interfile(tmp_path, kernel[:, :, :-1], H)
    with pytest.raises(KernelFileError, match="even") as exc:
        read_dose_kernel(hdr)
    _one_line(exc, hdr.name)


@pytest.mark.parametrize("bad,match", [("nan", "NaN"), ("negative", "negative"), ("offcentre", "not at the centre"),
                                       ("bytes", "NaN|negative|not at the centre")])
def test_bad_values_are_refused(tmp_path, kernel, bad, match):
    values = np.array(kernel)
    order = "LITTLEENDIAN"
    if bad == "nan":
        values[0, 0, 0] = np.nan
    elif bad == "negative":
        values[0, 3, 2] = -1e-14
    elif bad == "offcentre":
        values = np.roll(values, 1, axis=2)
    hdr = write_interfile(tmp_path, values, H, byte_order=order)
    if bad == "bytes":  # the header names the wrong byte order
        text = hdr.read_text(encoding="latin-1").replace("LITTLEENDIAN", "BIGENDIAN")
        hdr.write_bytes(text.encode("latin-1"))
    with pytest.raises(KernelFileError, match=match) as exc:
        read_dose_kernel(hdr)
    _one_line(exc, hdr.name)


# --- grid check ---------------------------------------------------------------------------------------

def test_check_kernel_grid(tmp_path, kernel):
    k = read_dose_kernel(write_interfile(tmp_path, kernel, H))
    check_kernel_grid(k, (4.8, 4.8, 4.8))
    check_kernel_grid(k, (4.83, 4.77, 4.8))  # 0.6 %
    with pytest.raises(KernelFileError, match=r"4.8 × 4.8 × 4.8 mm differs from the image's 4.8 × 4.8 × 4.9") \
            as exc:
        check_kernel_grid(k, (4.8, 4.8, 4.9))  # 2 % in z
    _one_line(exc, "kernel.hdr")
    check_kernel_grid(k, (4.8, 4.8, 4.9), tolerance=0.03)
    with pytest.raises(KernelFileError, match="3 positive values"):
        check_kernel_grid(k, (4.8, 4.8))


def test_file_kernel_in_dose_dvk_equals_the_built_one(tmp_path, kernel):
    rng = np.random.default_rng(1)
    tia = np.zeros((20, 18, 16), dtype=np.float32)
    tia[6:12, 5:10, 4:11] = rng.uniform(1e9, 2e9, size=(6, 5, 7))
    k = read_dose_kernel(write_table(tmp_path / "t.txt", kernel))
    np.testing.assert_allclose(dose_dvk(tia, H, kernel=k.values_gy_per_decay), dose_dvk(tia, H, kernel=kernel),
                               rtol=1e-5, atol=1e-6 * float(dose_dvk(tia, H, kernel=kernel).max()))


# --- pipeline and CLI ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def patient(synthetic_study, tmp_path_factory):
    """Synthetic patient (shared, read-only), its built-in-kernel DVK run, and our kernel at its SPECT voxel size
    as Interfile."""
    root = tmp_path_factory.mktemp("kernel_patient")
    study = synthetic_study
    built = run_study(study, RunOptions(dose_method="dvk"))
    spacing = built.reference_spect.GetSpacing()
    hdr = write_interfile(root / "kernel", dose_voxel_kernel(spacing), spacing, stem="lu177_dvk")
    return study, built, hdr, spacing


def test_pipeline_with_a_kernel_file_equals_the_built_kernel(patient, tmp_path):
    study, built, hdr, spacing = patient
    assert built.to_json()["dose_kernel"] == {"source": "LuDosimetry (built)", "spacing_mm": list(spacing),
                                              "density_g_ml": 1.0}
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--quiet", "--kernel", str(hdr)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["dose_kernel"] == {"source": str(hdr), "spacing_mm": list(spacing), "density_g_ml": 1.0}
    assert set(res["vois"]) == set(built.vois)
    for name, v in built.vois.items():
        assert res["vois"][name]["mean_dose_gy"] == pytest.approx(v.mean_dose_gy, rel=0.005), name


def test_pipeline_kernel_density_and_ldm_outputs(patient, tmp_path):
    study, built, _, spacing = patient
    # The file is what is convolved: a kernel file holding twice our kernel doubles the doses. Declared for
    # a medium of 1.04 g/mL, the density correction divides its electron part by ρ/1.04 instead of ρ/1.0:
    # another × 1.04 on the electrons, which give all but ~1 % of these VOIs' doses (photons are not scaled).
    doubled = write_interfile(tmp_path / "k", 2.0 * dose_voxel_kernel(spacing), spacing)
    res = run_study(study, RunOptions(kernel_path=str(doubled), kernel_density_g_ml=1.04))
    assert res.to_json()["dose_kernel"]["density_g_ml"] == 1.04
    for name, v in built.vois.items():
        assert res.vois[name].mean_dose_gy == pytest.approx(2.08 * v.mean_dose_gy, rel=0.005), name
    ldm = run_study(study, RunOptions(dose_method="ldm"))
    assert "dose_kernel" not in ldm.to_json()
    write_outputs(ldm, tmp_path / "ldm")
    assert "dose_kernel" not in json.loads((tmp_path / "ldm" / "results.json").read_text())


def test_pipeline_refuses_a_kernel_of_another_voxel_size(patient, tmp_path):
    study, _, _, spacing = patient
    other = tuple(1.02 * s for s in spacing)
    hdr = write_interfile(tmp_path, dose_voxel_kernel(other, include_photons=False), other)
    with pytest.raises(KernelFileError, match="differs from the image's") as exc:
        run_study(study, RunOptions(kernel_path=str(hdr)))
    _one_line(exc, hdr.name)


def test_pipeline_option_errors(patient, tmp_path):
    study, _, hdr, _ = patient
    with pytest.raises(OptionError, match="applies to the dvk dose only") as exc:
        run_study(study, RunOptions(dose_method="ldm", kernel_path=str(hdr)))
    _one_line(exc, "kernel_path")  # names the option (the CLI shows it as --kernel)
    with pytest.raises(OptionError, match="must be > 0 g/mL") as exc:
        run_study(study, RunOptions(kernel_density_g_ml=0.0))
    assert exc.value.option == "kernel_density_g_ml"
    with pytest.raises(KernelFileError, match="does not exist"):
        run_study(study, RunOptions(kernel_path=str(tmp_path / "missing.hdr")))


@pytest.mark.parametrize("extra,match", [
    (["--kernel", "{missing}"], "dose kernel file does not exist"),
    (["--kernel", "{hdr}", "--dose-method", "ldm"], "--kernel: a dose kernel file applies to the dvk dose only"),
    (["--kernel-density-g-ml", "-1"], "--kernel-density-g-ml: must be > 0 g/mL"),
])
def test_cli_kernel_errors(patient, tmp_path, capsys, extra, match):
    study, _, hdr, _ = patient
    args = [a.format(missing=tmp_path / "missing.hdr", hdr=hdr) for a in extra]
    assert main(["run", str(study), "--out", str(tmp_path / "out"), "--quiet"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ludosimetry: error: ") and match in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


# --- peer: the PyTheranostics 0.1 Monte Carlo kernel ------------------------------------------------------

def _peer_wheel():
    env = os.environ.get("LUDOSIMETRY_PEER_CACHE")
    cache = Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "peers"
    wheels = sorted(cache.glob("[Pp]y[Tt]heranostics-0.1-*.whl")) if cache.is_dir() else []
    if not wheels:
        pytest.skip(f"no PyTheranostics 0.1 wheel in {cache} (test_dose_kernel_peer.py downloads it)")
    return wheels[0]


def test_reads_the_pytheranostics_interfile_kernel(tmp_path):
    with zipfile.ZipFile(_peer_wheel()) as wheel:
        for stem in ("DK_softtissueICRP_mGyperdecay", "DK_softtissueICRP_mGyperMBqs"):
            for ext in (".hdr", ".img"):
                (tmp_path / (stem + ext)).write_bytes(wheel.read(f"doodle/kernels/{stem}{ext}"))
    k = read_dose_kernel(tmp_path / "DK_softtissueICRP_mGyperdecay.hdr")
    assert k.values_gy_per_decay.shape == (51, 51, 51)
    assert k.spacing_mm == (4.7952, 4.7952, 4.7952)
    v = k.values_gy_per_decay
    assert np.unravel_index(int(np.argmax(v)), v.shape) == (25, 25, 25)
    raw = np.fromfile(str(tmp_path / "DK_softtissueICRP_mGyperdecay.img"), dtype="<f4")
    assert v[25, 25, 25] == pytest.approx(1e-3 * float(raw.max()), rel=1e-12)  # mGy/decay → Gy/decay
    assert 1e-10 < v[25, 25, 25] < 1e-9  # Lu-177, 4.8 mm voxel: ≈ 2e-10 Gy per decay
    # the same kernel stored in mGy/(MBq·s) reads to the same Gy/decay
    per_mbqs = read_dose_kernel(tmp_path / "DK_softtissueICRP_mGyperMBqs.img")
    np.testing.assert_allclose(per_mbqs.values_gy_per_decay, v, rtol=1e-6)
