#pragma once
// Runtime ISA selection. AVX-512 kernels are used when the CPU and OS support them;
// KVSIM_FORCE_ISA=scalar forces the scalar reference everywhere.
namespace kvsim::kernels {

enum class Isa { scalar, avx512 };

Isa active_isa();              // decided once (CPUID + XGETBV + KVSIM_FORCE_ISA), then cached
const char* isa_name(Isa isa);
bool cpu_has_avx512();         // hardware/OS capability, ignoring the override
void set_isa_for_testing(Isa isa);  // tests switch ISAs to compare kernels

}  // namespace kvsim::kernels
