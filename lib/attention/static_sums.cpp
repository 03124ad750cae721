#include "attention/static_sums.h"

#include <algorithm>

#include "kernels/kernels.h"

namespace kvsim::perturbation_detail {

namespace {

// Rows compacted per chunk before their sgemm: the sgemm's row count M is the chunk, and with
// M = 32 (4M floats at 128K tokens) the metrics ran at 1.51x their GEMM floor; 8M floats (32 MiB
// per thread; M = 64 at 128K) gives 1.27x (16M: no better, more memory). Depends on len only,
// never on the batch (the sgemm's rounding depends on M).
i64 rows_per_chunk(i64 R, i64 len) { return std::max<i64>(1, std::min<i64>(R, (i64{1} << 23) / len)); }

// One selection's view of a unit: support mask over [0, len) (kept + [n_c, t], always present)
// and the columns of each form (0: support, 1: evicted).
struct UnitMasks {
  std::vector<std::uint8_t> mask[2];
  std::vector<i64> cols[2];
  bool prefer_support = false;
  UnitMasks(const Selection& sel, int u, i64 len) {
    const std::uint8_t* kept = sel.unit_mask(u);
    mask[0].assign(len, 1);
    mask[1].assign(len, 0);
    for (i64 j = 0; j < len; ++j) {
      if (j < sel.n_c) {
        mask[0][j] = kept[j] != 0;
        mask[1][j] = kept[j] == 0;
      }
      cols[mask[0][j] ? 0 : 1].push_back(j);
    }
    prefer_support = cols[0].size() < cols[1].size();  // fewer columns to multiply
  }
  i64 width(int form) const { return static_cast<i64>(cols[form].size()); }
};

// Nested kept sets (the budgets of one score rule keep prefixes of one ranking): when the
// supports of the active selections form a chain S_1 <= S_2 <= ... <= S_m in this unit, the
// columns split into disjoint segments: seg_0 = S_1, seg_k = S_{k+1} \ S_k, seg_m = the columns
// no selection keeps. Each row is compacted once per segment and each segment is one sgemm, so
// every column is multiplied once for the whole batch (the general path multiplies each
// selection's narrower form, 1.5-3.5x the context for budgets 0.1-0.5). Selection k's kept
// mass and support sum are the sums of segments 0..k, its evicted ones those of k+1..m; the
// better-conditioned form is chosen per row as in the general path. The last segment's sgemm
// runs only for chunks where some row needs an evicted sum. Equal to one call per selection
// within float32 reassociation (segment partial sums added in segment order).
struct Chain {
  std::vector<std::size_t> order;            // active selections, smallest support first
  std::vector<std::vector<std::uint8_t>> seg_mask;  // [m + 1][len]
  std::vector<std::vector<i64>> seg_cols;    // [m + 1]
};

bool find_chain(const std::vector<UnitMasks>& um, std::vector<std::size_t> active, i64 len, Chain& c) {
  std::stable_sort(active.begin(), active.end(),
                   [&](std::size_t a, std::size_t b) { return um[a].width(0) < um[b].width(0); });
  for (std::size_t i = 1; i < active.size(); ++i) {
    const auto& small = um[active[i - 1]].mask[0];
    const auto& big = um[active[i]].mask[0];
    for (i64 j = 0; j < len; ++j)
      if (small[j] && !big[j]) return false;
  }
  const std::size_t m = active.size();
  c.order = active;
  c.seg_mask.assign(m + 1, std::vector<std::uint8_t>(len, 0));
  c.seg_cols.assign(m + 1, {});
  for (i64 j = 0; j < len; ++j) {
    std::size_t k = 0;
    while (k < m && !um[active[k]].mask[0][j]) ++k;  // the first (smallest) support holding j
    c.seg_mask[k][j] = 1;
    c.seg_cols[k].push_back(j);
  }
  return true;
}

void nested_unit(const LayerCache& cache, QuerySet set, NormKind nu_kind, const std::vector<UnitMasks>& um,
                 const Chain& c, const Shape& s, int h0, int nh, i64 q0, i64 q1, i64 len,
                 const std::vector<Sums*>& sums) {
  const std::size_t m = c.order.size(), nseg = m + 1;
  const i64 nq = q1 - q0, R = static_cast<i64>(nh) * nq;  // row r: head h0 + r / nq, query q0 + r % nq
  const i64 chunk = rows_per_chunk(R, len);
  const float* Vh = cache.data().v_head(h0 / s.G);
  std::vector<float*> A(nseg), V(nseg), out(nseg), NU(nseg);
  for (std::size_t k = 0; k < nseg; ++k) {
    const i64 w = static_cast<i64>(c.seg_cols[k].size());
    A[k] = scratch_floats(k, static_cast<std::size_t>(chunk * w));
    V[k] = scratch_floats(nseg + k, static_cast<std::size_t>(w) * s.d);
    out[k] = scratch_floats(2 * nseg + k, static_cast<std::size_t>(chunk) * s.d);
    NU[k] = scratch_floats(3 * nseg + k, static_cast<std::size_t>(w));
    gather_rows(Vh, c.seg_cols[k], s.d, V[k]);
  }
  // Segment masses of each row in the chunk: [row][seg] (mass, nu-weighted mass).
  std::vector<double> mass(static_cast<std::size_t>(chunk) * nseg), mass_nu(mass.size());
  std::vector<std::uint8_t> form(static_cast<std::size_t>(chunk) * m);  // 0 support, 1 evicted, 2 exact
  int nu_head = -1;  // the head whose nu NU holds, compacted per segment
  for (i64 r0 = 0; r0 < R; r0 += chunk) {
    const i64 rn = std::min(chunk, R - r0);
    for (i64 r = 0; r < rn; ++r) {
      const int h = h0 + static_cast<int>((r0 + r) / nq);
      const float* row = cache.prob_row(set, h, q0 + (r0 + r) % nq);
      if (h != nu_head) {
        const float* nu = cache.value_norms(h, nu_kind);
        for (std::size_t k = 0; k < nseg; ++k) kernels::compress_masked(nu, c.seg_mask[k].data(), len, NU[k]);
        nu_head = h;
      }
      for (std::size_t k = 0; k < nseg; ++k) {
        const i64 w = static_cast<i64>(c.seg_cols[k].size());
        float* a = A[k] + r * w;
        kernels::compress_masked(row, c.seg_mask[k].data(), len, a);
        mass[r * nseg + k] = kernels::sum(a, w);
        mass_nu[r * nseg + k] = kernels::dot(a, NU[k], w);
      }
    }
    bool need_last = false;
    for (i64 r = 0; r < rn; ++r) {
      const std::size_t at = static_cast<std::size_t>(h0 + (r0 + r) / nq) * s.n + q0 + (r0 + r) % nq;
      for (std::size_t i = 0; i < m; ++i) {
        Sums& z = *sums[c.order[i]];
        double K = 0, E = 0, Knu = 0, Enu = 0;
        for (std::size_t k = 0; k <= i; ++k) {
          K += mass[r * nseg + k];
          Knu += mass_nu[r * nseg + k];
        }
        for (std::size_t k = i + 1; k < nseg; ++k) {
          E += mass[r * nseg + k];
          Enu += mass_nu[r * nseg + k];
        }
        z.K[at] = K;
        z.E[at] = E;
        z.Knu[at] = Knu;
        z.Enu[at] = Enu;
        std::uint8_t f = 2;
        if (E != 0) f = use_support_form(K, E, um[c.order[i]].prefer_support) ? 0 : 1;
        z.use_support[at] = f == 0;
        form[r * m + i] = f;
        need_last |= f == 1;
      }
    }
    for (std::size_t k = 0; k < nseg; ++k) {
      const i64 w = static_cast<i64>(c.seg_cols[k].size());
      if (w == 0 || (k == m && !need_last)) continue;
      kernels::sgemm(false, false, rn, s.d, w, 1.f, A[k], w, V[k], s.d, 0.f, out[k], s.d);
    }
    for (i64 r = 0; r < rn; ++r) {
      const std::size_t at = static_cast<std::size_t>(h0 + (r0 + r) / nq) * s.n + q0 + (r0 + r) % nq;
      for (std::size_t i = 0; i < m; ++i) {
        const std::uint8_t f = form[r * m + i];
        if (f == 2) continue;  // nothing in the support evicted
        float* dl = sums[c.order[i]]->delta.data() + at * s.d;
        std::fill(dl, dl + s.d, 0.f);
        const std::size_t k0 = f == 0 ? 0 : i + 1, k1 = f == 0 ? i + 1 : nseg;
        for (std::size_t k = k0; k < k1; ++k)
          if (!c.seg_cols[k].empty()) kernels::axpy(1.f, out[k] + r * s.d, dl, s.d);
      }
    }
  }
}

}  // namespace

void static_unit(const LayerCache& cache, QuerySet set, NormKind nu_kind, const std::vector<const Selection*>& sels,
                 const Shape& s, int u, i64 q0, i64 q1, const std::vector<Sums*>& sums) {
  const GqaMode mode = sels.front()->mode;
  const int h0 = mode == GqaMode::kv ? u * s.G : u;
  const int nh = mode == GqaMode::kv ? s.G : 1;
  i64 maxt = 0;
  for (i64 qi = 0; qi < s.n; ++qi) maxt = std::max(maxt, cache.pos(set, qi));
  const i64 len = maxt + 1;  // probabilities past a query's t are zero
  const std::size_t B = sels.size();
  std::vector<UnitMasks> um;
  std::vector<std::size_t> active;  // selections that evict something in this unit
  for (std::size_t b = 0; b < B; ++b) {
    um.emplace_back(*sels[b], u, len);
    if (!um[b].cols[1].empty()) active.push_back(b);
  }
  if (active.empty()) return;  // every row exactly unperturbed
  if (active.size() > 1) {
    Chain chain;
    if (find_chain(um, active, len, chain))
      return nested_unit(cache, set, nu_kind, um, chain, s, h0, nh, q0, q1, len, sums);
  }
  // Compacted rows are buffered per chunk of rows (rows_per_chunk) per selection and thread. The chunk
  // depends on len only, never on the batch, so a batch gives bit-identical results to one call
  // per selection (the sgemm's rounding depends on its row count).
  const i64 nq = q1 - q0, R = static_cast<i64>(nh) * nq;  // row r: head h0 + r / nq, query q0 + r % nq
  const i64 chunk = rows_per_chunk(R, len);
  std::vector<float*> A(2 * B, nullptr), V(2 * B, nullptr);  // [b * 2 + form]; V gathered on first use
  for (std::size_t b : active)
    for (int form = 0; form < 2; ++form)
      A[b * 2 + form] = scratch_floats(b * 2 + form, static_cast<std::size_t>(chunk * um[b].width(form)));
  const float* Vh = cache.data().v_head(h0 / s.G);
  avec<float> tmp;
  std::vector<std::vector<std::size_t>> dest(2 * B);
  for (i64 r0 = 0; r0 < R; r0 += chunk) {
    const i64 rn = std::min(chunk, R - r0);
    for (auto& dst : dest) dst.clear();
    for (i64 r = r0; r < r0 + rn; ++r) {
      const int h = h0 + static_cast<int>(r / nq);
      const i64 qi = q0 + r % nq;
      const float* row = cache.prob_row(set, h, qi);
      const float* nu = cache.value_norms(h, nu_kind);
      const std::size_t at = static_cast<std::size_t>(h) * s.n + qi;
      for (std::size_t b : active) {
        Sums& z = *sums[b];
        float m4[4];
        kernels::split_mass_sums(row, nu, um[b].mask[0].data(), len, m4);
        z.K[at] = m4[0];
        z.E[at] = m4[1];
        z.Knu[at] = m4[2];
        z.Enu[at] = m4[3];
        if (z.E[at] == 0) continue;  // nothing in the support evicted
        const int form = use_support_form(z.K[at], z.E[at], um[b].prefer_support) ? 0 : 1;
        z.use_support[at] = form == 0;
        auto& dst = dest[b * 2 + form];
        kernels::compress_masked(row, um[b].mask[form].data(), len, A[b * 2 + form] + dst.size() * um[b].width(form));
        dst.push_back(at);
      }
    }
    for (std::size_t b : active)
      for (int form = 0; form < 2; ++form) {
        const auto& dst = dest[b * 2 + form];
        const i64 rows = static_cast<i64>(dst.size()), w = um[b].width(form);
        if (rows == 0) continue;
        float*& Vb = V[b * 2 + form];
        if (!Vb) {
          Vb = scratch_floats(2 * B + b * 2 + form, static_cast<std::size_t>(w) * s.d);
          gather_rows(Vh, um[b].cols[form], s.d, Vb);
        }
        if (tmp.size() < static_cast<std::size_t>(rows) * s.d) tmp.resize(static_cast<std::size_t>(rows) * s.d);
        kernels::sgemm(false, false, rows, s.d, w, 1.f, A[b * 2 + form], w, Vb, s.d, 0.f, tmp.data(), s.d);
        for (i64 r = 0; r < rows; ++r) std::copy_n(tmp.data() + r * s.d, s.d, sums[b]->delta.data() + dst[r] * s.d);
      }
  }
}


}  // namespace kvsim::perturbation_detail
