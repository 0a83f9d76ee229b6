"""Builds the one compiled module, ``defi_ws._core``, from ``defi_ws/_core.pyx``.

Environment switches:
    DEFI_WS_ANNOTATE=1  write the ``cython -a`` HTML report next to the .pyx.
    DEFI_WS_DEBUG=1     compile with -O0 -g and Cython bounds/None checks on.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

ANNOTATE = os.environ.get("DEFI_WS_ANNOTATE") == "1"
DEBUG = os.environ.get("DEFI_WS_DEBUG") == "1"

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "nonecheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
    "freethreading_compatible": False,
}

extension = Extension(
    "defi_ws._core",
    sources=["defi_ws/_core.pyx"],
    extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2"],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives=DIRECTIVES,
        annotate=ANNOTATE,
    ),
)
