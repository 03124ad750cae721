#include "kernels/isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include <cpuid.h>

namespace kvsim::kernels {
namespace {

std::uint64_t read_xcr0() {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<std::uint64_t>(hi) << 32) | lo;
}

Isa detect() { return choose_isa(std::getenv("KVSIM_FORCE_ISA"), cpu_has_avx512()); }

std::atomic<int> g_isa{-1};

}  // namespace

bool cpu_has_avx512() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool osxsave = c & (1u << 27), f16c = c & (1u << 29), fma = c & (1u << 12);
  if (!osxsave || !f16c || !fma) return false;
  // OS must save opmask, ZMM_Hi256 and Hi16_ZMM state (XCR0 bits 5,6,7) plus SSE/AVX (1,2).
  if ((read_xcr0() & 0xE6) != 0xE6) return false;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  return f && dq && bw && vl;
}

Isa active_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(detect());
    g_isa.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

void set_isa_for_testing(Isa isa) {
  if (isa == Isa::avx512 && !cpu_has_avx512()) isa = Isa::scalar;
  g_isa.store(static_cast<int>(isa));
}

Isa choose_isa(const char* force_env, bool cpu_avx512) {
  if (force_env && std::strcmp(force_env, "scalar") == 0) return Isa::scalar;
  return cpu_avx512 ? Isa::avx512 : Isa::scalar;
}

const char* isa_name(Isa isa) { return isa == Isa::avx512 ? "avx512" : "scalar"; }

}  // namespace kvsim::kernels
