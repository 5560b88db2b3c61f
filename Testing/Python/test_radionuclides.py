import math

import pytest

from LuDosimetryLib.errors import LuDosimetryError
from LuDosimetryLib.radionuclides import radionuclide


def test_lu177_from_icrp107():
    lu = radionuclide("Lu-177")
    # ICRP 107: T1/2 = 6.647 d; mean electron energy 0.1479 MeV, photons ~0.035 MeV per decay.
    assert lu.half_life_h == pytest.approx(6.647 * 24, rel=1e-9)
    assert lu.electron_energy_mev == pytest.approx(0.1479, abs=5e-4)
    assert 0.03 < lu.photon_energy_mev < 0.04
    assert lu.decay_factor(lu.half_life_s) == pytest.approx(0.5)
    assert lu.decay_constant_per_h == pytest.approx(math.log(2) / lu.half_life_h)


@pytest.mark.parametrize("name", ["Lu177", "177Lu", "lu-177", "^177^Lu"])
def test_spellings(name):
    assert radionuclide(name).name == "Lu-177"


def test_unknown():
    with pytest.raises(LuDosimetryError, match="Xx-999"):
        radionuclide("Xx-999")
