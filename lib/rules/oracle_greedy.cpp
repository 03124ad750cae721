// oracle_greedy: the kept set chosen on the measured objective itself (rules doc 2.19). For the
// evaluation queries t, J(S) = sum_t ||Delta_t(S)||_2^2, Delta the layer perturbation of rules doc
// 1.3 (through o_proj when the trace has it, else the concatenated head outputs). Starting from
// the full cache it evicts, one token at a time, the token whose eviction raises J least given
// the tokens already evicted; the budgets of one call are stops of one descent (nested sets).
//
// Evicting token j of a unit changes head h's output by c_h (v_j - w_h), c_h = a_hj / (F_h - a_hj),
// w_h = U_h / F_h the current kept-set output (F_h the retained mass, U_h = sum_kept a v), so
//   dJ_j = sum_t 2 Delta_t . d_tj + ||d_tj||^2,   d_tj = sum_{h in unit} c_h (v_j - w_h) W_o^h,
// which expands into dot products of v_j with r_h = W_o^h Delta_t and with m_hh' = M_hh' w_h'
// (M_hh' = W_o^h W_o^h'^T, d x d), plus v_j M_hh' v_j. Everything in float64 from the float32
// probabilities of the layer cache. No approximation guarantee (J is not supermodular): the set
// is feasible, so J(optimum) <= J(oracle_greedy), and a rule's ratio to it understates its
// distance from the optimum.
#include <algorithm>
#include <functional>
#include <cmath>
#include <limits>
#include <numeric>
#include <queue>

#include "attention/layer_cache.h"
#include "core/error.h"
#include "kernels/kernels.h"
#include "rules/registry.h"

namespace kvsim {
namespace {

constexpr i64 kRowsPerGemm = 1024;  // value rows per GEMM of a round (bounds the product's memory)

// The layer as the greedy descent sees it: float32 probabilities over the compressible prefix,
// and float64 state of the evicted part per head and evaluation query, kept in the forms the
// costs read: X_hh' = M_hh' E_h' (E_h' the evicted sum a v), so that r_h = W_o^h Delta_t =
// sum_h' M_hh' delta_h' = sum_h' Mo_hh' (1 - 1/F_h') + X_hh' / F_h' and m_ab = M_ab w_b =
// (Mo_ab - X_ab) / F_b cost O(H d) per head and query instead of a pass through o_proj.
struct Descent {
  const LayerData& d;
  i64 n = 0, Q = 0;
  int H = 0, G = 0, dim = 0, units = 0, Gu = 0;
  std::vector<float> prob;   // [H][Q][n]
  std::vector<double> S, o;  // S [H][Q] softmax sums, o [H][Q][dim] full outputs
  std::vector<double> e, E;  // evicted mass [H][Q] and evicted sum_j a v_j [H][Q][dim]
  std::vector<double> M;     // [H][H][dim][dim]: M_hh' = W_o^h W_o^h'^T (identity blocks without o_proj)
  std::vector<double> Mo, X; // [Q][H][H][dim]: M_hh' o_h' and M_hh' E_h'
  std::vector<std::vector<double>> A;  // per unit, once used: [n][Gu*Gu] v_j M_ab v_j
  // Derived from the state, refreshed after every eviction (only what the eviction changed):
  std::vector<double> w, r, rho;  // w_h, r_h = W_o^h Delta_t [Q][H][dim], rho = r_h . w_h [Q][H]
  std::vector<double> m, sigma;   // m_ab = M_ab w_b [Q][H][Gu][dim] (a's unit), sigma = w_a . m_ab [Q][H][Gu]

  Descent(const LayerData& data, const LayerCache& c, i64 n_c, bool kv_mode) : d(data) {
    n = n_c;
    Q = c.n_eval();
    H = d.num_heads;
    G = H / d.num_kv_heads;
    dim = d.head_dim;
    Gu = kv_mode ? G : 1;
    units = H / Gu;
    prob.assign(static_cast<std::size_t>(H) * Q * n, 0.0f);
    S.assign(static_cast<std::size_t>(H) * Q, 0.0);
    o.assign(static_cast<std::size_t>(H) * Q * dim, 0.0);
    c.walk_tiles(QuerySet::eval, [&](int g0, int g1, i64 q0, i64 q1) {
#pragma omp parallel for schedule(dynamic)
      for (int h = g0 * G; h < g1 * G; ++h) {
        const float* out = c.outputs(QuerySet::eval, h, q0, q1);
        const double* sums = c.prob_sums(QuerySet::eval, h, q0, q1);
        for (i64 q = q0; q < q1; ++q) {
          const float* p = c.prob_row(QuerySet::eval, h, q);
          std::copy(p, p + n, prob.begin() + (static_cast<std::size_t>(h) * Q + q) * n);
          S[static_cast<std::size_t>(h) * Q + q] = sums[q];
          for (int k = 0; k < dim; ++k) o[(static_cast<std::size_t>(h) * Q + q) * dim + k] = out[q * dim + k];
        }
      }
    }, true);
    const std::size_t dd = static_cast<std::size_t>(dim) * dim;
    M.assign(static_cast<std::size_t>(H) * H * dd, 0.0);
    if (d.has_o_proj()) {
      const i64 HD = static_cast<i64>(H) * dim, D = d.hidden_size;
      std::vector<double> Wt(static_cast<std::size_t>(HD) * D);  // row h dim + c: W_o^h[c]
      for (i64 r = 0; r < HD; ++r)
        for (i64 k = 0; k < D; ++k) Wt[r * D + k] = d.o_proj[static_cast<std::size_t>(k) * HD + r];
      std::vector<double> full(static_cast<std::size_t>(HD) * HD);
      kernels::dgemm(false, true, HD, HD, D, 1.0, Wt.data(), D, Wt.data(), D, 0.0, full.data(), HD);
      for (int h = 0; h < H; ++h)
        for (int h2 = 0; h2 < H; ++h2)
          for (int x = 0; x < dim; ++x)
            for (int y = 0; y < dim; ++y) Mb(h, h2)[x * dim + y] = full[(h * dim + x) * HD + h2 * dim + y];
    } else {
      for (int h = 0; h < H; ++h)
        for (int x = 0; x < dim; ++x) Mb(h, h)[x * dim + x] = 1.0;
    }
    Mo.assign(static_cast<std::size_t>(Q) * H * H * dim, 0.0);
#pragma omp parallel for schedule(static)
    for (i64 q = 0; q < Q; ++q)
      for (int h = 0; h < H; ++h)
        for (int h2 = 0; h2 < H; ++h2) mul(Mb(h, h2), o.data() + (static_cast<std::size_t>(h2) * Q + q) * dim, MoX(Mo, q, h, h2));
    A.resize(units);
  }

  void reset() {
    e.assign(S.size(), 0.0);
    E.assign(o.size(), 0.0);
    X.assign(Mo.size(), 0.0);
    w.assign(static_cast<std::size_t>(Q) * H * dim, 0.0);
    r.assign(w.size(), 0.0);
    rho.assign(static_cast<std::size_t>(Q) * H, 0.0);
    m.assign(static_cast<std::size_t>(Q) * H * Gu * dim, 0.0);
    sigma.assign(static_cast<std::size_t>(Q) * H * Gu, 0.0);
    std::vector<int> all(units);
    std::iota(all.begin(), all.end(), 0);
    refresh(all);  // every unit's part, then r once (not once per unit)
  }

  int head(int u, int a) const { return u * Gu + a; }
  int kv_head(int u) const { return u * Gu / G; }
  const float* p(int h, i64 q) const { return prob.data() + (static_cast<std::size_t>(h) * Q + q) * n; }
  double F(int h, i64 q) const { return S[h * Q + q] - e[h * Q + q]; }
  double* Mb(int h, int h2) { return M.data() + (static_cast<std::size_t>(h) * H + h2) * dim * dim; }
  const double* Mb(int h, int h2) const { return M.data() + (static_cast<std::size_t>(h) * H + h2) * dim * dim; }
  double* MoX(std::vector<double>& t, i64 q, int h, int h2) const {
    return t.data() + ((static_cast<std::size_t>(q) * H + h) * H + h2) * dim;
  }
  const double* MoX(const std::vector<double>& t, i64 q, int h, int h2) const {
    return t.data() + ((static_cast<std::size_t>(q) * H + h) * H + h2) * dim;
  }
  void mul(const double* m, const double* x, double* y) const {  // y = m x
    for (int a = 0; a < dim; ++a) {
      double s = 0;
      for (int b = 0; b < dim; ++b) s += m[a * dim + b] * x[b];
      y[a] = s;
    }
  }
  template <class V>
  double dot(const V* x, const double* y) const {
    double s = 0;
    for (int k = 0; k < dim; ++k) s += x[k] * y[k];
    return s;
  }

  const double* at(const std::vector<double>& x, i64 q, int h) const { return x.data() + (q * H + h) * dim; }
  double* at(std::vector<double>& x, i64 q, int h) { return x.data() + (q * H + h) * dim; }
  const double* m_at(i64 q, int h, int b) const { return m.data() + ((q * H + h) * Gu + b) * dim; }

  // After the state of the given units' heads changed: their w, m and sigma; then every head's r
  // and rho once (r_h = sum_h' M_hh' delta_h' = sum_h' Mo_hh' (1 - 1/F_h') + X_hh' / F_h').
  void refresh(const std::vector<int>& changed) {
#pragma omp parallel for schedule(static)
    for (i64 q = 0; q < Q; ++q) {
      for (int u : changed) {
        for (int a = 0; a < Gu; ++a) {
          const int h = head(u, a);
          const std::size_t i = (static_cast<std::size_t>(h) * Q + q) * dim;
          const double f = F(h, q);
          double* wh = at(w, q, h);
          for (int k = 0; k < dim; ++k) wh[k] = (o[i + k] - E[i + k]) / f;
        }
        for (int a = 0; a < Gu; ++a)
          for (int b = 0; b < Gu; ++b) {
            const int ha = head(u, a), hb = head(u, b);
            const double f = F(hb, q);
            const double* mo = MoX(Mo, q, ha, hb);
            const double* x = MoX(X, q, ha, hb);
            double* mab = m.data() + ((q * H + ha) * Gu + b) * dim;
            for (int k = 0; k < dim; ++k) mab[k] = (mo[k] - x[k]) / f;
            sigma[(q * H + ha) * Gu + b] = dot(at(w, q, ha), mab);
          }
      }
      std::vector<double> ca(H), cb(H);
      for (int h2 = 0; h2 < H; ++h2) {
        ca[h2] = 1.0 - 1.0 / F(h2, q);
        cb[h2] = 1.0 / F(h2, q);
      }
      for (int h = 0; h < H; ++h) {
        double* rh = at(r, q, h);
        std::fill(rh, rh + dim, 0.0);
        for (int h2 = 0; h2 < H; ++h2) {
          const double* mo = MoX(Mo, q, h, h2);
          const double* x = MoX(X, q, h, h2);
          for (int k = 0; k < dim; ++k) rh[k] += ca[h2] * mo[k] + cb[h2] * x[k];
        }
        rho[q * H + h] = dot(rh, at(w, q, h));
      }
    }
  }

  // A unit's constants v_j M_ab v_j (once).
  void prepare_unit(int u) {
    if (!A[u].empty()) return;
    A[u].assign(static_cast<std::size_t>(n) * Gu * Gu, 0.0);
    const float* V = d.v_head(kv_head(u));
#pragma omp parallel for schedule(static)
    for (i64 j = 0; j < n; ++j) {
      std::vector<double> vd(V + j * dim, V + (j + 1) * dim), mv(dim);
      for (int a = 0; a < Gu; ++a)
        for (int b = 0; b < Gu; ++b) {
          mul(Mb(head(u, a), head(u, b)), vd.data(), mv.data());
          A[u][static_cast<std::size_t>(j) * Gu * Gu + a * Gu + b] = dot(vd.data(), mv.data());
        }
    }
  }

  // The cost terms of query q given c_a and the dot products: 2 sum_a c_a (v.r_a - r_a.w_a) +
  // sum_ab c_a c_b (v M_ab v - 2 v.m_ab + w_a.m_ab).
  static double combine(int Gu, const double* c, const double* vr, const double* rw, const double* Aj,
                        const double* vm, const double* wm) {
    double lin = 0, quad = 0;
    for (int a = 0; a < Gu; ++a) {
      if (c[a] == 0) continue;
      lin += c[a] * (vr[a] - rw[a]);
      for (int b = 0; b < Gu; ++b)
        if (c[b] != 0) quad += c[a] * c[b] * (Aj[a * Gu + b] - 2 * vm[a * Gu + b] + wm[a * Gu + b]);
    }
    return 2 * lin + quad;
  }

  // c_a = p_a / (F_a - p_a) for token j of unit u at query q; false when evicting j would empty
  // the query's support (never evicted: infinite cost).
  bool weights(int u, i64 j, i64 q, double* c) const {
    for (int a = 0; a < Gu; ++a) {
      const int h = head(u, a);
      const double pa = p(h, q)[j], f = F(h, q);
      c[a] = 0;
      if (pa <= 0) continue;
      if (!(f - pa > 0)) return false;
      c[a] = pa / (f - pa);
    }
    return true;
  }

  // Exact dJ of evicting token j of unit u now.
  double cost(int u, i64 j) const {
    const float* v = d.v_row(kv_head(u), j);
    const double* Aj = A[u].data() + static_cast<std::size_t>(j) * Gu * Gu;
    std::vector<double> c(Gu), vr(Gu), rw(Gu), vm(Gu * Gu), wm(Gu * Gu);
    double total = 0;
    for (i64 q = 0; q < Q; ++q) {
      if (!weights(u, j, q, c.data())) return std::numeric_limits<double>::infinity();
      bool any = false;
      for (int a = 0; a < Gu; ++a) any = any || c[a] != 0;
      if (!any) continue;
      for (int a = 0; a < Gu; ++a) {
        const int h = head(u, a);
        vr[a] = dot(v, at(r, q, h));
        rw[a] = rho[q * H + h];
        for (int b = 0; b < Gu; ++b) {
          vm[a * Gu + b] = dot(v, m_at(q, h, b));
          wm[a * Gu + b] = sigma[(q * H + h) * Gu + b];
        }
      }
      total += combine(Gu, c.data(), vr.data(), rw.data(), Aj, vm.data(), wm.data());
    }
    return total;
  }

  // dJ for every kept token of unit u (NaN elsewhere): the dot products with v_j as one GEMM
  // per block of value rows.
  void costs(int u, const std::uint8_t* kept, double* out) const {
    const int per_q = Gu + Gu * Gu;
    const i64 cols = Q * per_q;
    // Y [dim][cols]: per query, r of each head of the unit, then m_ab.
    std::vector<double> Y(static_cast<std::size_t>(dim) * cols), rw(static_cast<std::size_t>(Q) * Gu),
        wm(static_cast<std::size_t>(Q) * Gu * Gu);
    for (i64 q = 0; q < Q; ++q)
      for (int a = 0; a < Gu; ++a) {
        const int h = head(u, a);
        const double* rh = at(r, q, h);
        for (int k = 0; k < dim; ++k) Y[k * cols + q * per_q + a] = rh[k];
        rw[q * Gu + a] = rho[q * H + h];
        for (int b = 0; b < Gu; ++b) {
          const double* mab = m_at(q, h, b);
          for (int k = 0; k < dim; ++k) Y[k * cols + q * per_q + Gu + a * Gu + b] = mab[k];
          wm[(q * Gu + a) * Gu + b] = sigma[(q * H + h) * Gu + b];
        }
      }
    const float* V = d.v_head(kv_head(u));
    std::vector<double> Vd, Z;
    for (i64 j0 = 0; j0 < n; j0 += kRowsPerGemm) {
      const i64 rows = std::min(kRowsPerGemm, n - j0);
      Vd.assign(V + j0 * dim, V + (j0 + rows) * dim);
      Z.resize(static_cast<std::size_t>(rows) * cols);
      kernels::dgemm(false, false, rows, cols, dim, 1.0, Vd.data(), dim, Y.data(), cols, 0.0, Z.data(), cols);
#pragma omp parallel for schedule(static)
      for (i64 jj = 0; jj < rows; ++jj) {
        const i64 j = j0 + jj;
        if (!kept[j]) {
          out[j] = std::nan("");
          continue;
        }
        const double* z = Z.data() + jj * cols;
        const double* Aj = A[u].data() + static_cast<std::size_t>(j) * Gu * Gu;
        std::vector<double> c(Gu);
        double total = 0;
        for (i64 q = 0; q < Q; ++q) {
          if (!weights(u, j, q, c.data())) {
            total = std::numeric_limits<double>::infinity();
            break;
          }
          const double* zq = z + q * per_q;
          total += combine(Gu, c.data(), zq, rw.data() + q * Gu, Aj, zq + Gu, wm.data() + q * Gu * Gu);
        }
        out[j] = total;
      }
    }
  }

  // Evicts token j of unit u: e, E and X = M E of its heads for every query, then what derives.
  void evict(int u, i64 j) {
    const float* v = d.v_row(kv_head(u), j);
    const std::vector<double> vd(v, v + dim);
    std::vector<double> Mv(static_cast<std::size_t>(H) * Gu * dim);  // M_{h, head(u,a)} v
    for (int h = 0; h < H; ++h)
      for (int a = 0; a < Gu; ++a) mul(Mb(h, head(u, a)), vd.data(), Mv.data() + (h * Gu + a) * dim);
#pragma omp parallel for schedule(static)
    for (i64 q = 0; q < Q; ++q)
      for (int a = 0; a < Gu; ++a) {
        const int h2 = head(u, a);
        const double pa = p(h2, q)[j];
        if (pa == 0) continue;
        e[h2 * Q + q] += pa;
        double* Eq = E.data() + (static_cast<std::size_t>(h2) * Q + q) * dim;
        for (int k = 0; k < dim; ++k) Eq[k] += pa * vd[k];
        for (int h = 0; h < H; ++h) {
          double* x = MoX(X, q, h, h2);
          const double* mv = Mv.data() + (h * Gu + a) * dim;
          for (int k = 0; k < dim; ++k) x[k] += pa * mv[k];
        }
      }
    refresh({u});
  }
};

struct Candidate {
  double cost;
  int unit;
  i64 pos;
};

class OracleGreedyRule : public Rule {
 public:
  OracleGreedyRule(std::string spec, GqaMode mode, bool per_head, double step)
      : spec_(std::move(spec)), mode_(mode), per_head_(per_head), step_(step) {}
  std::string spec() const override { return spec_; }

  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    if (!in.cache) fail(spec_, "", "needs the layer cache of evaluation attention");
    const LayerData& data = *in.data;
    if (in.cache->n_eval() == 0) fail(spec_, "", "no evaluation queries at or after the compression point");
    if (data.num_heads / data.num_kv_heads > 64) fail(spec_, "", "more than 64 query heads per KV head");
    const i64 n = in.n_c;
    Descent L(data, *in.cache, n, mode_ == GqaMode::kv);
    std::vector<i64> B(budgets.size());
    for (std::size_t b = 0; b < budgets.size(); ++b) B[b] = std::min(n, budgets[b].tokens_for(n));
    std::vector<Selection> out(budgets.size());
    if (per_head_) {
      // A unit may not go below its budget, so the path depends on it: one descent per budget.
      for (std::size_t b = 0; b < budgets.size(); ++b) out[b] = descend(L, B[b], {B[b] * L.units})[0];
      return out;
    }
    // One descent; every budget is a stop on its path (which no stop changes), nested kept sets.
    std::vector<i64> stops;
    for (i64 x : B) stops.push_back(x * L.units);
    std::sort(stops.begin(), stops.end(), std::greater<i64>());
    stops.erase(std::unique(stops.begin(), stops.end()), stops.end());
    const std::vector<Selection> at = descend(L, 0, stops);
    for (std::size_t b = 0; b < budgets.size(); ++b)
      out[b] = at[std::find(stops.begin(), stops.end(), B[b] * L.units) - stops.begin()];
    return out;
  }

 private:
  // From the full cache down to the last of stops (total kept tokens, decreasing), no unit below
  // floor; the kept set at each stop. Every candidate's exact cost is computed together (one GEMM
  // per unit) after every ceil(step x kept) evictions (every eviction for step 0: the exact
  // greedy); in between, the cheapest by its last cost is recomputed for the current set and
  // evicted if it is still the cheapest (lazy greedy), else put back. Stops only take snapshots,
  // so a stop's set does not depend on the other stops.
  std::vector<Selection> descend(Descent& L, i64 floor, const std::vector<i64>& stops) const {
    const int U = L.units;
    const i64 n = L.n;
    L.reset();
    Selection keep(mode_, U, n);
    std::fill(keep.kept.begin(), keep.kept.end(), std::uint8_t{1});
    std::vector<i64> kept_count(U, n);
    i64 total = n * U;
    std::vector<Selection> snaps;
    // Min-heap of candidates by cost; at equal cost the later token (then the later unit) goes
    // first, so ties keep lower positions as everywhere in kvsim (rules doc 1.7).
    auto later = [](const Candidate& x, const Candidate& y) {  // x after y in eviction order
      if (x.cost != y.cost) return x.cost > y.cost;
      if (x.pos != y.pos) return x.pos < y.pos;
      return x.unit < y.unit;
    };
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> heap(later);
    std::vector<double> cost(static_cast<std::size_t>(n));
    std::size_t next = 0;
    i64 since_rescore = 0, rescore_every = 1;
    while (next < stops.size()) {
      if (total <= stops[next]) {
        snaps.push_back(keep);
        ++next;
        continue;
      }
      if (heap.empty() || since_rescore >= rescore_every) {
        heap = decltype(heap)(later);
        for (int u = 0; u < U; ++u) {
          if (kept_count[u] <= floor) continue;
          L.prepare_unit(u);
          L.costs(u, keep.unit_mask(u), cost.data());
          for (i64 j = 0; j < n; ++j)
            if (keep.unit_mask(u)[j] && std::isfinite(cost[j])) heap.push({cost[j], u, j});
        }
        if (heap.empty()) fail(spec_, "", "no token can be evicted without emptying a query's support");
        since_rescore = 0;
        rescore_every = step_ > 0 ? std::max<i64>(1, static_cast<i64>(std::ceil(step_ * total))) : 1;
      }
      Candidate x = heap.top();
      heap.pop();
      if (!keep.unit_mask(x.unit)[x.pos] || kept_count[x.unit] <= floor) continue;
      if (since_rescore > 0) {  // stale since the last eviction: recompute, evict only if still first
        x.cost = L.cost(x.unit, x.pos);
        if (!std::isfinite(x.cost)) continue;
        if (!heap.empty() && later(x, heap.top())) {
          heap.push(x);
          continue;
        }
      }
      L.evict(x.unit, x.pos);
      keep.unit_mask(x.unit)[x.pos] = 0;
      --kept_count[x.unit];
      --total;
      ++since_rescore;
    }
    return snaps;
  }

  std::string spec_;
  GqaMode mode_;
  bool per_head_;
  double step_;
};

KVSIM_RULE((RuleInfo{"oracle_greedy",
                     "greedy descent on the measured objective sum_t ||Delta_t||_2^2 (the layer perturbation of the "
                     "evaluation queries): evicts, one at a time, the token whose eviction raises it least; the "
                     "reference the report's ratio-to-optimum table divides by",
                     {{"alloc", "choice layer|head", "layer",
                       "layer: the layer's units share units x budget tokens (any split); head: budget tokens per unit"},
                      {"gqa", "choice kv|query", "kv", "one kept set per KV head, or per query head"},
                      {"step", "double [0, 0.5]", "0.02",
                       "share of the kept tokens evicted between two exact re-scorings of every candidate (lazy "
                       "greedy in between); 0 = re-score after every eviction (exact greedy)"}},
                     /*in_all=*/false}),  // in "all"; "default" stays the set earlier results used
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const bool per_head = r.get_choice("alloc", "layer", {"layer", "head"}) == "head";
             const GqaMode mode = r.get_choice("gqa", "kv", {"kv", "query"}) == "kv" ? GqaMode::kv : GqaMode::query;
             const double step = r.get_double("step", 0.02, 0.0, 0.5);
             return std::make_unique<OracleGreedyRule>(r.canonical(), mode, per_head, step);
           });

}  // namespace
}  // namespace kvsim
