#include "quant/kv_quant.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/kernels.h"

namespace kvsim {

namespace {

// Bytes stored per group of an integer scheme: a float16 scale (and zero point for asym).
double group_bytes(QuantScheme s) { return s == QuantScheme::sym ? 2.0 : 4.0; }

struct Fp8Format {
  int mant, min_exp, bias;
  double max;
};
// OCP 8-bit floating point (OFP8): E4M3 (bias 7, no infinities, max 448) and E5M2 (bias 15, max 57344).
Fp8Format fp8_format(QuantScheme s) {
  return s == QuantScheme::fp8e4m3 ? Fp8Format{3, -6, 7, 448.0} : Fp8Format{2, -14, 15, 57344.0};
}

}  // namespace

bool is_fp8(QuantScheme s) { return s == QuantScheme::fp8e4m3 || s == QuantScheme::fp8e5m2; }

const char* quant_scheme_name(QuantScheme s) {
  switch (s) {
    case QuantScheme::asym: return "asym";
    case QuantScheme::sym: return "sym";
    case QuantScheme::fp8e4m3: return "fp8e4m3";
    case QuantScheme::fp8e5m2: return "fp8e5m2";
  }
  return "?";
}

QuantScheme parse_quant_scheme(const std::string& s) {
  for (QuantScheme q : {QuantScheme::asym, QuantScheme::sym, QuantScheme::fp8e4m3, QuantScheme::fp8e5m2})
    if (s == quant_scheme_name(q)) return q;
  fail("scheme", s, "must be asym, sym, fp8e4m3 or fp8e5m2");
}

const char* quant_axis_name(QuantAxis a) { return a == QuantAxis::channel ? "channel" : "token"; }

double round_to_f16(double x) {
  if (!std::isfinite(x)) return x;
  const double a = std::abs(x);
  int e = 0;
  std::frexp(a, &e);  // a = f 2^e, f in [0.5, 1)
  const double step = std::ldexp(1.0, std::max(e - 1, -14) - 10);  // 10 mantissa bits; subnormal step 2^-24
  const double r = std::nearbyint(a / step) * step;
  return std::copysign(r > 65504.0 ? INFINITY : r, x);
}

std::uint8_t fp8_encoding(float v, QuantScheme s) {
  const Fp8Format f = fp8_format(s);
  const std::uint8_t sign = std::signbit(v) ? 0x80 : 0;
  const double a = std::abs(static_cast<double>(v));
  if (a == 0) return sign;
  int e = 0;
  std::frexp(a, &e);
  const int lead = e - 1;
  if (lead < f.min_exp)  // subnormal: exponent field 0, mantissa a / 2^(min_exp - mant)
    return sign | static_cast<std::uint8_t>(std::ldexp(a, f.mant - f.min_exp));
  const int mant = static_cast<int>(std::ldexp(a, f.mant - lead)) - (1 << f.mant);
  return sign | static_cast<std::uint8_t>(((lead + f.bias) << f.mant) | mant);
}

bool groups_fit(int d, int bits, QuantAxis axis, const QuantSpec& spec) {
  return bits >= 16 || is_fp8(spec.scheme) || axis == QuantAxis::channel || d % spec.group == 0;
}

i64 quantized_row_count(i64 m, int bits, QuantAxis axis, const QuantSpec& spec) {
  if (bits >= 16) return 0;
  const i64 body = std::max<i64>(0, m - spec.residual);
  return !is_fp8(spec.scheme) && axis == QuantAxis::channel ? body / spec.group * spec.group : body;
}

double coded_row_bytes(int d, int bits, const QuantSpec& spec) {
  if (bits >= 16) return 2.0 * d;
  if (is_fp8(spec.scheme)) return static_cast<double>(d);
  return static_cast<double>(d) * bits / 8.0 +
         static_cast<double>(d) / static_cast<double>(spec.group) * group_bytes(spec.scheme);
}

double quantized_bytes(i64 m, int d, int bits, QuantAxis axis, const QuantSpec& spec) {
  // Whole groups counted in integers (exact for any group size); coded_row_bytes per row.
  const i64 mq = quantized_row_count(m, bits, axis, spec), n = mq * d;
  const double full = 2.0 * static_cast<double>((m - mq) * d);
  if (mq == 0) return full;
  if (is_fp8(spec.scheme)) return full + static_cast<double>(n);
  return full + static_cast<double>(n) * bits / 8.0 + static_cast<double>(n / spec.group) * group_bytes(spec.scheme);
}

double kept_bytes(i64 m, int d, const QuantSpec& spec) {
  return quantized_bytes(m, d, spec.kbits, spec.kaxis, spec) + quantized_bytes(m, d, spec.vbits, spec.vaxis, spec);
}

QuantizedRows quantize_rows(const float* rows, i64 m, int d, int bits, QuantAxis axis, const QuantSpec& spec,
                            const std::string& where) {
  QuantizedRows out;
  out.xhat.assign(rows, rows + m * d);
  const i64 G = spec.group;
  if (!groups_fit(d, bits, axis, spec))
    fail(where, "group", std::to_string(G) + " does not divide head_dim " + std::to_string(d) +
                             " (axis=token groups run along a row's channels)");
  const i64 mq = quantized_row_count(m, bits, axis, spec);
  out.quantized_rows = mq;
  out.bytes = quantized_bytes(m, d, bits, axis, spec);
  if (mq == 0) return out;
  const i64 n = mq * d;
  out.codes.assign(n, 0);
  if (is_fp8(spec.scheme)) {
    const Fp8Format f = fp8_format(spec.scheme);
    kernels::quant_minifloat(rows, n, f.mant, f.min_exp, f.max, out.xhat.data());
    for (i64 i = 0; i < n; ++i) out.codes[i] = fp8_encoding(out.xhat[i], spec.scheme);
    return out;
  }
  // Groups made contiguous: axis=token rows are already (G channels of one token at a time);
  // axis=channel takes G tokens of one channel per group, token block by token block.
  const bool by_channel = axis == QuantAxis::channel;
  const i64 groups = n / G;
  std::vector<float> x(static_cast<std::size_t>(n));
  auto at = [&](i64 k) -> i64 {  // row-major index of the k-th value in group order
    if (!by_channel) return k;
    const i64 grp = k / G, i = k % G, block = grp / d, c = grp % d;
    return (block * G + i) * d + c;
  };
  for (i64 k = 0; k < n; ++k) x[k] = rows[at(k)];
  std::vector<float> mn(groups), mx(groups);
  kernels::group_min_max(x.data(), groups, G, mn.data(), mx.data());
  out.scale.resize(groups);
  out.zero.resize(groups);
  std::vector<double> scale_used(groups), zero_used(groups);
  const bool sym = spec.scheme == QuantScheme::sym;
  if (sym && bits < 2) fail(where, "bits", "sym needs at least 2 bits (a sign and a level)");
  const int levels = sym ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
  for (i64 i = 0; i < groups; ++i) {
    const double lo = mn[i], hi = mx[i];
    const double s16 = round_to_f16(sym ? std::max(std::abs(lo), std::abs(hi)) / levels : (hi - lo) / levels);
    const double z16 = sym ? 0.0 : round_to_f16(lo);
    if (!std::isfinite(s16) || !std::isfinite(z16))
      fail(where, "scale", "a group's " + std::string(std::isfinite(s16) ? "minimum" : "range") + " (" +
                               std::to_string(std::isfinite(s16) ? lo : hi - lo) + ") exceeds float16");
    if (s16 == 0) {  // degenerate group: its float32 min (asym) or 0 (sym), codes 0
      out.scale[i] = 0;
      out.zero[i] = sym ? 0.0 : lo;
      scale_used[i] = 1.0;
      zero_used[i] = out.zero[i];
    } else {
      out.scale[i] = scale_used[i] = s16;
      out.zero[i] = zero_used[i] = z16;
    }
  }
  std::vector<std::int16_t> codes(n);
  std::vector<float> xhat(n);
  kernels::quant_affine(x.data(), groups, G, scale_used.data(), zero_used.data(), sym ? -levels : 0, levels,
                        codes.data(), xhat.data());
  for (i64 k = 0; k < n; ++k) {
    out.codes[at(k)] = codes[k];
    out.xhat[at(k)] = xhat[k];
  }
  return out;
}

}  // namespace kvsim
