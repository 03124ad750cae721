// AVX-512 perturbation-metric kernels. split_mass_sums: one pass, 4-way split by mask with
// 2 accumulators per sum (reassociation only, plus FMA for a*nu). compress_masked: vcompressps
// into a register then a masked store (the memory form of vcompressps is microcoded on Zen 4),
// bit-exact. project_panel: a 6 x 64 register-blocked FMA micro-kernel over one packed panel,
// the 16-lane row results reduced to l1 / sq at the end of the panel (reassociated sums).
#include "kernels/kernels.h"
#include "kernels/simd_avx512.h"

namespace kvsim::kernels::avx512 {

void split_mass_sums(const float* a, const float* nu, const std::uint8_t* mask, i64 n, float out[4]) {
  __m512 k0 = _mm512_setzero_ps(), k1 = k0, e0 = k0, e1 = k0, kn0 = k0, kn1 = k0, en0 = k0, en1 = k0;
  i64 j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 a0 = _mm512_loadu_ps(a + j), a1 = _mm512_loadu_ps(a + j + 16);
    const __m512 w0 = _mm512_mul_ps(a0, _mm512_loadu_ps(nu + j));
    const __m512 w1 = _mm512_mul_ps(a1, _mm512_loadu_ps(nu + j + 16));
    const __mmask16 m0 = byte_mask(mask + j, 0xFFFF), m1 = byte_mask(mask + j + 16, 0xFFFF);
    k0 = _mm512_mask_add_ps(k0, m0, k0, a0);
    e0 = _mm512_mask_add_ps(e0, static_cast<__mmask16>(~m0), e0, a0);
    kn0 = _mm512_mask_add_ps(kn0, m0, kn0, w0);
    en0 = _mm512_mask_add_ps(en0, static_cast<__mmask16>(~m0), en0, w0);
    k1 = _mm512_mask_add_ps(k1, m1, k1, a1);
    e1 = _mm512_mask_add_ps(e1, static_cast<__mmask16>(~m1), e1, a1);
    kn1 = _mm512_mask_add_ps(kn1, m1, kn1, w1);
    en1 = _mm512_mask_add_ps(en1, static_cast<__mmask16>(~m1), en1, w1);
  }
  for (; j < n; j += 16) {
    const __mmask16 t = tail_mask(n - j);
    const __m512 a0 = _mm512_maskz_loadu_ps(t, a + j);
    const __m512 w0 = _mm512_mul_ps(a0, _mm512_maskz_loadu_ps(t, nu + j));
    const __mmask16 m0 = byte_mask(mask + j, t), ev = static_cast<__mmask16>(~m0 & t);
    k0 = _mm512_mask_add_ps(k0, m0, k0, a0);
    e0 = _mm512_mask_add_ps(e0, ev, e0, a0);
    kn0 = _mm512_mask_add_ps(kn0, m0, kn0, w0);
    en0 = _mm512_mask_add_ps(en0, ev, en0, w0);
  }
  out[0] = _mm512_reduce_add_ps(_mm512_add_ps(k0, k1));
  out[1] = _mm512_reduce_add_ps(_mm512_add_ps(e0, e1));
  out[2] = _mm512_reduce_add_ps(_mm512_add_ps(kn0, kn1));
  out[3] = _mm512_reduce_add_ps(_mm512_add_ps(en0, en1));
}

i64 compress_masked(const float* x, const std::uint8_t* mask, i64 n, float* out) {
  i64 m = 0;
  for (i64 j = 0; j < n; j += 16) {
    const __mmask16 t = tail_mask(n - j);
    const __mmask16 k = byte_mask(mask + j, t);
    if (!k) continue;
    const __m512 v = _mm512_maskz_compress_ps(k, _mm512_maskz_loadu_ps(t, x + j));
    const int c = __builtin_popcount(static_cast<unsigned>(k));
    _mm512_mask_storeu_ps(out + m, tail_mask(c), v);
    m += c;
  }
  return m;
}

namespace {

// MR rows x 64 columns: acc[r][q] = sum_c x[r][c] * panel[c][16q .. 16q+15].
template <int MR>
void panel_block(const float* x, i64 d, const float* panel, float* l1, float* sq, float* y) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_setzero_ps();
  for (i64 c = 0; c < d; ++c) {
    const float* w = panel + c * kPanel;
    const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32),
                 w3 = _mm512_loadu_ps(w + 48);
    for (int r = 0; r < MR; ++r) {
      const __m512 xb = _mm512_set1_ps(x[r * d + c]);
      acc[r][0] = _mm512_fmadd_ps(xb, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xb, w1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(xb, w2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(xb, w3, acc[r][3]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m512 a = _mm512_add_ps(_mm512_add_ps(_mm512_abs_ps(acc[r][0]), _mm512_abs_ps(acc[r][1])),
                                   _mm512_add_ps(_mm512_abs_ps(acc[r][2]), _mm512_abs_ps(acc[r][3])));
    l1[r] += _mm512_reduce_add_ps(a);
    if (sq) {
      __m512 s = _mm512_mul_ps(acc[r][0], acc[r][0]);
      s = _mm512_fmadd_ps(acc[r][1], acc[r][1], s);
      s = _mm512_fmadd_ps(acc[r][2], acc[r][2], s);
      s = _mm512_fmadd_ps(acc[r][3], acc[r][3], s);
      sq[r] += _mm512_reduce_add_ps(s);
    }
    if (y)
      for (int q = 0; q < 4; ++q) {
        float* yp = y + r * kPanel + 16 * q;
        _mm512_storeu_ps(yp, _mm512_add_ps(_mm512_loadu_ps(yp), acc[r][q]));
      }
  }
}

}  // namespace

void project_panel(const float* x, i64 n, i64 d, const float* panel, float* l1, float* sq, float* y) {
  static_assert(kPanel == 64, "the micro-kernel covers 4 x 16 columns");
  i64 i = 0;
  for (; i + 6 <= n; i += 6)
    panel_block<6>(x + i * d, d, panel, l1 + i, sq ? sq + i : nullptr, y ? y + i * kPanel : nullptr);
  const i64 rest = n - i;
  float* s = sq ? sq + i : nullptr;
  float* yy = y ? y + i * kPanel : nullptr;
  switch (rest) {
    case 1: panel_block<1>(x + i * d, d, panel, l1 + i, s, yy); break;
    case 2: panel_block<2>(x + i * d, d, panel, l1 + i, s, yy); break;
    case 3: panel_block<3>(x + i * d, d, panel, l1 + i, s, yy); break;
    case 4: panel_block<4>(x + i * d, d, panel, l1 + i, s, yy); break;
    case 5: panel_block<5>(x + i * d, d, panel, l1 + i, s, yy); break;
    default: break;
  }
}

}  // namespace kvsim::kernels::avx512
