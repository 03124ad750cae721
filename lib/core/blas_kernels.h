#pragma once
// Which kernels the BLAS runs, and making it run the right ones. OpenBLAS picks its kernels
// when it loads (DYNAMIC_ARCH): Debian 12's 0.3.21 does not know recent CPUs (Sapphire/Emerald
// Rapids, ...) and falls back to its SSE3 "Prescott" kernels, 5x slower sgemm on AVX-512. The
// choice can only be changed before the library loads, through OPENBLAS_CORETYPE: the CLI
// re-executes itself once with it set (use_cpu_blas_kernels), the Python package sets it before
// importing the engine (kvsim/_blas.py, the same rule).
#include <string>

#include "core/json.h"

namespace kvsim {

struct BlasInfo {
  std::string name = "OpenBLAS";
  std::string config;     // openblas_get_config(): version and build options
  std::string core;       // openblas_get_corename(): the kernels running now
  std::string threading;  // sequential | pthreads | openmp
  std::string chosen_by;  // "OpenBLAS" (its own detection), "OPENBLAS_CORETYPE" (the user),
                          // "KVSIM_BLAS_CORETYPE" (the user, through kvsim) or "kvsim" (corrected)
  std::string corrected_from;  // with chosen_by == "kvsim": the generic core OpenBLAS picked
};

BlasInfo blas_info();
// For an embedder that chose the core before loading the library (the Python package): who chose.
void note_blas_choice(const std::string& chosen_by);
Json blas_json(const BlasInfo& b);

// The OpenBLAS core type for this CPU's best vector ISA: "SkylakeX" (AVX-512 F/BW/DQ/VL),
// "Haswell" (AVX2 + FMA) or "" (nothing better than SSE).
std::string cpu_blas_coretype();
// The vector ISA level a core name's kernels use: 0 generic/SSE, 1 AVX, 2 AVX2, 3 AVX-512.
int blas_core_level(const std::string& core);

// At the start of main (before MPI_Init or threads): when the BLAS runs kernels below the CPU's
// level and neither OPENBLAS_CORETYPE nor KVSIM_BLAS_CORETYPE says otherwise, re-executes this
// program once with OPENBLAS_CORETYPE set (KVSIM_BLAS_CORETYPE=name forces a core, "native"
// keeps OpenBLAS's own choice). Returns only when no re-execution was needed or it failed.
void use_cpu_blas_kernels(char** argv);

}  // namespace kvsim
