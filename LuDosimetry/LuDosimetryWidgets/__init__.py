"""Qt helpers of the LuDosimetry panel (a package: Slicer does not load its files as modules)."""
