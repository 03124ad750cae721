"""The BLAS kernels of the engine, chosen before it loads (lib/core/blas_kernels.h has the why).

OpenBLAS reads OPENBLAS_CORETYPE once, when the library loads with `import kvsim._kvsim`. The CLI
re-executes itself when OpenBLAS picked kernels below the CPU; a Python process cannot, so the
package applies the same rule before the import: KVSIM_BLAS_CORETYPE=name forces a core
("native" keeps OpenBLAS's own choice), a user's OPENBLAS_CORETYPE is kept; otherwise the core
OpenBLAS picks by itself is probed in a child process (19 ms) and, only when it is below the CPU's
best vector ISA, replaced by that ISA's core (SkylakeX for AVX-512, Haswell for AVX2), exactly as
the CLI does. Kernels of the same level are not interchangeable bit for bit (Cooperlake's sgemm
blocking differs from SkylakeX's), so the CLI and the module must make the same choice for their
rows to be identical. kvsim.blas() tells what ran and who chose it.
"""
import os
import subprocess
import sys


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_coretype():
    flags = _cpu_flags()
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return ""


# The levels of lib/core/blas_kernels.cpp blas_core_level (tests/python/test_module_edges.py
# checks both agree): 3 AVX-512, 2 AVX2, 1 AVX, 0 generic or unknown.
_CORE_LEVELS = {"skylakex": 3, "cooperlake": 3, "sapphirerapids": 3, "haswell": 2, "zen": 2, "skylake": 2,
                "sandybridge": 1, "bulldozer": 1, "piledriver": 1, "steamroller": 1, "excavator": 1}


def core_level(core):
    return _CORE_LEVELS.get(core.lower(), 0)


_PROBE = ("import ctypes; lib = ctypes.CDLL('libopenblas.so.0'); lib.openblas_get_corename.restype = ctypes.c_char_p; "
          "print(lib.openblas_get_corename().decode())")


def native_coretype():
    """The core OpenBLAS picks by itself on this CPU, from a child process (this one must not load
    OpenBLAS before the choice); "" when it cannot be probed."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "KVSIM_BLAS_CORETYPE")}
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def _openblas_loaded():
    try:
        with open("/proc/self/maps") as f:
            return "libopenblas" in f.read()
    except OSError:
        return False


def choose_before_import():
    """Sets OPENBLAS_CORETYPE for the engine's load; returns (chosen_by, value) for kvsim.blas()."""
    forced = os.environ.get("KVSIM_BLAS_CORETYPE", "")
    if forced.lower() == "native":
        return "OpenBLAS", ""
    if _openblas_loaded():  # something loaded it first: its choice stands, blas() shows it
        return "", ""
    if forced:
        os.environ["OPENBLAS_CORETYPE"] = forced
        return "KVSIM_BLAS_CORETYPE", forced
    if os.environ.get("OPENBLAS_CORETYPE"):
        return "OPENBLAS_CORETYPE", os.environ["OPENBLAS_CORETYPE"]
    want = cpu_coretype()
    if want and core_level(native_coretype()) < core_level(want):  # the CLI's rule
        os.environ["OPENBLAS_CORETYPE"] = want
        return "kvsim", want
    return "OpenBLAS", ""


def after_import(choice):
    """Once the engine is loaded: the variable is no longer needed, and programs started from this
    process (the CLI in a subprocess) decide for themselves."""
    chosen_by, value = choice
    if chosen_by in ("kvsim", "KVSIM_BLAS_CORETYPE") and os.environ.get("OPENBLAS_CORETYPE") == value:
        del os.environ["OPENBLAS_CORETYPE"]
