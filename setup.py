"""Builds prunellm's native CPU kernels (src/prunellm/runtime/native/csrc) at install time.

All metadata lives in pyproject.toml; this file only adds the compiled part. The library is a
plain C++ shared library loaded through ctypes (runtime/cpu_kernels.py), with no torch or
Python headers in its build. Each source file is compiled with the flags of its ISA family
(avx2.cpp with -mavx2 ..., avx512.cpp with -mavx512* ..., avx512bf16.cpp adding -mavx512bf16,
int8_avx2.cpp as avx2.cpp, int8.cpp adding -mavx512vnni, amx.cpp adding -mamx-tile -mamx-bf16);
the library picks one at run time by the CPU's features. On other machines only the portable
file is built. When no compiler works the install still succeeds, with one warning, and
prunellm uses its torch path.
PRUNELLM_NATIVE=off in the environment skips the compile on purpose (same torch path).
"""

from __future__ import annotations

import os
import platform
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = "src/prunellm/runtime/native/csrc"
X86 = platform.machine().lower() in ("x86_64", "amd64", "x64", "i686", "i386")
ISA_FLAGS = {
    "portable.cpp": [],
    "api.cpp": [],
    "decode_block.cpp": [],
    "quantized_x.cpp": [],
    "avx2.cpp": ["-mavx2", "-mfma", "-mf16c", "-mpopcnt", "-mbmi", "-mbmi2"],
    "avx512.cpp": ["-mavx2", "-mfma", "-mf16c", "-mpopcnt", "-mbmi", "-mbmi2", "-mavx512f", "-mavx512bw",
                   "-mavx512vl", "-mavx512dq", "-mavx512vbmi2"],
    "avx512bf16.cpp": ["-mavx2", "-mfma", "-mf16c", "-mpopcnt", "-mbmi", "-mbmi2", "-mavx512f", "-mavx512bw",
                       "-mavx512vl", "-mavx512dq", "-mavx512vbmi2", "-mavx512bf16"],
    "int8_avx2.cpp": ["-mavx2", "-mfma", "-mf16c", "-mpopcnt", "-mbmi", "-mbmi2"],
    "int8.cpp": ["-mavx2", "-mfma", "-mf16c", "-mpopcnt", "-mbmi", "-mbmi2", "-mavx512f", "-mavx512bw",
                 "-mavx512vl", "-mavx512dq", "-mavx512vbmi2", "-mavx512vnni"],
    "amx.cpp": ["-mavx2", "-mfma", "-mf16c", "-mpopcnt", "-mbmi", "-mbmi2", "-mavx512f", "-mavx512bw",
                "-mavx512vl", "-mavx512dq", "-mavx512vbmi2", "-mavx512bf16", "-mamx-tile", "-mamx-bf16"],
}
X86_ONLY = ("avx2.cpp", "avx512.cpp", "avx512bf16.cpp", "int8_avx2.cpp", "int8.cpp", "amx.cpp")
SOURCES = [name for name in ISA_FLAGS if X86 or name not in X86_ONLY]
# -Wno-maybe-uninitialized: GCC 12 warns inside its own _mm512_reduce_add_ps.
COMMON = ["-O3", "-g0", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-fno-math-errno", "-fno-trapping-math", "-pthread",
          "-Wno-maybe-uninitialized"]


class BuildNative(build_ext):
    """Compiles each source with its own ISA flags; a failure warns instead of failing the install."""

    def build_extension(self, ext: Extension) -> None:
        if os.environ.get("PRUNELLM_NATIVE", "").strip().lower() in ("0", "off", "no", "false"):
            warnings.warn("prunellm: PRUNELLM_NATIVE=off: native CPU kernels not built; the torch path is used")
            return
        if self.compiler.compiler_type == "msvc":
            warnings.warn("prunellm: native CPU kernels are not built with MSVC; the torch path is used")
            return
        try:
            objects = []
            # AMX needs GCC 11 / Clang 12 or newer: an older compiler builds every other level
            # (api.cpp then leaves the amx level out) rather than none
            sources = [source for source in ext.sources if os.path.basename(source) != "amx.cpp"]
            without_amx = []
            for source in set(ext.sources) - set(sources):
                try:
                    objects += self._compile(source, ext)
                except Exception as error:
                    warnings.warn(f"prunellm: the AMX kernels not built ({type(error).__name__}); the other "
                                  "levels are")
                    without_amx = ["-DPNL_NO_AMX"]
            for source in sources:
                objects += self._compile(source, ext, without_amx if os.path.basename(source) == "api.cpp" else [])
            self.compiler.link_shared_object(objects, self.get_ext_fullpath(ext.name), extra_postargs=["-pthread"],
                                             target_lang="c++")
        except Exception as error:  # any compiler or linker failure: the package still installs
            warnings.warn(f"prunellm: native CPU kernels not built ({type(error).__name__}: "
                          f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}); "
                          "compressed layers run through the torch path on CPU")

    def _compile(self, source: str, ext: Extension, extra: list[str] | None = None) -> list[str]:
        flags = COMMON + ISA_FLAGS[os.path.basename(source)] + (extra or [])
        return self.compiler.compile([source], output_dir=self.build_temp, include_dirs=[CSRC], extra_postargs=flags,
                                     depends=ext.depends)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # a ctypes library: no PyInit_ symbol to export on Linux and macOS


native = Extension("prunellm.runtime.native._prunellm_cpu", sources=[f"{CSRC}/{name}" for name in SOURCES],
                   depends=[f"{CSRC}/{name}" for name in ("kernels.h", "attend.inc", "bf16_sources.inc",
                                                          "prefetch.inc", "avx2_sum.inc")], language="c++")

setup(ext_modules=[native], cmdclass={"build_ext": BuildNative})
