"""The BLAS kernels of the engine, chosen before it loads (lib/core/blas_kernels.h has the why).

OpenBLAS reads OPENBLAS_CORETYPE once, when the library loads with `import kvsim._kvsim`. The CLI
re-executes itself when OpenBLAS picked kernels below the CPU; a Python process cannot, so the
package applies the same rule from the CPU's flags before the import: KVSIM_BLAS_CORETYPE=name
forces a core ("native" keeps OpenBLAS's own choice), a user's OPENBLAS_CORETYPE is kept,
otherwise the core for the CPU's best vector ISA (SkylakeX for AVX-512, Haswell for AVX2) is set.
For fp32 those are the kernels OpenBLAS itself uses on the CPUs it knows (Zen, Cooperlake and
Sapphire Rapids reuse them for sgemm). kvsim.blas() tells what ran and who chose it.
"""
import os


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
    if want:
        os.environ["OPENBLAS_CORETYPE"] = want
        return "kvsim", want
    return "OpenBLAS", ""


def after_import(choice):
    """Once the engine is loaded: the variable is no longer needed, and programs started from this
    process (the CLI in a subprocess) decide for themselves."""
    chosen_by, value = choice
    if chosen_by in ("kvsim", "KVSIM_BLAS_CORETYPE") and os.environ.get("OPENBLAS_CORETYPE") == value:
        del os.environ["OPENBLAS_CORETYPE"]
