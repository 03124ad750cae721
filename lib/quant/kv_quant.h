#pragma once
// KV quantization as an exact replay transform (rules doc 2.33): what a quantized cache stores
// for one selection unit's kept rows, and the rows it gives back. Semantics (every step float64,
// the numpy reference in tests/python/test_quant.py follows them bit for bit):
//   asym (KIVI): per group of G values, scale = (max - min) / (2^b - 1) and min rounded to
//     float16; q = clamp(rint((x - min16) / scale16), 0, 2^b - 1); xhat = float32(q scale16 + min16).
//     A group whose float16 scale is 0 (max == min, or a range below float16's resolution) keeps
//     its float32 min in the same 4 bytes: codes 0, xhat = min.
//   sym: scale = max|x| / (2^(b-1) - 1) in float16; q = clamp(rint(x / scale16), -(2^(b-1)-1),
//     2^(b-1)-1); xhat = float32(q scale16); a zero scale: xhat = 0.
//   fp8e4m3 / fp8e5m2: round half to even to the OCP format, saturating (448 / 57344), per tensor
//     with scale 1 (no scale stored).
// Groups: axis=channel (keys' default, KIVI) shares a scale along G consecutive kept tokens of
// one channel; axis=token (values' default) along G consecutive channels of one token (G must
// divide head_dim). The last `residual` kept tokens stay in full precision, and with
// axis=channel also the kept tokens after the last whole group of G (KIVI's residual window).
// bits = 16: that side is not quantized. Full-precision rows are the trace's own values (the
// model's 16-bit cache), counted at 2 bytes per value.
#include <cstdint>
#include <string>
#include <vector>

#include "core/types.h"

namespace kvsim {

enum class QuantScheme { asym, sym, fp8e4m3, fp8e5m2 };
enum class QuantAxis { channel, token };

struct QuantSpec {
  QuantScheme scheme = QuantScheme::asym;
  int kbits = 2, vbits = 2;  // 16: not quantized; fp8 schemes: 8
  i64 group = 32;
  QuantAxis kaxis = QuantAxis::channel, vaxis = QuantAxis::token;
  i64 residual = 128;
};

const char* quant_scheme_name(QuantScheme s);
bool is_fp8(QuantScheme s);
QuantScheme parse_quant_scheme(const std::string& s);  // throws kvsim::Error
const char* quant_axis_name(QuantAxis a);

// One side (keys or values) of one unit: m kept rows of d values, in position order.
struct QuantizedRows {
  std::vector<float> xhat;            // [m][d] what the cache gives back (full-precision rows as given)
  std::vector<std::int16_t> codes;    // [quantized_rows][d] integer codes (fp8: the 8-bit encodings)
  std::vector<double> scale, zero;    // per group, as stored (float16 values; a degenerate group: 0, its min)
  i64 quantized_rows = 0;             // rows held as codes: the first ones (the others full precision)
  double bytes = 0;                   // codes + scales/zero points + 2 bytes per full-precision value
};

// Quantizes m rows of length d with `bits` along `axis` under spec (scheme, group, residual).
// `where` names the data in errors (a float16 overflow of a scale or zero point, a group that
// does not divide d).
QuantizedRows quantize_rows(const float* rows, i64 m, int d, int bits, QuantAxis axis, const QuantSpec& spec,
                            const std::string& where);

// Whether `bits` along `axis` can group a row of d values: token-axis groups of an integer
// scheme run along a row's channels, so the group must divide d.
bool groups_fit(int d, int bits, QuantAxis axis, const QuantSpec& spec);

// Rows of m kept rows held as codes (the first ones; the rest full precision), and the bytes of
// the m rows: what quantize_rows stores, from the counts alone.
i64 quantized_row_count(i64 m, int bits, QuantAxis axis, const QuantSpec& spec);
double quantized_bytes(i64 m, int d, int bits, QuantAxis axis, const QuantSpec& spec);
// Bytes of one row held as codes: d codes of `bits` and its share of the scales and zero points
// (d / group of them either way: a channel group spans `group` rows, a token group `group`
// channels of one row); fp8: one byte per value; 16 bits: a full-precision row. quantized_bytes
// is the coded rows at this rate plus 2 bytes per full-precision value.
double coded_row_bytes(int d, int bits, const QuantSpec& spec);
// Keys and values of m kept rows under spec (quantized_bytes of both sides).
double kept_bytes(i64 m, int d, const QuantSpec& spec);
// The same rows in the model's 16-bit cache: 2 bytes per key and value component.
inline double float16_bytes(i64 m, int d) { return 4.0 * static_cast<double>(m) * d; }

// The float16 value nearest x (half to even), as a double; +-inf beyond float16's range.
double round_to_f16(double x);
// The OCP FP8 encoding of a value already on the format's grid (quant_minifloat's output).
std::uint8_t fp8_encoding(float v, QuantScheme s);

}  // namespace kvsim
