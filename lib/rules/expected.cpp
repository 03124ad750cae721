#include "rules/expected.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/kernels.h"
#include "rules/h2o_common.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {

QueryStats expected_query_stats(const float* pre, i64 m, int d, const Rope& rope, i64 first_future, i64 n_future,
                                bool covariance) {
  QueryStats st;
  std::vector<double> mu(static_cast<std::size_t>(d), 0.0);
  for (i64 t = 0; t < m; ++t)
    for (int c = 0; c < d; ++c) mu[c] += pre[t * d + c];
  for (double& x : mu) x /= static_cast<double>(m);
  std::vector<double> cov(static_cast<std::size_t>(d * d), 0.0);
  if (covariance) {
    avec<float> centred(static_cast<std::size_t>(m * d));
    for (i64 t = 0; t < m; ++t)
      for (int c = 0; c < d; ++c) centred[t * d + c] = static_cast<float>(pre[t * d + c] - mu[c]);
    avec<float> s(static_cast<std::size_t>(d * d));
    kernels::sgemm(true, false, d, d, m, 1.0f / static_cast<float>(m), centred.data(), d, centred.data(), d, 0.0f,
                   s.data(), d);
    for (int i = 0; i < d * d; ++i) cov[i] = s[i];
  }
  // Mean rotation R: per pair (a, b) the block [[c, -s], [s, c]].
  std::vector<double> cm, sm;
  rope.mean_rotation(first_future, n_future, cm, sm);
  st.mean = mu;
  for (int i = 0; i < rope.pairs(); ++i) {
    const int a = rope.a(i), b = rope.b(i);
    st.mean[a] = cm[i] * mu[a] - sm[i] * mu[b];
    st.mean[b] = sm[i] * mu[a] + cm[i] * mu[b];
  }
  st.cov.assign(static_cast<std::size_t>(d * d), 0.0);
  if (covariance) {
    std::vector<double> t = cov;  // t = R cov (row mixes), then cov' = t R^T (column mixes)
    for (int i = 0; i < rope.pairs(); ++i) {
      const int a = rope.a(i), b = rope.b(i);
      for (int col = 0; col < d; ++col) {
        t[a * d + col] = cm[i] * cov[a * d + col] - sm[i] * cov[b * d + col];
        t[b * d + col] = sm[i] * cov[a * d + col] + cm[i] * cov[b * d + col];
      }
    }
    st.cov = t;  // columns outside the rotated pairs (partial rotary) keep t's values
    for (int i = 0; i < rope.pairs(); ++i) {
      const int a = rope.a(i), b = rope.b(i);
      for (int row = 0; row < d; ++row) {
        st.cov[row * d + a] = cm[i] * t[row * d + a] - sm[i] * t[row * d + b];
        st.cov[row * d + b] = sm[i] * t[row * d + a] + cm[i] * t[row * d + b];
      }
    }
  }
  return st;
}

void expected_key_scores(const QueryStats& st, const float* keys, i64 n, int d, float scale, bool covariance,
                         float* out, bool log_space) {
  avec<float> mu(static_cast<std::size_t>(d)), cov(static_cast<std::size_t>(d * d));
  for (int c = 0; c < d; ++c) mu[c] = static_cast<float>(st.mean[c]);
  for (int i = 0; i < d * d; ++i) cov[i] = static_cast<float>(st.cov[i]);
  for (i64 j = 0; j < n; ++j) out[j] = scale * kernels::dot(mu.data(), keys + j * d, d);
  if (covariance) {
    // k^T C k for every key: one GEMM (K C) and a row-wise dot with K.
    avec<float> kc(static_cast<std::size_t>(n * d));
    kernels::sgemm(false, false, n, d, d, 1.0f, keys, d, cov.data(), d, 0.0f, kc.data(), d);
    for (i64 j = 0; j < n; ++j) out[j] += 0.5f * scale * scale * kernels::dot(kc.data() + j * d, keys + j * d, d);
  }
  if (n <= 0) return;
  if (!log_space) {
    kernels::softmax_inplace(out, n);
    return;
  }
  double mx = -INFINITY, z = 0;
  for (i64 j = 0; j < n; ++j) mx = std::max(mx, static_cast<double>(out[j]));
  for (i64 j = 0; j < n; ++j) z += std::exp(static_cast<double>(out[j]) - mx);
  const double lse = mx + std::log(z);
  for (i64 j = 0; j < n; ++j) out[j] = static_cast<float>(static_cast<double>(out[j]) - lse);
}

namespace {

// Group reduction of per-head log scores: log(mean exp), max, log(sum exp), or per head.
void reduce_log_heads(const float* per_head, int H, int G, i64 n, GqaChoice gqa, float* out) {
  if (gqa.mode == GqaMode::query) {
    std::copy(per_head, per_head + static_cast<i64>(H) * n, out);
    return;
  }
  for (int g = 0; g < H / G; ++g)
    for (i64 j = 0; j < n; ++j) {
      double mx = -INFINITY;
      for (int r = 0; r < G; ++r) mx = std::max(mx, static_cast<double>(per_head[(g * G + r) * n + j]));
      double acc = 0;
      if (gqa.op != kernels::GroupOp::max && mx > -INFINITY)
        for (int r = 0; r < G; ++r) acc += std::exp(static_cast<double>(per_head[(g * G + r) * n + j]) - mx);
      const double v = gqa.op == kernels::GroupOp::max ? mx
                       : mx == -INFINITY            ? mx
                       : gqa.op == kernels::GroupOp::sum ? mx + std::log(acc)
                                                         : mx + std::log(acc / G);
      out[g * n + j] = static_cast<float>(v);
    }
}

}  // namespace

namespace {

struct ExpectedParams {
  i64 n_future = 512, n_sink = 4;
  bool covariance = true, vnorm = true;
  double eps = 0;
  GqaChoice gqa;
  bool log_space = true;
};

class ExpectedRule : public ScoredRule {
 public:
  ExpectedRule(std::string spec, ExpectedParams p) : ScoredRule(std::move(spec)), p_(p) {}
  bool attention_like() const override { return true; }

  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    rules_more::check_input(in, "expected");
    const LayerData& D = *in.data;
    const i64 n = end - begin, sink = p_.n_sink;
    if (n <= sink)
      fail(in.meta->path, "prefill_len",
           "expected: the span has " + std::to_string(n) + " tokens, not more than n_sink = " + std::to_string(sink));
    const Rope rope = Rope::from_meta(*in.meta, in.layer);
    const auto rows = rules_more::require_q_rows(*in.meta, begin + sink, end, "expected",
                                                 "its query statistics use every prompt query after the sinks");
    const int H = D.num_heads, G = H / D.num_kv_heads, d = D.head_dim;
    const i64 m = n - sink;
    const float scale = in.meta->logits().scale;
    // cos/sin of every (query position, pair), one table per KV head (the same positions for
    // all of them except in a decode view, where each head kept its own tokens).
    const int pairs = rope.pairs(), tables = in.positions ? D.num_kv_heads : 1;
    std::vector<float> cs(static_cast<std::size_t>(tables * m * pairs)), sn(cs.size());
#pragma omp parallel for collapse(2) schedule(static)
    for (int g = 0; g < tables; ++g)
      for (i64 i = 0; i < m; ++i)
        for (int p = 0; p < pairs; ++p) {
          const double th = rope.angle(p, in.rope_position(g, begin + sink + i));
          cs[(g * m + i) * pairs + p] = static_cast<float>(std::cos(th));
          sn[(g * m + i) * pairs + p] = static_cast<float>(std::sin(th));
        }
    std::vector<float> head_scores(static_cast<std::size_t>(H * n), 0.0f);
#pragma omp parallel
    {
      avec<float> pre(static_cast<std::size_t>(m * d));
#pragma omp for schedule(dynamic)
      for (int h = 0; h < H; ++h) {
        const std::size_t table = static_cast<std::size_t>(tables > 1 ? h / G : 0) * m * pairs;
        for (i64 i = 0; i < m; ++i) {  // q_pre = R_t^T q_post
          const float* q = D.q_row(h, rows[i]);
          float* out = pre.data() + i * d;
          std::copy_n(q, d, out);  // components outside the rotated pairs pass through
          for (int p = 0; p < pairs; ++p) {
            const float c = cs[table + i * pairs + p], s = sn[table + i * pairs + p], xa = q[rope.a(p)],
                        xb = q[rope.b(p)];
            out[rope.a(p)] = xa * c + xb * s;
            out[rope.b(p)] = -xa * s + xb * c;
          }
        }
        const QueryStats st = expected_query_stats(pre.data(), m, d, rope, in.rope_position(h / G, end), p_.n_future,
                                                    p_.covariance);
        expected_key_scores(st, D.k_row(h / G, begin + sink), m, d, scale, p_.covariance,
                            head_scores.data() + h * n + sink, p_.log_space);
      }
    }
    UnitScores s(p_.gqa.mode, rules_more::gqa_units(p_.gqa, D), n);
    s.log_space = p_.log_space;
    if (p_.log_space) reduce_log_heads(head_scores.data(), H, G, n, p_.gqa, s.score.data());
    else reduce_heads(head_scores.data(), H, G, n, n, p_.gqa, s.score.data(), n);
    if (p_.vnorm)
      for (int u = 0; u < s.units; ++u) {
        const int g = rules_more::unit_kv_head(p_.gqa, u, G);
        for (i64 j = sink; j < n; ++j) {
          const float* v = D.v_row(g, begin + j);
          const double vn = std::sqrt(static_cast<double>(kernels::dot(v, v, d)));
          float& x = s.unit(u)[j];
          if (!p_.log_space) {
            x = static_cast<float>((x + p_.eps) * static_cast<float>(vn));
          } else {  // log((p + eps) ||v||) = logaddexp(log p, log eps) + log ||v||
            double lp = x;
            if (p_.eps > 0) {
              const double le = std::log(p_.eps), hi = std::max(lp, le);
              lp = hi + std::log(std::exp(lp - hi) + std::exp(le - hi));
            }
            x = static_cast<float>(lp + std::log(vn));
          }
        }
      }
    s.protect_range(0, sink);
    return s;
  }

 private:
  ExpectedParams p_;
};

RuleInfo expected_info() {
  return {"expected",
          "ExpectedAttention (kvpress): attention expected from future queries, from pre-RoPE query mean and "
          "covariance under the mean future rotation, times the value norm",
          {{"n_future", "int", "512", "future positions averaged into the RoPE rotation"},
           {"n_sink", "int", "4", "first tokens force-kept and left out of the query statistics"},
           {"covariance", "bool", "true", "use the query covariance term"},
           {"vnorm", "bool", "true", "multiply by the value norm (after adding eps)"},
           {"eps", "double", "0", "added to the score before the value-norm rescaling"},
           {"gqa", "choice mean|max|sum|query", "mean", "group reduction, or one set per query head"},
           {"space", "choice log|linear", "log",
            "log: the same scores as logs, so tokens whose float32 softmax underflows to 0 are still ranked "
            "by the estimate (kvpress differs here: it ranks those exact zeros by position); linear: "
            "kvpress's float32 arithmetic, ties included"}},
          /*in_all=*/false};  // needs every prompt query after the sinks
}

std::unique_ptr<Rule> build_expected(SpecReader& r) {
  ExpectedParams p;
  p.n_future = r.get_int("n_future", 512, 1, 1LL << 30);
  p.n_sink = r.get_int("n_sink", 4, 0, 1LL << 40);
  p.covariance = r.get_bool("covariance", true);
  p.vnorm = r.get_bool("vnorm", true);
  p.eps = r.get_double("eps", 0.0, 0.0, 1e30);
  p.gqa = read_gqa(r, "mean");
  p.log_space = r.get_choice("space", "log", {"log", "linear"}) == "log";
  return std::make_unique<ExpectedRule>(r.canonical(), p);
}

KVSIM_RULE(expected_info(), build_expected);

}  // namespace
}  // namespace kvsim
