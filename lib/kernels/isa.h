#pragma once
// Runtime ISA selection: the best kernel set the CPU and OS support (AVX-512, else AVX2 + FMA,
// else the scalar reference), or the one KVSIM_FORCE_ISA names: scalar, avx2 or avx512 (unset,
// "" or "auto": the best). The variable is checked strictly: an unknown value, or an ISA this
// CPU lacks, is an error (check_isa_setting), never silently replaced by another kernel set.
#include <string>

namespace kvsim::kernels {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };
constexpr int kIsaCount = 3;

// What the CPU and OS support (CPUID feature bits plus the XGETBV state the OS saves).
struct CpuIsas {
  bool avx2 = false;    // AVX2 + FMA + F16C + BMI2, YMM state saved
  bool avx512 = false;  // AVX-512 F/DQ/BW/VL + the AVX2 set, ZMM and opmask state saved
  bool supports(Isa isa) const;
  Isa best() const { return avx512 ? Isa::avx512 : (avx2 ? Isa::avx2 : Isa::scalar); }
};
CpuIsas cpu_isas();
bool cpu_has_avx512();
bool cpu_has_avx2();

// The decision for a KVSIM_FORCE_ISA value (nullptr when unset) on a CPU; throws
// std::invalid_argument with the reason (unknown name, or an ISA the CPU lacks).
Isa choose_isa(const char* force_env, const CpuIsas& cpu);
// Throws kvsim::Error naming KVSIM_FORCE_ISA when its value is not usable here. Entry points
// (the CLI, the Python module, the test mains) call it first, so that the lazy active_isa()
// below never meets a bad value in the middle of a computation.
void check_isa_setting();

Isa active_isa();              // decided once (cpu_isas + KVSIM_FORCE_ISA), then cached
const char* isa_name(Isa isa);
void set_isa_for_testing(Isa isa);  // tests switch ISAs to compare kernels; an unsupported one is
                                    // replaced by the best supported below it

}  // namespace kvsim::kernels
