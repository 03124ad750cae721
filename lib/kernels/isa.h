#pragma once
// Runtime ISA selection. AVX-512 kernels are used when the CPU and OS support them;
// KVSIM_FORCE_ISA=scalar forces the scalar reference everywhere.
namespace kvsim::kernels {

enum class Isa { scalar, avx512 };

Isa active_isa();              // decided once (CPUID + XGETBV + KVSIM_FORCE_ISA), then cached
const char* isa_name(Isa isa);
bool cpu_has_avx512();         // hardware/OS capability, ignoring the override
void set_isa_for_testing(Isa isa);  // tests switch ISAs to compare kernels
// The decision active_isa() makes from the KVSIM_FORCE_ISA value (nullptr when unset) and the
// CPU capability: "scalar" forces scalar; anything else (unset, "", "avx512", "auto") picks
// AVX-512 exactly when the CPU and OS support it.
Isa choose_isa(const char* force_env, bool cpu_avx512);

}  // namespace kvsim::kernels
