#include "trace/float_narrow.h"

#include <cmath>
#include <cstring>

namespace kvsim {

static std::uint32_t bits_of(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

std::uint16_t float_to_f16(float x) {
  const std::uint32_t b = bits_of(x);
  const std::uint16_t sign = static_cast<std::uint16_t>((b >> 16) & 0x8000u);
  const std::uint32_t a = b & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;             // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;            // rounds to >= 65520: inf
  if (a < 0x38800000u) {                                  // below 2^-14: subnormal half
    // x * 2^24 is exact; nearbyint rounds half to even in the default rounding mode.
    const float m = std::nearbyint(std::fabs(x) * 16777216.0f);
    return sign | static_cast<std::uint16_t>(m);          // m == 1024 encodes 2^-14 correctly
  }
  const std::uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
  return sign | static_cast<std::uint16_t>((rounded - 0x38000000u) >> 13);
}

std::uint16_t float_to_bf16(float x) {
  const std::uint32_t b = bits_of(x);
  if ((b & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((b >> 16) | 0x40u);
  return static_cast<std::uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// out[i] = convert(in[i]); returns the first i whose result has every exponent bit (exp_mask)
// set, i.e. is inf or NaN, or -1.
template <class Convert>
static i64 narrow(const float* in, std::uint16_t* out, i64 n, Convert convert, unsigned exp_mask) {
  i64 bad = -1;
  for (i64 i = 0; i < n; ++i) {
    out[i] = convert(in[i]);
    if (bad < 0 && (out[i] & exp_mask) == exp_mask) bad = i;
  }
  return bad;
}

i64 narrow_to_f16(const float* in, std::uint16_t* out, i64 n) { return narrow(in, out, n, float_to_f16, 0x7c00u); }

i64 narrow_to_bf16(const float* in, std::uint16_t* out, i64 n) { return narrow(in, out, n, float_to_bf16, 0x7f80u); }

}  // namespace kvsim
