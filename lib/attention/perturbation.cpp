#include "attention/perturbation.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>

#include "core/error.h"
#include "attention/static_sums.h"
#include "attention/value_norms.h"
#include "quant/quantized_kv.h"
#include "kernels/kernels.h"

#include <omp.h>

namespace kvsim {

namespace {

using namespace perturbation_detail;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double ratio(double x, double ref) { return ref > 0 ? x / ref : (x == 0 ? 0.0 : kNaN); }

void check_selection(const LayerCache& cache, const Selection& sel, const Shape& s) {
  const std::string where = "selection";
  const int want = sel.mode == GqaMode::kv ? s.Hkv : s.H;
  if (sel.units != want)
    fail(where, "units", std::to_string(sel.units) + " units, " +
                             std::string(sel.mode == GqaMode::kv ? "kv" : "query") + " mode needs " + std::to_string(want));
  if (sel.n_c != cache.n_c())
    fail(where, "n_c", std::to_string(sel.n_c) + " != compression point " + std::to_string(cache.n_c()));
  if (static_cast<i64>(sel.kept.size()) != sel.units * sel.n_c) fail(where, "kept", "size != units * n_c");
  if (!sel.key_channels.empty() && static_cast<i64>(sel.key_channels.size()) != static_cast<i64>(s.Hkv) * s.d)
    fail(where, "key_channels", "size != num_kv_heads * head_dim");
  if (!sel.held_caches.empty()) {
    const i64 ne = cache.n_eval();
    if (static_cast<i64>(sel.held_of.size()) != ne) fail(where, "held_of", "size != n_eval");
    for (i64 qi = 0; qi < ne; ++qi) {
      const int k = sel.held_of[static_cast<std::size_t>(qi)];
      if (k < 0 || k >= static_cast<int>(sel.held_caches.size())) fail(where, "held_of", "index out of range");
      const auto& c = sel.held_caches[static_cast<std::size_t>(k)];
      if (static_cast<i64>(c.held.size()) != sel.units * c.from || c.from > cache.eval_pos(qi) + 1)
        fail(where, "held_caches", "cache " + std::to_string(k) + " does not fit query " + std::to_string(qi));
    }
    for (const auto& c : sel.held_caches)
      if (c.rows && (c.rows->units != sel.units || c.rows->n_c > c.from || c.rows->d != s.d))
        fail(where, "held_caches", "rows do not match the cache's units, span and head_dim");
  }
  if (!sel.per_query.empty()) {
    const i64 ne = cache.n_eval();
    if (static_cast<i64>(sel.per_query.size()) != sel.units * ne)
      fail(where, "per_query", "size != units * n_eval");
    for (int u = 0; u < sel.units; ++u)
      for (i64 qi = 0; qi < ne; ++qi)
        if (static_cast<i64>(sel.per_query[u * ne + qi].size()) != cache.eval_pos(qi) + 1)
          fail(where, "per_query", "mask of query " + std::to_string(qi) + " has length != t + 1");
  }
}

int unit_of(const Selection& sel, int h, int G) { return sel.mode == GqaMode::kv ? h / G : h; }

// Support mask of query qi of head h over [0, t].
void support_mask(const LayerCache& cache, const Selection& sel, QuerySet set, int h, int G, i64 qi,
                  std::vector<std::uint8_t>& m) {
  const i64 t = cache.pos(set, qi);
  const int u = unit_of(sel, h, G);
  m.assign(t + 1, 1);
  if (set == QuerySet::eval && sel.has_query_masks()) {
    sel.query_mask(u, qi, t, m);
    return;
  }
  const std::uint8_t* kept = sel.unit_mask(u);
  for (i64 j = 0; j < std::min(t + 1, sel.n_c); ++j) m[j] = kept[j] != 0;
}

// Per-query support (step-wise rules, or window queries with per-query masks absent): same sums
// for one head and the queries [q0, q1), one query at a time.
void per_query_head(const LayerCache& cache, QuerySet set, NormKind nu_kind, const Selection& sel, const Shape& s,
                    int h, i64 q0, i64 q1, Sums& z) {
  const float* nu = cache.value_norms(h, nu_kind);
  const float* V = cache.data().v_head(h / s.G);
  std::vector<std::uint8_t> m, inv;
  for (i64 qi = q0; qi < q1; ++qi) {
    support_mask(cache, sel, set, h, s.G, qi, m);
    const float* row = cache.prob_row(set, h, qi);
    inv.resize(m.size());
    double e = 0, en = 0, kept_mass = 0, knu = 0;
    i64 n_ev = 0;
    bool any = false;
    for (std::size_t j = 0; j < m.size(); ++j) {
      inv[j] = !m[j];
      if (inv[j]) {
        any = true;
        ++n_ev;
        e += row[j];
        en += static_cast<double>(row[j]) * nu[j];
      } else {
        kept_mass += row[j];
        knu += static_cast<double>(row[j]) * nu[j];
      }
    }
    const std::size_t at = static_cast<std::size_t>(h) * s.n + qi;
    z.K[at] = kept_mass;
    z.Knu[at] = knu;
    if (!any) continue;  // nothing in the support is evicted: exactly zero perturbation
    z.E[at] = e;
    z.Enu[at] = en;
    const bool small_F = use_support_form(kept_mass, e, 2 * n_ev > static_cast<i64>(m.size()));
    z.use_support[at] = small_F;
    kernels::masked_weighted_rowsum(row, small_F ? m.data() : inv.data(), V, static_cast<i64>(m.size()), s.d,
                                    s.d, z.delta.data() + at * s.d);
  }
}

// Attention recomputed over the support with what the cache gives back instead of the trace's
// rows; delta = o - o'. ThinK (key_channels): the kept span's keys with pruned channels.
// quant(...) (qkv): the kept span's dequantized keys and values. The decode protocol's held
// caches give back rows of their own (qkv per run of queries). Positions past the span (n_c, or
// the rows' own span) stay exact. Also what their bounds
// need (finish): the nu-weighted masses, the largest nu of the support, the range r of the
// logit shift Delta_j = z'_j - z_j over the support (z: the transformed logits, soft-capping
// included), since ||softmax_P(z) - softmax_P(z')||_1 <= 2 tanh(r / 4), and for quant the
// largest value error through o_proj over the support, max_P ||(vhat_j - v_j) W_o^h||_1.
// Logits are computed on the union of the queries' supports only (gathered key and value rows),
// not on every position: an evicted position's probability is 0 either way.
void recomputed_run(const LayerCache& cache, QuerySet set, NormKind nu_kind, const Selection& sel, const Shape& s,
                    int h, i64 q0, i64 q1, const QuantizedKV* qkv, const std::uint8_t* ch, Sums& z) {
  const LayerData& L = cache.data();
  const int g = h / s.G;
  const i64 nq = q1 - q0;  // this call's queries: local index qi is the set's query q0 + qi
  const int u = unit_of(sel, h, s.G);
  i64 maxt = 0;
  for (i64 qi = q0; qi < q1; ++qi) maxt = std::max(maxt, cache.pos(set, qi));
  const i64 ncols = maxt + 1;
  // Per-query supports over [0, ncols) (zero past t), and their union's columns.
  static thread_local std::vector<std::uint8_t> masks;
  masks.assign(static_cast<std::size_t>(nq) * ncols, 0);
  std::vector<std::uint8_t> m, any_support(ncols, 0);
  for (i64 qi = 0; qi < nq; ++qi) {
    support_mask(cache, sel, set, h, s.G, q0 + qi, m);
    std::uint8_t* mq = masks.data() + static_cast<std::size_t>(qi) * ncols;
    for (std::size_t j = 0; j < m.size(); ++j) {
      mq[j] = m[j] != 0;
      any_support[j] |= mq[j];
    }
  }
  std::vector<i64> cols;
  for (i64 j = 0; j < ncols; ++j)
    if (any_support[j]) cols.push_back(j);
  const i64 w = static_cast<i64>(cols.size());
  // The logit z' = q . ka and the shift's part q . kb (z = z' + q . kb), kept apart so the
  // shift of an uncapped logit is exact rather than a difference of two large logits: ka the key
  // the cache gives back (ThinK: k with the pruned channels zeroed; quant: khat), kb = k - ka.
  avec<float> Q(static_cast<std::size_t>(nq) * s.d);
  for (i64 qi = 0; qi < nq; ++qi) std::copy_n(L.q_row(h, cache.rows(set)[q0 + qi]), s.d, Q.data() + qi * s.d);
  const std::size_t cells = static_cast<std::size_t>(nq) * w;
  float* logits = scratch_floats(0, std::max<std::size_t>(1, 2 * cells));  // per-thread, reused
  float* dropped = logits + cells;
  const std::size_t rows_size = static_cast<std::size_t>(std::max<i64>(1, w)) * s.d;
  float* Ka = scratch_floats(1, rows_size);
  float* Vg = scratch_floats(2, rows_size);
  float* Kb = scratch_floats(3, rows_size);
  gather_rows(L.k_head(g), cols, s.d, Kb);
  gather_rows(L.v_head(g), cols, s.d, Vg);
  const bool values = qkv && qkv->has_values();
  std::vector<float> value_err;  // quant: ||(vhat_j - v_j) W_o^h||_1 per gathered column
  float* dv = values ? scratch_floats(4, rows_size) : nullptr;
  for (i64 i = 0; i < w; ++i) {
    const i64 j = cols[i];
    float* ka = Ka + i * s.d;
    float* kb = Kb + i * s.d;
    float* vg = Vg + i * s.d;
    const bool given = qkv && j < qkv->n_c;  // the rows' span; past it the trace's own rows
    const bool pruned = ch && j < sel.n_c;   // ThinK prunes the kept span's keys only
    const float* kh = given ? qkv->k_row(u, j) : kb;
    for (int c = 0; c < s.d; ++c) {
      ka[c] = pruned && !ch[c] ? 0.f : kh[c];
      kb[c] -= ka[c];
    }
    if (!values) continue;
    const float* vh = given ? qkv->v_row(u, j) : vg;
    for (int c = 0; c < s.d; ++c) {
      dv[i * s.d + c] = vh[c] - vg[c];
      vg[c] = vh[c];
    }
  }
  if (values) {
    value_err.resize(w);
    if (cache.meta().has_o_proj)
      projected_l1_norms_packed(dv, w, s.d, cache.packed_o_proj(h), s.D, value_err.data());
    else
      kernels::row_abs_sums(dv, w, s.d, s.d, value_err.data());
  }
  if (w > 0) {
    kernels::sgemm(false, true, nq, w, s.d, 1.f, Q.data(), s.d, Ka, s.d, 0.f, logits, w);
    kernels::sgemm(false, true, nq, w, s.d, 1.f, Q.data(), s.d, Kb, s.d, 0.f, dropped, w);
  }
  const kernels::LogitSpec logit = cache.meta().logits();
  auto transform = [&](double x) {
    const double v = logit.scale * x;
    return logit.softcap > 0 ? logit.softcap * std::tanh(v / logit.softcap) : v;
  };
  const float* nu = cache.value_norms(h, nu_kind);
  const double* T = cache.prob_sums(set, h, q0, q1) + q0;
  const float* o = cache.outputs(set, h, q0, q1) + q0 * s.d;
  std::vector<bool> empty(nq, false);
  for (i64 qi = 0; qi < nq; ++qi) {
    const std::uint8_t* mq = masks.data() + static_cast<std::size_t>(qi) * ncols;
    const i64 t = cache.pos(set, q0 + qi);
    const float* arow = cache.prob_row(set, h, q0 + qi);
    float m4[4];  // kept and evicted masses over [0, t], plain and nu-weighted
    kernels::split_mass_sums(arow, nu, mq, t + 1, m4);
    float* row = logits + qi * w;
    const float* drow = dropped + qi * w;
    double lo = 0, hi = 0, numax = 0, errmax = 0;
    bool any = false;
    for (i64 i = 0; i < w; ++i) {
      const i64 j = cols[i];
      if (!mq[j]) {  // outside this query's support (evicted for it, or past t)
        row[i] = -std::numeric_limits<float>::infinity();
        continue;
      }
      numax = std::max(numax, static_cast<double>(nu[j]));
      if (values) errmax = std::max(errmax, static_cast<double>(value_err[i]));
      const double shift = logit.softcap > 0 ? transform(row[i]) - transform(static_cast<double>(row[i]) + drow[i])
                                             : -logit.scale * static_cast<double>(drow[i]);
      lo = any ? std::min(lo, shift) : shift;
      hi = any ? std::max(hi, shift) : shift;
      any = true;
    }
    const std::size_t k = static_cast<std::size_t>(h) * s.n + q0 + qi;
    z.K[k] = m4[0];
    z.E[k] = m4[1];
    z.Knu[k] = m4[2];
    z.Enu[k] = m4[3];
    z.shift_range[k] = hi - lo;
    z.support_nu_max[k] = numax;
    z.value_err_max[k] = errmax;
    if (any)
      kernels::logit_softmax_inplace(row, w, logit);
    else
      std::fill(row, row + w, 0.f);
    empty[qi] = !any;
  }
  float* dl = z.delta.data() + (static_cast<std::size_t>(h) * s.n + q0) * s.d;
  if (w > 0)
    kernels::sgemm(false, false, nq, s.d, w, 1.f, logits, w, Vg, s.d, 0.f, dl, s.d);
  else
    std::fill(dl, dl + nq * s.d, 0.f);
  for (i64 qi = 0; qi < nq; ++qi) {
    const float inv = static_cast<float>(1.0 / T[qi]);
    for (int c = 0; c < s.d; ++c) {
      float& x = dl[qi * s.d + c];
      x = empty[qi] ? std::numeric_limits<float>::quiet_NaN() : o[qi * s.d + c] * inv - x;
    }
  }
}

// recomputed_run over [q0, q1): one run with the selection's own rows, or (the decode protocol)
// one run per stretch of queries that share a held cache, each with that cache's rows.
void recomputed_head(const LayerCache& cache, QuerySet set, NormKind nu_kind, const Selection& sel, const Shape& s,
                     int h, i64 q0, i64 q1, Sums& z) {
  if (set != QuerySet::eval || !sel.held_rows()) {
    const std::uint8_t* ch =
        sel.key_channels.empty() ? nullptr : sel.key_channels.data() + static_cast<std::size_t>(h / s.G) * s.d;
    recomputed_run(cache, set, nu_kind, sel, s, h, q0, q1, sel.quant.get(), ch, z);
    return;
  }
  for (i64 a = q0; a < q1;) {
    const int k = sel.held_of[static_cast<std::size_t>(a)];
    i64 b = a + 1;
    while (b < q1 && sel.held_of[static_cast<std::size_t>(b)] == k) ++b;
    recomputed_run(cache, set, nu_kind, sel, s, h, a, b, sel.held_caches[static_cast<std::size_t>(k)].rows.get(),
                   nullptr, z);
    a = b;
  }
}

// Through o_proj: Delta^h_t = delta^h_t W_o^h (d -> D) and y_t = sum_h Delta^h_t, their L1 and L2
// norms, without materialising any [n x D] product: kernels::project_panel per 64-column panel
// of W_o^h, heads accumulated into the panel's y in head order. All selections of a batch go
// through each panel together (their deltas stacked, B n rows per head), so W_o streams from
// memory once per batch, not once per selection; rows are independent in the kernel, so the
// result is bit-identical to one call per selection. Panels run in parallel and write their own
// partial sums, reduced in panel order: identical for any thread count.
void project_norms(const LayerCache& cache, const Shape& s, const std::vector<Sums*>& sums,
                   const std::vector<std::vector<std::uint8_t>>& head_zero, std::vector<PerturbationResult*>& res) {
  const std::size_t B = sums.size();
  if (B == 0) return;
  const i64 P = kernels::panel_count(s.D);
  const i64 rows = static_cast<i64>(B) * s.n;  // per head: selection b's query qi at b * n + qi
  const std::size_t hr = static_cast<std::size_t>(s.H) * rows;
  std::vector<std::uint8_t> all_zero(s.H, 1);  // a head no selection perturbs is skipped
  for (int h = 0; h < s.H; ++h)
    for (std::size_t b = 0; b < B; ++b) all_zero[h] &= head_zero[b][h];
  avec<float> stacked(hr * s.d);
#pragma omp parallel for schedule(dynamic, 1)
  for (int h = 0; h < s.H; ++h) {
    if (all_zero[h]) continue;
    cache.packed_o_proj(h);
    for (std::size_t b = 0; b < B; ++b)
      std::copy_n(sums[b]->delta.data() + static_cast<std::size_t>(h) * s.n * s.d, s.n * s.d,
                  stacked.data() + (static_cast<std::size_t>(h) * rows + b * s.n) * s.d);
  }
  std::vector<float> l1p(P * hr, 0.f), sqp(P * hr, 0.f), ly1(P * rows), lsq(P * rows);
#pragma omp parallel for schedule(dynamic, 1)
  for (i64 p = 0; p < P; ++p) {
    float* y = scratch_floats(0, static_cast<std::size_t>(rows) * kernels::kPanel);
    std::fill(y, y + rows * kernels::kPanel, 0.f);
    for (int h = 0; h < s.H; ++h) {
      if (all_zero[h]) continue;
      const float* panel = cache.packed_o_proj(h) + p * s.d * kernels::kPanel;
      kernels::project_panel(stacked.data() + static_cast<std::size_t>(h) * rows * s.d, rows, s.d, panel,
                             l1p.data() + p * hr + h * rows, sqp.data() + p * hr + h * rows, y);
    }
    for (i64 r = 0; r < rows; ++r) {  // padding columns of y are exactly 0
      ly1[p * rows + r] = kernels::abs_sum(y + r * kernels::kPanel, kernels::kPanel);
      lsq[p * rows + r] = kernels::dot(y + r * kernels::kPanel, y + r * kernels::kPanel, kernels::kPanel);
    }
  }
  for (std::size_t b = 0; b < B; ++b) {
    PerturbationResult& r = *res[b];
    for (int h = 0; h < s.H; ++h)
      for (i64 qi = 0; qi < s.n; ++qi) {
        const std::size_t k = static_cast<std::size_t>(h) * rows + b * s.n + qi;
        double a = 0, q = 0;
        for (i64 p = 0; p < P; ++p) {
          a += l1p[p * hr + k];
          q += sqp[p * hr + k];
        }
        r.l1[r.at(h, qi)] = a;
        r.l2[r.at(h, qi)] = std::sqrt(q);
      }
    for (i64 qi = 0; qi < s.n; ++qi) {
      double a = 0, q = 0;
      for (i64 p = 0; p < P; ++p) {
        a += ly1[p * rows + b * s.n + qi];
        q += lsq[p * rows + b * s.n + qi];
      }
      r.layer_l1[qi] = a;
      r.layer_l2[qi] = std::sqrt(q);
    }
  }
}

// Without o_proj the heads' outputs are concatenated: head norms of delta itself, layer L1 the
// sum and layer L2 the root of the summed squares.
void identity_norms(const Shape& s, const avec<float>& delta, PerturbationResult& r) {
  for (int h = 0; h < s.H; ++h)
    for (i64 qi = 0; qi < s.n; ++qi) {
      const float* p = delta.data() + (static_cast<std::size_t>(h) * s.n + qi) * s.d;
      r.l1[r.at(h, qi)] = kernels::abs_sum(p, s.d);
      r.l2[r.at(h, qi)] = std::sqrt(static_cast<double>(kernels::dot(p, p, s.d)));
    }
  for (i64 qi = 0; qi < s.n; ++qi) {
    double l1 = 0, sq = 0;
    for (int h = 0; h < s.H; ++h) {
      l1 += r.l1[r.at(h, qi)];
      sq += r.l2[r.at(h, qi)] * r.l2[r.at(h, qi)];
    }
    r.layer_l1[qi] = l1;
    r.layer_l2[qi] = std::sqrt(sq);
  }
}

PerturbationResult empty_result(const Shape& s) {
  PerturbationResult r;
  r.num_heads = s.H;
  r.n_q = s.n;
  const std::size_t hn = static_cast<std::size_t>(s.H) * s.n;
  for (auto* v : {&r.F, &r.l1, &r.l2, &r.rel_l1, &r.rel_l2, &r.bound_ada, &r.theta}) v->assign(hn, 0.0);
  for (auto* v : {&r.layer_F_mean, &r.layer_F_min, &r.layer_l1, &r.layer_l2, &r.layer_rel_l1, &r.layer_rel_l2,
                  &r.layer_ada, &r.layer_theta})
    v->assign(s.n, 0.0);
  return r;
}

// From the sums of one selection: F, delta (in place of the output sums), the per-head bounds;
// which heads it leaves exactly unperturbed (head_zero) and ThinK's logit-shift terms (tilts).
PerturbationResult finish_heads(const LayerCache& cache, const LayerReference& ref, const Shape& s, bool recomputed,
                                Sums& z, std::vector<std::uint8_t>& head_zero, std::vector<double>& tilts,
                                std::vector<double>& value_errs) {
  PerturbationResult r = empty_result(s);
  const QuerySet set = ref.set();
  const auto& E = z.E;
  const auto& K = z.K;
  const auto& Enu = z.Enu;
  const auto& Knu = z.Knu;
  const auto& use_support = z.use_support;
  avec<float>& delta = z.delta;
  // delta from the evicted sums, F, per-head bounds.
  head_zero.assign(s.H, 1);
  tilts.assign(static_cast<std::size_t>(s.H) * s.n, 0.0);  // ThinK / quant: tanh(r/4) per head, query
  value_errs.assign(tilts.size(), 0.0);                     // quant: max_P ||(v - vhat) W_o||_1
#pragma omp parallel for schedule(dynamic, 1)
  for (int h = 0; h < s.H; ++h) {
    const double* T = cache.prob_sums(set, h);
    const float* o = cache.outputs(set, h);
    float* dl = delta.data() + static_cast<std::size_t>(h) * s.n * s.d;
    for (i64 qi = 0; qi < s.n; ++qi) {
      const std::size_t k = r.at(h, qi);
      const double F = E[k] == 0 ? 1.0 : K[k] / (K[k] + E[k]);
      const double e = E[k] == 0 ? 0.0 : E[k] / (K[k] + E[k]);  // evicted (normalised) mass, 1 - F
      r.F[k] = F;
      if (E[k] == 0 && !recomputed) {  // nothing evicted from the support: exactly zero
        std::fill(dl + qi * s.d, dl + (qi + 1) * s.d, 0.f);
        continue;
      }
      head_zero[h] = 0;
      if (recomputed) {
        // ThinK / quant: token eviction (the bounds above, with the exact logits) plus the
        // logit shift over the support, ||o_P - o''|| <= 2 tanh(r/4) max_P nu (r =
        // z.shift_range), plus quant's value error, ||sum p' (v - vhat) W_o|| <= max_P
        // ||(v - vhat) W_o||_1 (triangle inequality throughout).
        const double Z = K[k] + E[k];
        const double tilt = 2.0 * std::tanh(z.shift_range[k] / 4.0) * z.support_nu_max[k] + z.value_err_max[k];
        const bool ok = F > 0 && K[k] > 0;
        r.bound_ada[k] = ok ? 2.0 * e * ref.nu_max(h, qi) + tilt : kNaN;
        r.theta[k] = ok ? Enu[k] / Z + (1.0 / F - 1.0) * (Knu[k] / Z) + tilt : kNaN;
        tilts[k] = ok ? std::tanh(z.shift_range[k] / 4.0) : kNaN;
        value_errs[k] = ok ? z.value_err_max[k] : kNaN;
        continue;
      }
      // delta = o - oP/F = (oev - (1 - F) o) / F, all normalised by T.
      const bool sup = use_support[k];
      for (int c = 0; c < s.d; ++c) {
        const double x = dl[qi * s.d + c] / T[qi], oo = o[qi * s.d + c] / T[qi];
        const double v = sup ? oo - x / F : (x - e * oo) / F;
        dl[qi * s.d + c] = F > 0 ? static_cast<float>(v) : std::numeric_limits<float>::quiet_NaN();
      }
      r.bound_ada[k] = 2.0 * e * ref.nu_max(h, qi);
      // theta = sum_ev a nu + (1/F - 1) sum_P a nu: both sums positive, no cancellation.
      const double Z = K[k] + E[k];
      r.theta[k] = F > 0 ? Enu[k] / Z + (1.0 / F - 1.0) * (Knu[k] / Z) : kNaN;
    }
  }
  return r;
}

// The layer rows (Ada-KV, summed theta, F statistics) and the relative norms, once the norms of
// Delta^h and of the layer's Delta are in r.
void finish_layer(const LayerReference& ref, const Shape& s, const std::vector<double>& tilts,
                  const std::vector<double>& value_errs, PerturbationResult& r) {
#pragma omp parallel for schedule(static)
  for (i64 qi = 0; qi < s.n; ++qi) {
    double fsum = 0, fmin = 1e300, miss = 0, C = 0, th = 0, verr = 0;
    for (int h = 0; h < s.H; ++h) {
      const std::size_t k = r.at(h, qi);
      fsum += r.F[k];
      fmin = std::min(fmin, r.F[k]);
      miss += 1.0 - r.F[k] + tilts[k];  // tilts: ThinK's / quant's logit-shift term, 0 for other rules
      verr += value_errs[k];            // quant's value error, 0 for other rules
      C = std::max(C, ref.nu_max(h, qi));
      th += r.theta[k];
    }
    r.layer_F_mean[qi] = fsum / s.H;
    r.layer_F_min[qi] = fmin;
    r.layer_ada[qi] = 2.0 * C * miss + verr;
    r.layer_theta[qi] = th;
  }
  for (int h = 0; h < s.H; ++h)
    for (i64 qi = 0; qi < s.n; ++qi) {
      const std::size_t k = r.at(h, qi);
      r.rel_l1[k] = ratio(r.l1[k], ref.head_out_l1(h, qi));
      r.rel_l2[k] = ratio(r.l2[k], ref.head_out_l2(h, qi));
    }
  for (i64 qi = 0; qi < s.n; ++qi) {
    r.layer_rel_l1[qi] = ratio(r.layer_l1[qi], ref.layer_out_l1(qi));
    r.layer_rel_l2[qi] = ratio(r.layer_l2[qi], ref.layer_out_l2(qi));
  }
}

bool recomputes(const Selection& sel) { return !sel.key_channels.empty() || sel.quant || sel.held_rows(); }

bool is_static(const Selection& sel, QuerySet set) {
  return !recomputes(sel) && !(set == QuerySet::eval && sel.has_query_masks());
}

// The probability-dependent sums of every selection, for the heads of KV groups [g0, g1) and the
// queries [q0, q1) (one wave of probability tiles):
// static selections of one GQA mode and batch share each pass over a unit's rows; ThinK's
// pruned keys and step-wise per-query masks go one selection and head at a time. Every item
// writes its own heads' sums, so the order (and the thread count) never changes a value.
void wave_sums(const LayerCache& cache, QuerySet set, NormKind nu, const Shape& s,
               const std::vector<std::vector<const Selection*>>& batches, std::vector<std::vector<Sums>>& sums,
               int g0, int g1, i64 q0, i64 q1) {
  std::vector<std::function<void()>> items;
  for (std::size_t bi = 0; bi < batches.size(); ++bi) {
    const auto& sels = batches[bi];
    for (GqaMode mode : {GqaMode::kv, GqaMode::query}) {
      std::vector<const Selection*> batch;
      std::vector<Sums*> batch_sums;
      for (std::size_t b = 0; b < sels.size(); ++b)
        if (is_static(*sels[b], set) && sels[b]->mode == mode) {
          batch.push_back(sels[b]);
          batch_sums.push_back(&sums[bi][b]);
        }
      if (batch.empty()) continue;
      const int u0 = mode == GqaMode::kv ? g0 : g0 * s.G, u1 = mode == GqaMode::kv ? g1 : g1 * s.G;
      for (int u = u0; u < u1; ++u)
        items.push_back([&cache, set, nu, &s, batch, batch_sums, u, q0, q1] {
          static_unit(cache, set, nu, batch, s, u, q0, q1, batch_sums);
        });
    }
    for (std::size_t b = 0; b < sels.size(); ++b) {
      const Selection& sel = *sels[b];
      if (is_static(sel, set)) continue;
      Sums& z = sums[bi][b];
      for (int h = g0 * s.G; h < g1 * s.G; ++h) {
        if (recomputes(sel))
          items.push_back([&cache, set, nu, &sel, &s, h, q0, q1, &z] { recomputed_head(cache, set, nu, sel, s, h, q0, q1, z); });
        else
          items.push_back([&cache, set, nu, &sel, &s, h, q0, q1, &z] { per_query_head(cache, set, nu, sel, s, h, q0, q1, z); });
      }
    }
  }
  const i64 count = static_cast<i64>(items.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (i64 i = 0; i < count; ++i) items[i]();
}

std::vector<std::vector<PerturbationResult>> measure_batches(const LayerCache& cache, QuerySet set, NormKind nu,
                                                             const LayerReference* given_ref,
                                                             const std::vector<std::vector<const Selection*>>& batches,
                                                             bool release_tiles, double* attention_seconds) {
  const LayerData& L = cache.data();
  Shape s{L.num_heads, L.num_kv_heads, L.num_heads / L.num_kv_heads, L.head_dim, L.hidden_size, L.seq_len,
          cache.count(set)};
  std::vector<std::vector<PerturbationResult>> out(batches.size());
  for (std::size_t bi = 0; bi < batches.size(); ++bi) {
    for (const Selection* sel : batches[bi]) check_selection(cache, *sel, s);
    out[bi].resize(batches[bi].size());
  }
  if (s.n == 0) {
    for (auto& o : out)
      for (auto& r : o) r = empty_result(s);
    return out;
  }
  cache.precompute_norms(nu);
  const std::size_t hn = static_cast<std::size_t>(s.H) * s.n;
  std::vector<std::vector<Sums>> sums(batches.size());
  for (std::size_t bi = 0; bi < batches.size(); ++bi) {
    sums[bi].reserve(batches[bi].size());
    for (std::size_t b = 0; b < batches[bi].size(); ++b) sums[bi].emplace_back(hn, s.d);
  }
  // Every selection takes what it needs from a wave of group tiles before the next wave.
  double core_s = 0;
  cache.walk_tiles(
      set, [&](int g0, int g1, i64 q0, i64 q1) { wave_sums(cache, set, nu, s, batches, sums, g0, g1, q0, q1); },
      release_tiles, &core_s);
  std::unique_ptr<LayerReference> own_ref;
  const double t0 = omp_get_wtime();
  if (!given_ref) own_ref = std::make_unique<LayerReference>(cache, set, nu);
  core_s += omp_get_wtime() - t0;
  if (attention_seconds) *attention_seconds += core_s;
  const LayerReference& ref = given_ref ? *given_ref : *own_ref;
  // Per batch: F, delta and the head bounds; the norms of Delta^h = delta W_o^h and of the
  // layer's Delta = sum_h Delta^h, the batch's selections through o_proj at once (one batch at a
  // time: the stacked deltas of every rule would cost more memory than the probability tiles).
  for (std::size_t bi = 0; bi < batches.size(); ++bi) {
    const std::size_t B = batches[bi].size();
    std::vector<std::vector<std::uint8_t>> head_zero(B);
    std::vector<std::vector<double>> tilts(B), value_errs(B);
    std::vector<Sums*> zs;
    std::vector<PerturbationResult*> rs;
    for (std::size_t b = 0; b < B; ++b) {
      out[bi][b] = finish_heads(cache, ref, s, recomputes(*batches[bi][b]), sums[bi][b], head_zero[b], tilts[b],
                                value_errs[b]);
      zs.push_back(&sums[bi][b]);
      rs.push_back(&out[bi][b]);
    }
    if (ref.projected())
      project_norms(cache, s, zs, head_zero, rs);
    else
      for (std::size_t b = 0; b < B; ++b) identity_norms(s, zs[b]->delta, *rs[b]);
    for (std::size_t b = 0; b < B; ++b) finish_layer(ref, s, tilts[b], value_errs[b], *rs[b]);
    sums[bi].clear();
    sums[bi].shrink_to_fit();
  }
  return out;
}

std::vector<const Selection*> pointers(const std::vector<Selection>& sels) {
  std::vector<const Selection*> p;
  for (const auto& sel : sels) p.push_back(&sel);
  return p;
}

}  // namespace

std::vector<PerturbationResult> measure_perturbations(const LayerCache& cache, const LayerReference& ref,
                                                      const std::vector<Selection>& sels) {
  if (ref.n_q() != cache.count(ref.set())) fail("selection", "reference", "built for another layer cache");
  return std::move(measure_batches(cache, ref.set(), ref.nu_kind(), &ref, {pointers(sels)}, false, nullptr).front());
}

PerturbationResult measure_perturbation(const LayerCache& cache, const LayerReference& ref, const Selection& sel) {
  return std::move(measure_batches(cache, ref.set(), ref.nu_kind(), &ref, {{&sel}}, false, nullptr).front().front());
}

std::vector<std::vector<PerturbationResult>> measure_rules(const LayerCache& cache, QuerySet set, NormKind nu,
                                                           const std::vector<std::vector<Selection>>& rules,
                                                           double* attention_seconds) {
  std::vector<std::vector<const Selection*>> batches;
  for (const auto& sels : rules) batches.push_back(pointers(sels));
  return measure_batches(cache, set, nu, nullptr, batches, true, attention_seconds);
}

}  // namespace kvsim
