// AVX2 perturbation-metric kernels. split_mass_sums: one pass, the 4-way split by AND / ANDNOT
// with the mask (reassociation only; a * nu is one rounding, as in the reference).
// compress_masked: a permutation looked up from the 8 mask bits, then a store of exactly the
// kept count, bit-exact. project_panel: 4 rows x 16 columns of
// FMA accumulators per pass over one packed panel, reduced to l1 / sq per row.
#include "kernels/kernels.h"
#include "kernels/simd_avx2.h"

namespace kvsim::kernels::avx2 {

void split_mass_sums(const float* a, const float* nu, const std::uint8_t* mask, i64 n, float out[4]) {
  __m256 k0 = _mm256_setzero_ps(), e0 = k0, kn0 = k0, en0 = k0;
  for (i64 j = 0; j < n; j += 8) {
    const __m256i t = tail_mask(n - j);
    const __m256 a0 = load_tail(a + j, t);  // tail lanes are 0 in a and w
    const __m256 w0 = _mm256_mul_ps(a0, load_tail(nu + j, t));
    const __m256 m0 = byte_mask(mask + j, n - j);
    k0 = _mm256_add_ps(k0, _mm256_and_ps(m0, a0));
    e0 = _mm256_add_ps(e0, _mm256_andnot_ps(m0, a0));
    kn0 = _mm256_add_ps(kn0, _mm256_and_ps(m0, w0));
    en0 = _mm256_add_ps(en0, _mm256_andnot_ps(m0, w0));
  }
  out[0] = hsum(k0);
  out[1] = hsum(e0);
  out[2] = hsum(kn0);
  out[3] = hsum(en0);
}

namespace {

// For each 8-bit lane mask, the indices of its set lanes first (the permutation that packs them).
struct CompressTable {
  alignas(32) std::int32_t idx[256][8];
  constexpr CompressTable() : idx() {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int l = 0; l < 8; ++l)
        if (m & (1 << l)) idx[m][k++] = l;
      for (; k < 8; ++k) idx[m][k] = 0;
    }
  }
};
constexpr CompressTable kCompress{};

}  // namespace

i64 compress_masked(const float* x, const std::uint8_t* mask, i64 n, float* out) {
  // A table lookup, not BMI2 pext: pext is microcoded (~250 cycles) on AMD before Zen 3.
  i64 m = 0;
  for (i64 j = 0; j < n; j += 8) {
    const unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(byte_mask(mask + j, n - j)));
    if (!bits) continue;
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress.idx[bits]));
    const __m256 v = _mm256_permutevar8x32_ps(load_tail(x + j, tail_mask(n - j)), perm);
    const int c = __builtin_popcount(bits);
    if (c == 8)
      _mm256_storeu_ps(out + m, v);
    else
      store_tail(out + m, tail_mask(c), v);
    m += c;
  }
  return m;
}

namespace {

// MR rows x the 16 columns [q0, q0 + 16) of the panel.
template <int MR>
void panel_block(const float* x, i64 d, const float* panel, i64 q0, __m256 l1[MR], __m256 sq[MR], float* y) {
  __m256 acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (i64 c = 0; c < d; ++c) {
    const float* w = panel + c * kPanel + q0;
    const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
    for (int r = 0; r < MR; ++r) {
      const __m256 xb = _mm256_broadcast_ss(x + r * d + c);
      acc[r][0] = _mm256_fmadd_ps(xb, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(xb, w1, acc[r][1]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    l1[r] = _mm256_add_ps(l1[r], _mm256_add_ps(abs_ps(acc[r][0]), abs_ps(acc[r][1])));
    sq[r] = _mm256_fmadd_ps(acc[r][0], acc[r][0], sq[r]);
    sq[r] = _mm256_fmadd_ps(acc[r][1], acc[r][1], sq[r]);
    if (y)
      for (int h = 0; h < 2; ++h) {
        float* yp = y + r * kPanel + q0 + 8 * h;
        _mm256_storeu_ps(yp, _mm256_add_ps(_mm256_loadu_ps(yp), acc[r][h]));
      }
  }
}

template <int MR>
void panel_rows(const float* x, i64 d, const float* panel, float* l1, float* sq, float* y) {
  __m256 l1v[MR], sqv[MR];
  for (int r = 0; r < MR; ++r) l1v[r] = sqv[r] = _mm256_setzero_ps();
  for (i64 q0 = 0; q0 < kPanel; q0 += 16) panel_block<MR>(x, d, panel, q0, l1v, sqv, y);
  for (int r = 0; r < MR; ++r) {
    l1[r] += hsum(l1v[r]);
    if (sq) sq[r] += hsum(sqv[r]);
  }
}

}  // namespace

void project_panel(const float* x, i64 n, i64 d, const float* panel, float* l1, float* sq, float* y) {
  static_assert(kPanel % 16 == 0, "the micro-kernel covers 16 columns at a time");
  i64 i = 0;
  for (; i + 4 <= n; i += 4)
    panel_rows<4>(x + i * d, d, panel, l1 + i, sq ? sq + i : nullptr, y ? y + i * kPanel : nullptr);
  float* s = sq ? sq + i : nullptr;
  float* yy = y ? y + i * kPanel : nullptr;
  switch (n - i) {
    case 1: panel_rows<1>(x + i * d, d, panel, l1 + i, s, yy); break;
    case 2: panel_rows<2>(x + i * d, d, panel, l1 + i, s, yy); break;
    case 3: panel_rows<3>(x + i * d, d, panel, l1 + i, s, yy); break;
    default: break;
  }
}

}  // namespace kvsim::kernels::avx2
