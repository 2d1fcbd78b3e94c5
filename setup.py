"""Build libpmemmetrics.so from csrc/, then the CFFI extension that links it.

Metadata lives in pyproject.toml.  The shared library and its header are
placed inside the package (pmem_metrics/lib, pmem_metrics/include) so that an
installed package carries them, and the extension finds the library through
its $ORIGIN/lib rpath.
"""

import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_ext import build_ext

CSRC = "csrc"
C_FLAGS = ["-std=c11", "-O2", "-pthread", "-Wall", "-Wextra"]


class BuildExtWithLibrary(build_ext):
    """Build libpmemmetrics.so next to where the extension goes, then the extension."""

    def _package_dir(self) -> str:
        return os.path.dirname(self.get_ext_fullpath(self.extensions[0].name))

    def build_extensions(self) -> None:
        pkg = self._package_dir()
        lib_dir = os.path.join(pkg, "lib")
        include_dir = os.path.join(pkg, "include")
        objects = self.compiler.compile(
            sorted(glob.glob(os.path.join(CSRC, "*.c"))),
            output_dir=self.build_temp,
            extra_postargs=C_FLAGS,
        )
        self.compiler.link_shared_object(
            objects,
            "libpmemmetrics.so",
            output_dir=lib_dir,
            extra_postargs=["-pthread", "-Wl,-soname,libpmemmetrics.so"],
        )
        os.makedirs(include_dir, exist_ok=True)
        shutil.copy2(os.path.join(CSRC, "pmem_metrics.h"), include_dir)
        for ext in self.extensions:
            ext.library_dirs.append(lib_dir)
        super().build_extensions()

    def get_outputs(self) -> list:
        pkg = self._package_dir()
        return [
            *super().get_outputs(),
            os.path.join(pkg, "lib", "libpmemmetrics.so"),
            os.path.join(pkg, "include", "pmem_metrics.h"),
        ]


setup(
    cffi_modules=["pmem_metrics/_ffi_build.py:ffi"],
    ext_package="pmem_metrics",
    cmdclass={"build_ext": BuildExtWithLibrary},
    zip_safe=False,
)
