"""The package version, in a leaf module so that any stage can stamp it on what it writes
without importing the package's front door (which imports every stage)."""

__version__ = "0.1.0"
