#include "kernels/isa.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <cpuid.h>

#include "core/error.h"

namespace kvsim::kernels {
namespace {

std::uint64_t read_xcr0() {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<std::uint64_t>(hi) << 32) | lo;
}

CpuIsas detect_cpu() {
  CpuIsas c;
  unsigned a, b, ecx, d;
  if (!__get_cpuid(1, &a, &b, &ecx, &d)) return c;
  const bool osxsave = ecx & (1u << 27), avx = ecx & (1u << 28), f16c = ecx & (1u << 29),
             fma = ecx & (1u << 12);
  if (!osxsave || !avx || !f16c || !fma) return c;
  const std::uint64_t xcr0 = read_xcr0();
  if ((xcr0 & 0x6) != 0x6) return c;  // SSE and AVX (YMM) state
  if (!__get_cpuid_count(7, 0, &a, &b, &ecx, &d)) return c;
  const bool avx2 = b & (1u << 5), bmi2 = b & (1u << 8);
  c.avx2 = avx2 && bmi2;
  // AVX-512: opmask, ZMM_Hi256 and Hi16_ZMM state (XCR0 bits 5-7) and F, DQ, BW, VL. No BF16
  // instruction is used anywhere (bfloat16 widening is a shift), so AVX512_BF16 is not required.
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  c.avx512 = c.avx2 && (xcr0 & 0xE6) == 0xE6 && f && dq && bw && vl;
#ifdef KVSIM_EMULATED_AVX512
  c.avx512 = c.avx2;  // test build: *_avx512.cpp run SIMDe's emulation on AVX2 (CMakeLists.txt)
#endif
  return c;
}

std::atomic<int> g_isa{-1};

}  // namespace

bool CpuIsas::supports(Isa isa) const {
  return isa == Isa::scalar || (isa == Isa::avx2 && avx2) || (isa == Isa::avx512 && avx512);
}

CpuIsas cpu_isas() {
  static const CpuIsas c = detect_cpu();
  return c;
}
bool cpu_has_avx512() { return cpu_isas().avx512; }
bool cpu_has_avx2() { return cpu_isas().avx2; }

Isa choose_isa(const char* force_env, const CpuIsas& cpu) {
  if (!force_env || !*force_env || std::strcmp(force_env, "auto") == 0) return cpu.best();
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (std::strcmp(force_env, isa_name(isa)) != 0) continue;
    if (!cpu.supports(isa))
      throw std::invalid_argument(std::string("this CPU/OS does not support ") + force_env + " (best here: " +
                                  isa_name(cpu.best()) + ")");
    return isa;
  }
  throw std::invalid_argument(std::string("unknown value '") + force_env + "' (use scalar, avx2, avx512 or auto)");
}

void check_isa_setting() {
  try {
    (void)choose_isa(std::getenv("KVSIM_FORCE_ISA"), cpu_isas());
  } catch (const std::invalid_argument& e) {
    throw Error(std::string("KVSIM_FORCE_ISA: ") + e.what());
  }
}

Isa active_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    try {
      v = static_cast<int>(choose_isa(std::getenv("KVSIM_FORCE_ISA"), cpu_isas()));
    } catch (const std::invalid_argument& e) {
      // Only reachable by a program that skipped check_isa_setting(): no kernel set may be
      // substituted silently, and this may run inside a parallel region, so stop here.
      std::fprintf(stderr, "kvsim: error: KVSIM_FORCE_ISA: %s\n", e.what());
      std::_Exit(2);
    }
    g_isa.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

void set_isa_for_testing(Isa isa) {
  const CpuIsas cpu = cpu_isas();
  while (!cpu.supports(isa)) isa = static_cast<Isa>(static_cast<int>(isa) - 1);
  g_isa.store(static_cast<int>(isa));
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace kvsim::kernels
