from setuptools import setup

# Metadata lives in pyproject.toml; this file only wires the cffi extension in.
setup(cffi_modules=["pyautodiff/_build.py:ffibuilder"])
