#include "attention/perturbation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/error.h"
#include "kernels/kernels.h"

namespace kvsim {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr i64 kColChunk = 2048;  // evicted columns gathered per sgemm (bounded temporaries)

double ratio(double x, double ref) { return ref > 0 ? x / ref : (x == 0 ? 0.0 : kNaN); }

struct Shape {
  int H, Hkv, G, d, D;
  i64 S, n;
};

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

// Which sum delta is formed from. The support form o - oP/F loses relative accuracy when F -> 1
// (delta is a small difference), the evicted form (oev - (1-F) o)/F when F -> 0 (1/F amplifies
// rounding); between 5% and 95% both stay within ~1e-6, so the cheaper one (fewer columns) wins.
bool use_support_form(double kept_mass, double evicted_mass, bool prefer_support) {
  const double F = kept_mass / (kept_mass + evicted_mass);
  if (F < 0.05) return true;
  if (F > 0.95) return false;
  return prefer_support;
}

int unit_of(const Selection& sel, int h, int G) { return sel.mode == GqaMode::kv ? h / G : h; }

// Support mask of query qi of head h over [0, t].
void support_mask(const LayerCache& cache, const Selection& sel, QuerySet set, int h, int G, i64 qi,
                  std::vector<std::uint8_t>& m) {
  const i64 t = cache.pos(set, qi);
  const int u = unit_of(sel, h, G);
  m.assign(t + 1, 1);
  if (set == QuerySet::eval && !sel.per_query.empty()) {
    const auto& pq = sel.per_query[u * cache.n_eval() + qi];
    std::copy(pq.begin(), pq.end(), m.begin());
    return;
  }
  const std::uint8_t* kept = sel.unit_mask(u);
  for (i64 j = 0; j < std::min(t + 1, sel.n_c); ++j) m[j] = kept[j] != 0;
}

// Sums over columns `cols` for selected rows of a unit: out_row += sum_{j in cols} a_j v_j
// (gathered, one sgemm per column chunk). rows: (head offset k, query qi) pairs.
void gathered_rowsums(const LayerCache& cache, QuerySet set, const Shape& s, int h0, const std::vector<i64>& cols,
                      const std::vector<std::pair<int, i64>>& rows, float* out /* [rows][d] */) {
  if (cols.empty() || rows.empty()) return;
  const i64 R = static_cast<i64>(rows.size());
  const i64 chunk = std::min<i64>(kColChunk, static_cast<i64>(cols.size()));
  // Fully overwritten before each sgemm reads them: per-thread buffers, no per-call zero fill.
  static thread_local avec<float> Ac, Vc;
  if (Ac.size() < static_cast<std::size_t>(R) * chunk) Ac.resize(static_cast<std::size_t>(R) * chunk);
  if (Vc.size() < static_cast<std::size_t>(chunk) * s.d) Vc.resize(static_cast<std::size_t>(chunk) * s.d);
  const float* V = cache.data().v_head(h0 / s.G);
  for (i64 c0 = 0; c0 < static_cast<i64>(cols.size()); c0 += chunk) {
    const i64 m = std::min<i64>(chunk, static_cast<i64>(cols.size()) - c0);
    for (i64 i = 0; i < m; ++i) std::copy_n(V + cols[c0 + i] * s.d, s.d, Vc.data() + i * s.d);
    for (i64 r = 0; r < R; ++r) {
      const float* row = cache.probs(set, h0 + rows[r].first) + rows[r].second * s.S;
      float* dst = Ac.data() + r * m;
      for (i64 i = 0; i < m; ++i) dst[i] = row[cols[c0 + i]];
    }
    kernels::sgemm(false, false, R, s.d, m, 1.f, Ac.data(), m, Vc.data(), s.d, 1.f, out, s.d);
  }
}

// Static kept mask, all heads of one unit. Masses first (E = sum_ev a_j, Enu = sum_ev a_j nu_j);
// then, per row, the better-conditioned form of delta: rows with F >= 1/2 get the evicted sum
// oev (delta = (oev - (1-F) o)/F), rows with F < 1/2 the support sum oP (delta = o - oP/F),
// so 1/F never amplifies a cancellation. `out` receives oev or oP; use_support marks which.
void static_unit(const LayerCache& cache, const LayerReference& ref, const Selection& sel, const Shape& s,
                 int u, std::vector<double>& E, std::vector<double>& K, std::vector<double>& Enu, std::vector<double>& Knu,
                 avec<float>& out, std::vector<std::uint8_t>& use_support) {
  const QuerySet set = ref.set();
  const int h0 = sel.mode == GqaMode::kv ? u * s.G : u;
  const int nh = sel.mode == GqaMode::kv ? s.G : 1;
  std::vector<i64> ev, sup;
  const std::uint8_t* kept = sel.unit_mask(u);
  for (i64 j = 0; j < sel.n_c; ++j) (kept[j] ? sup : ev).push_back(j);
  if (ev.empty()) return;
  i64 maxt = 0;
  for (i64 qi = 0; qi < s.n; ++qi) maxt = std::max(maxt, cache.pos(set, qi));
  for (i64 j = sel.n_c; j <= maxt; ++j) sup.push_back(j);  // [n_c, t] is always present
  // Masks over [0, maxt]: support (kept + [n_c, t]) and evicted; probabilities past t are zero.
  const i64 len = maxt + 1;
  std::vector<std::uint8_t> m_sup(len, 1), m_ev(len, 0);
  for (i64 j = 0; j < std::min(len, sel.n_c); ++j) {
    m_sup[j] = kept[j] != 0;
    m_ev[j] = kept[j] == 0;
  }
  avec<float> prod(len);
  const bool prefer_support = sup.size() < ev.size();  // fewer columns to gather and multiply
  std::vector<std::pair<int, i64>> rows_ev, rows_sup;
  for (int k = 0; k < nh; ++k) {
    const int h = h0 + k;
    const float* a = cache.probs(set, h);
    const float* nu = cache.value_norms(h, ref.nu_kind());
    for (i64 qi = 0; qi < s.n; ++qi) {
      const float* row = a + qi * s.S;
      for (i64 j = 0; j < len; ++j) prod[j] = row[j] * nu[j];
      const std::size_t at = static_cast<std::size_t>(h) * s.n + qi;
      E[at] = kernels::masked_sum(row, m_ev.data(), len);
      K[at] = kernels::masked_sum(row, m_sup.data(), len);
      Enu[at] = kernels::masked_sum(prod.data(), m_ev.data(), len);
      Knu[at] = kernels::masked_sum(prod.data(), m_sup.data(), len);
      if (E[at] == 0) continue;  // nothing in the support evicted
      const bool small_F = use_support_form(K[at], E[at], prefer_support);
      use_support[at] = small_F;
      (small_F ? rows_sup : rows_ev).push_back({k, qi});
    }
  }
  for (int pass = 0; pass < 2; ++pass) {
    const auto& rows = pass == 0 ? rows_ev : rows_sup;
    if (rows.empty()) continue;
    avec<float> tmp(rows.size() * s.d, 0.f);
    gathered_rowsums(cache, set, s, h0, pass == 0 ? ev : sup, rows, tmp.data());
    for (std::size_t r = 0; r < rows.size(); ++r)
      std::copy_n(tmp.data() + r * s.d, s.d,
                  out.data() + (static_cast<std::size_t>(h0 + rows[r].first) * s.n + rows[r].second) * s.d);
  }
}

// Per-query support (step-wise rules, or window queries with per-query masks absent): same sums
// for one head, one query at a time.
void per_query_head(const LayerCache& cache, const LayerReference& ref, const Selection& sel, const Shape& s,
                    int h, std::vector<double>& E, std::vector<double>& K, std::vector<double>& Enu, std::vector<double>& Knu,
                    avec<float>& oev, std::vector<std::uint8_t>& use_support) {
  const float* a = cache.probs(ref.set(), h);
  const float* nu = cache.value_norms(h, ref.nu_kind());
  const float* V = cache.data().v_head(h / s.G);
  std::vector<std::uint8_t> m, inv;
  for (i64 qi = 0; qi < s.n; ++qi) {
    support_mask(cache, sel, ref.set(), h, s.G, qi, m);
    const float* row = a + qi * s.S;
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
    K[h * s.n + qi] = kept_mass;
    Knu[h * s.n + qi] = knu;
    if (!any) continue;  // nothing in the support is evicted: exactly zero perturbation
    E[h * s.n + qi] = e;
    Enu[h * s.n + qi] = en;
    const bool small_F = use_support_form(kept_mass, e, 2 * n_ev > static_cast<i64>(m.size()));
    use_support[h * s.n + qi] = small_F;
    kernels::masked_weighted_rowsum(row, small_F ? m.data() : inv.data(), V, static_cast<i64>(m.size()), s.d,
                                    s.d, oev.data() + (static_cast<std::size_t>(h) * s.n + qi) * s.d);
  }
}

// ThinK: attention recomputed with pruned key channels over the support; delta = o - o'.
void pruned_keys_head(const LayerCache& cache, const LayerReference& ref, const Selection& sel, const Shape& s,
                      int h, std::vector<double>& E, std::vector<double>& K, avec<float>& delta) {
  const QuerySet set = ref.set();
  const LayerData& L = cache.data();
  const int g = h / s.G;
  const std::uint8_t* ch = sel.key_channels.data() + static_cast<std::size_t>(g) * s.d;
  i64 maxt = 0;
  for (i64 qi = 0; qi < s.n; ++qi) maxt = std::max(maxt, cache.pos(set, qi));
  const i64 ncols = maxt + 1;
  // q . (k * mask) == (q * mask) . k
  avec<float> qm(static_cast<std::size_t>(s.n) * s.d);
  for (i64 qi = 0; qi < s.n; ++qi) {
    const float* q = L.q_row(h, cache.rows(set)[qi]);
    for (int c = 0; c < s.d; ++c) qm[qi * s.d + c] = ch[c] ? q[c] : 0.f;
  }
  avec<float> logits(static_cast<std::size_t>(s.n) * ncols);
  kernels::sgemm(false, true, s.n, ncols, s.d, 1.f, qm.data(), s.d, L.k_head(g), s.d, 0.f, logits.data(), ncols);
  const float scale = cache.meta().attn_scale > 0 ? static_cast<float>(cache.meta().attn_scale)
                                                  : 1.f / std::sqrt(static_cast<float>(s.d));
  const float* a = cache.probs(set, h);
  const double* T = cache.prob_sums(set, h);
  const float* o = cache.outputs(set, h);
  std::vector<std::uint8_t> m;
  std::vector<bool> empty(s.n, false);
  for (i64 qi = 0; qi < s.n; ++qi) {
    support_mask(cache, sel, set, h, s.G, qi, m);
    const i64 t = cache.pos(set, qi);
    float* row = logits.data() + qi * ncols;
    const float* arow = a + qi * s.S;
    double kept_mass = 0;
    bool any = false;
    for (i64 j = 0; j <= t; ++j) {
      if (m[j]) {
        kept_mass += arow[j];
        any = true;
      } else {
        row[j] = -std::numeric_limits<float>::infinity();
      }
    }
    K[h * s.n + qi] = kept_mass;
    double ev_mass = 0;
    for (i64 j = 0; j <= t; ++j)
      if (!m[j]) ev_mass += arow[j];
    E[h * s.n + qi] = ev_mass;
    if (any) kernels::scaled_softmax_inplace(row, t + 1, scale);
    empty[qi] = !any;
    std::fill(row + (any ? t + 1 : 0), row + ncols, 0.f);
  }
  float* dl = delta.data() + static_cast<std::size_t>(h) * s.n * s.d;
  kernels::sgemm(false, false, s.n, s.d, ncols, 1.f, logits.data(), ncols, L.v_head(g), s.d, 0.f, dl, s.d);
  for (i64 qi = 0; qi < s.n; ++qi) {
    const float inv = static_cast<float>(1.0 / T[qi]);
    for (int c = 0; c < s.d; ++c) {
      float& x = dl[qi * s.d + c];
      x = empty[qi] ? std::numeric_limits<float>::quiet_NaN() : o[qi * s.d + c] * inv - x;
    }
  }
}

}  // namespace

PerturbationResult measure_perturbation(const LayerCache& cache, const LayerReference& ref, const Selection& sel) {
  const LayerData& L = cache.data();
  Shape s{L.num_heads, L.num_kv_heads, L.num_heads / L.num_kv_heads, L.head_dim, L.hidden_size, L.seq_len,
          ref.n_q()};
  const QuerySet set = ref.set();
  check_selection(cache, sel, s);
  cache.precompute(set);
  cache.precompute_norms(ref.nu_kind());

  PerturbationResult r;
  r.num_heads = s.H;
  r.n_q = s.n;
  const std::size_t hn = static_cast<std::size_t>(s.H) * s.n;
  for (auto* v : {&r.F, &r.l1, &r.l2, &r.rel_l1, &r.rel_l2, &r.bound_ada, &r.theta}) v->assign(hn, 0.0);
  for (auto* v : {&r.layer_F_mean, &r.layer_F_min, &r.layer_l1, &r.layer_l2, &r.layer_rel_l1, &r.layer_rel_l2,
                  &r.layer_ada, &r.layer_theta})
    v->assign(s.n, 0.0);
  if (s.n == 0) return r;

  const bool pruned = !sel.key_channels.empty();
  const bool per_query = set == QuerySet::eval && !sel.per_query.empty();
  // Evicted mass E and kept mass K are summed separately (both positive sums): F = K / (K + E)
  // never comes from a cancellation, even when almost all the mass is evicted.
  std::vector<double> E(hn, 0.0), K(hn, 0.0), Enu(hn, 0.0), Knu(hn, 0.0);
  avec<float> delta(hn * s.d, 0.f);  // first the evicted (or support) sums, then delta
  std::vector<std::uint8_t> use_support(hn, 0);

  if (pruned) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int h = 0; h < s.H; ++h) pruned_keys_head(cache, ref, sel, s, h, E, K, delta);
  } else if (per_query) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int h = 0; h < s.H; ++h) per_query_head(cache, ref, sel, s, h, E, K, Enu, Knu, delta, use_support);
  } else {
#pragma omp parallel for schedule(dynamic, 1)
    for (int u = 0; u < sel.units; ++u) static_unit(cache, ref, sel, s, u, E, K, Enu, Knu, delta, use_support);
  }

  // delta from the evicted sums, F, per-head bounds; then Delta^h = delta W_o^h and its norms.
  const int width = ref.projected() ? s.D : s.d;
  // Every element is written below (fill, copy or sgemm with beta = 0): reuse one buffer per
  // calling thread instead of allocating and zero-filling hn * width floats (64 MiB at H = 32,
  // 128 queries, D = 4096) on every selection.
  // (The parallel regions below must use the pointer: thread_local names a per-thread object.)
  static thread_local avec<float> proj_buf;
  if (proj_buf.size() < hn * width) proj_buf.resize(hn * width);
  float* const proj = proj_buf.data();
  std::vector<std::uint8_t> head_zero(s.H, 1);
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
      if (E[k] == 0 && !pruned) {  // nothing evicted from the support: exactly zero
        std::fill(dl + qi * s.d, dl + (qi + 1) * s.d, 0.f);
        continue;
      }
      head_zero[h] = 0;
      if (!pruned) {
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
    if (pruned)
      for (i64 qi = 0; qi < s.n; ++qi) r.bound_ada[r.at(h, qi)] = r.theta[r.at(h, qi)] = kNaN;
    float* P = proj + static_cast<std::size_t>(h) * s.n * width;
    if (head_zero[h]) {
      std::fill(P, P + s.n * width, 0.f);
    } else if (ref.projected()) {
      kernels::sgemm(false, true, s.n, s.D, s.d, 1.f, dl, s.d, L.o_proj.data() + static_cast<i64>(h) * s.d,
                     static_cast<i64>(s.H) * s.d, 0.f, P, s.D);
    } else {
      std::copy_n(dl, s.n * s.d, P);
    }
    for (i64 qi = 0; qi < s.n; ++qi) {
      const std::size_t k = r.at(h, qi);
      const float* p = P + qi * width;
      r.l1[k] = kernels::abs_sum(p, width);
      r.l2[k] = std::sqrt(static_cast<double>(kernels::dot(p, p, width)));
      r.rel_l1[k] = ratio(r.l1[k], ref.head_out_l1(h, qi));
      r.rel_l2[k] = ratio(r.l2[k], ref.head_out_l2(h, qi));
    }
  }

  // Layer rows: Delta_t = sum_h Delta^h_t (heads summed in order), Ada-KV and summed theta.
#pragma omp parallel for schedule(static)
  for (i64 qi = 0; qi < s.n; ++qi) {
    double fsum = 0, fmin = 1e300, miss = 0, C = 0, th = 0;
    for (int h = 0; h < s.H; ++h) {
      const std::size_t k = r.at(h, qi);
      fsum += r.F[k];
      fmin = std::min(fmin, r.F[k]);
      miss += 1.0 - r.F[k];
      C = std::max(C, ref.nu_max(h, qi));
      th += r.theta[k];
    }
    r.layer_F_mean[qi] = fsum / s.H;
    r.layer_F_min[qi] = fmin;
    r.layer_ada[qi] = pruned ? kNaN : 2.0 * C * miss;
    r.layer_theta[qi] = pruned ? kNaN : th;
    if (!ref.projected()) {
      double l1 = 0, sq = 0;
      for (int h = 0; h < s.H; ++h) {
        l1 += r.l1[r.at(h, qi)];
        sq += r.l2[r.at(h, qi)] * r.l2[r.at(h, qi)];
      }
      r.layer_l1[qi] = l1;
      r.layer_l2[qi] = std::sqrt(sq);
    } else {
      std::vector<float> y(s.D, 0.f);
      for (int h = 0; h < s.H; ++h) {
        if (head_zero[h]) continue;
        const float* p = proj + r.at(h, qi) * width;
        for (int e = 0; e < s.D; ++e) y[e] += p[e];
      }
      r.layer_l1[qi] = kernels::abs_sum(y.data(), s.D);
      r.layer_l2[qi] = std::sqrt(static_cast<double>(kernels::dot(y.data(), y.data(), s.D)));
    }
    r.layer_rel_l1[qi] = ratio(r.layer_l1[qi], ref.layer_out_l1(qi));
    r.layer_rel_l2[qi] = ratio(r.layer_l2[qi], ref.layer_out_l2(qi));
  }
  return r;
}

}  // namespace kvsim
