// AVX-512 block-sparse causal attention (flash-attention style). Per work item (KV head g,
// segment s, tile of kTileQ queries) the rows are the G query heads x kTileQ queries; for each
// attended key block: logits = Q K_b^T (8 x 32 register tiles over a pre-transposed key block),
// causal/padding mask, online softmax update, O = corr * O + P V_b (4 x 64 register tiles).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/simd_avx512.h"
#include "prefill/block_sparse_attention.h"
#include "prefill/block_sparse_tiles.h"

namespace kvsim::prefill::avx512 {

namespace {

constexpr i64 kTileQ = 32;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 88: kernels::avx512::exp_ps on x clamped to [-87.3, 88.3] (where its own
// clamp does nothing); 0 below -87.3, which includes -inf (masked logits).
inline __m512 exp512(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~tiny), kernels::avx512::exp_ps(x));
}

// lg[8][ld] (columns kc .. kc + 16*NV) = Q[8 rows] . KT[:, kc ..], KT is [d][bs].
template <int NV>
inline void qk_tile(const float* qs, i64 d, const float* kt, i64 bs, i64 kc, float* lg, i64 ld) {
  __m512 acc[8][NV];
  for (int i = 0; i < 8; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (i64 c = 0; c < d; ++c) {
    __m512 kv[NV];
    for (int v = 0; v < NV; ++v) kv[v] = _mm512_loadu_ps(kt + c * bs + kc + 16 * v);
    for (int i = 0; i < 8; ++i) {
      const __m512 qb = _mm512_set1_ps(qs[i * d + c]);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(qb, kv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < 8; ++i)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(lg + i * ld + kc + 16 * v, acc[i][v]);
}

// o[4 rows][dc .. dc + 16*NV] = corr * o + sum_j p[row][j] v_j[dc ..], j < nkeys.
template <int NV>
inline void pv_tile(const float* p, i64 ld, const float* corr, const float* vblock, i64 d, i64 nkeys,
                    i64 dc, float* o) {
  __m512 acc[4][NV];
  for (int i = 0; i < 4; ++i) {
    const __m512 cr = _mm512_set1_ps(corr[i]);
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_mul_ps(cr, _mm512_loadu_ps(o + i * d + dc + 16 * v));
  }
  for (i64 j = 0; j < nkeys; ++j) {
    __m512 vv[NV];
    for (int v = 0; v < NV; ++v) vv[v] = _mm512_loadu_ps(vblock + j * d + dc + 16 * v);
    for (int i = 0; i < 4; ++i) {
      const __m512 pb = _mm512_set1_ps(p[i * ld + j]);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(pb, vv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < 4; ++i)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(o + i * d + dc + 16 * v, acc[i][v]);
}

inline float hmax(const float* x, i64 n) {
  __m512 m = _mm512_set1_ps(kNegInf);
  for (i64 j = 0; j < n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + j));
  return _mm512_reduce_max_ps(m);
}

struct Scratch {
  avec<float> qs, lg, o;
  std::vector<float> m, l, corr;
  Scratch(i64 rows, i64 d, i64 bs)
      : qs(static_cast<std::size_t>(rows * d)), lg(static_cast<std::size_t>(rows * bs)),
        o(static_cast<std::size_t>(rows * d)), m(rows), l(rows), corr(rows) {}
};

}  // namespace

void block_sparse_attention(const HeadsView& x, const BlockSelection& sel, float* out) {
  const SegmentPlan& plan = sel.plan();
  const i64 n = x.n, d = x.head_dim, bs = plan.config().block, nb = plan.num_blocks();
  const int G = x.group_size();
  const i64 rows = G * kTileQ;

  const avec<float> kt = tiles::transpose_key_blocks(x, plan);
  const std::vector<tiles::WorkItem> items = tiles::work_items(x, plan, kTileQ);

#pragma omp parallel
  {
    Scratch w(rows, d, bs);
#pragma omp for schedule(dynamic, 1)
    for (std::size_t it = 0; it < items.size(); ++it) {
      const auto [g, s, t0] = items[it];
      const i64 start = plan.segment(s).start;
      tiles::load_query_tile(x, g, t0, kTileQ, w.qs.data());
      std::fill(w.o.begin(), w.o.end(), 0.0f);
      std::fill(w.m.begin(), w.m.end(), kNegInf);
      std::fill(w.l.begin(), w.l.end(), 0.0f);

      auto process_block = [&](i64 b, bool causal) {
        const float* ktb = kt.data() + (g * nb + b) * d * bs;
        for (i64 r0 = 0; r0 < rows; r0 += 8) {
          i64 kc = 0;
          for (; kc + 32 <= bs; kc += 32) qk_tile<2>(w.qs.data() + r0 * d, d, ktb, bs, kc, w.lg.data() + r0 * bs, bs);
          for (; kc < bs; kc += 16) qk_tile<1>(w.qs.data() + r0 * d, d, ktb, bs, kc, w.lg.data() + r0 * bs, bs);
        }
        const i64 key0 = b * bs, nkeys = std::min(bs, n - key0);
        if (causal || nkeys < bs) tiles::mask_block(w.lg.data(), rows, bs, t0, kTileQ, key0, n);
        for (i64 r = 0; r < rows; ++r) {
          float* row = w.lg.data() + r * bs;
          const float m_new = std::max(w.m[r], hmax(row, bs));
          if (m_new == kNegInf) {  // nothing visible yet for this row
            w.corr[r] = 1.0f;
            std::fill(row, row + bs, 0.0f);
            continue;
          }
          const __m512 mv = _mm512_set1_ps(m_new);
          __m512 sum = _mm512_setzero_ps();
          for (i64 j = 0; j < bs; j += 16) {
            const __m512 p = exp512(_mm512_sub_ps(_mm512_loadu_ps(row + j), mv));
            _mm512_storeu_ps(row + j, p);
            sum = _mm512_add_ps(sum, p);
          }
          w.corr[r] = std::exp(w.m[r] - m_new);
          w.l[r] = w.l[r] * w.corr[r] + _mm512_reduce_add_ps(sum);
          w.m[r] = m_new;
        }
        const float* vb = x.v_row(g, key0);
        for (i64 r0 = 0; r0 < rows; r0 += 4) {
          i64 dc = 0;
          for (; dc + 64 <= d; dc += 64)
            pv_tile<4>(w.lg.data() + r0 * bs, bs, w.corr.data() + r0, vb, d, nkeys, dc, w.o.data() + r0 * d);
          for (; dc < d; dc += 16)
            pv_tile<1>(w.lg.data() + r0 * bs, bs, w.corr.data() + r0, vb, d, nkeys, dc, w.o.data() + r0 * d);
        }
      };

      for (std::int32_t b : sel.blocks(g, s)) process_block(b, false);
      const i64 last = std::min(t0 + kTileQ, n) - 1;
      for (i64 b = start / bs; b <= last / bs; ++b) process_block(b, true);

      tiles::store_output_tile(x, g, t0, kTileQ, w.o.data(), w.l.data(), out);
    }
  }
}

}  // namespace kvsim::prefill::avx512
