#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "kernels/isa.h"
#include "prefill/block_sparse_attention.h"
#include "prefill/criticality.h"
#include "random_layer.h"

using namespace kvsim;
using namespace kvsim::prefill;

namespace {

PrefillConfig small_config() {
  PrefillConfig cfg;
  cfg.segment = 64;
  cfg.block = 16;
  cfg.budget = 48;  // K = 3
  cfg.threshold = 64;
  return cfg;
}

double max_abs_diff(const avec<float>& a, const avec<float>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, static_cast<double>(std::fabs(a[i] - b[i])));
  return m;
}

// Dense causal attention straight from the definition, in double.
avec<float> naive_causal(const HeadsView& x) {
  avec<float> out(static_cast<std::size_t>(x.num_heads * x.n * x.head_dim));
  for (int h = 0; h < x.num_heads; ++h)
    for (i64 t = 0; t < x.n; ++t) {
      std::vector<double> w(static_cast<std::size_t>(t + 1));
      double mx = -INFINITY, tot = 0;
      for (i64 j = 0; j <= t; ++j) {
        double s = 0;
        for (int c = 0; c < x.head_dim; ++c) s += double(x.q_row(h, t)[c]) * x.k_row(x.kv_head_of(h), j)[c];
        w[j] = s * x.scale;
        mx = std::max(mx, w[j]);
      }
      for (auto& e : w) tot += (e = std::exp(e - mx));
      for (int c = 0; c < x.head_dim; ++c) {
        double acc = 0;
        for (i64 j = 0; j <= t; ++j) acc += w[j] * x.v_row(x.kv_head_of(h), j)[c];
        out[(h * x.n + t) * x.head_dim + c] = static_cast<float>(acc / tot);
      }
    }
  return out;
}

}  // namespace

// The vector kernels this CPU runs, with the shapes they take.
struct FastKernel {
  const char* name;
  bool (*supported)(const HeadsView&, const SegmentPlan&);
  void (*run)(const HeadsView&, const BlockSelection&, float*);
};
std::vector<FastKernel> fast_kernels() {
  std::vector<FastKernel> out;
  if (kernels::cpu_has_avx2()) out.push_back({"avx2", avx2_attention_supported, avx2::block_sparse_attention});
  if (kernels::cpu_has_avx512())
    out.push_back({"avx512", avx512_attention_supported, avx512::block_sparse_attention});
  return out;
}

TEST_CASE("block-sparse attention: AVX2 and AVX-512 vs scalar reference, sparse and dense masks") {
  // head_dim 32 / block 16 (both kernels), head_dim 8 / block 8 (stories260K: AVX2 only).
  for (const auto& [d, block] : {std::pair<int, i64>{32, 16}, std::pair<int, i64>{8, 8}, std::pair<int, i64>{24, 16}}) {
    auto cfg = small_config();
    cfg.block = block;
    cfg.budget = 3 * block;
    for (i64 n : {37, 200, 333}) {  // partial last block and segment
      CAPTURE(d);
      CAPTURE(n);
      test::RandomLayer L(8, 2, d, n, 7 + static_cast<unsigned>(n), 2.0f);
      const SegmentPlan plan(n, cfg);
      const BlockSelection sparse = select_blocks(plan, estimate_criticality(L.view, plan));
      const BlockSelection dense = BlockSelection::dense(plan, 2);
      const std::size_t sz = L.q.size();
      for (const BlockSelection* sel : {&sparse, &dense}) {
        avec<float> ref(sz), fast(sz), disp(sz);
        scalar::block_sparse_attention(L.view, *sel, ref.data());
        block_sparse_attention(L.view, *sel, disp.data());
        CHECK(max_abs_diff(ref, disp) < 1e-5);
        for (const auto& k : fast_kernels()) {
          CAPTURE(k.name);
          if (!k.supported(L.view, plan)) {
            CHECK(std::string(k.name) == "avx512");  // only AVX-512 needs multiples of 16
            CHECK(d % 16 != 0);
            continue;
          }
          k.run(L.view, *sel, fast.data());
          CHECK(max_abs_diff(ref, fast) < 1e-5);
        }
      }
      // The dense mask is exact causal attention.
      avec<float> d_ref(sz);
      scalar::block_sparse_attention(L.view, dense, d_ref.data());
      CHECK(max_abs_diff(d_ref, naive_causal(L.view)) < 1e-5);
    }
  }
}

TEST_CASE("block-sparse attention: sparse kernel equals the dense kernel where the masks agree") {
  const auto cfg = small_config();
  const i64 n = 256;
  test::RandomLayer L(4, 1, 16, n, 3);
  const SegmentPlan plan(n, cfg);
  // A budget covering every block: the sparse selection is the dense one.
  PrefillConfig all = cfg;
  all.budget = n;
  const SegmentPlan plan_all(n, all);
  const BlockSelection full = select_blocks(plan_all, estimate_criticality(L.view, plan_all));
  const BlockSelection dense = BlockSelection::dense(plan_all, 1);
  for (i64 s = 0; s < plan_all.num_segments(); ++s) CHECK(full.blocks(0, s) == dense.blocks(0, s));
  const BlockSelection sparse = select_blocks(plan, estimate_criticality(L.view, plan));
  FastKernel ref_kernel{"scalar", [](const HeadsView&, const SegmentPlan&) { return true; },
                        scalar::block_sparse_attention};
  auto kernels_here = fast_kernels();
  kernels_here.push_back(ref_kernel);
  for (const auto& k : kernels_here) {
    CAPTURE(k.name);
    avec<float> a(L.q.size()), b(L.q.size());
    k.run(L.view, full, a.data());
    k.run(L.view, dense, b.data());
    CHECK(max_abs_diff(a, b) == 0.0);
    // A strictly sparse mask changes the sparsified rows but not the dense segments.
    k.run(L.view, sparse, a.data());
    double dense_rows = 0, sparse_rows = 0;
    for (i64 t = 0; t < n; ++t)
      for (int c = 0; c < 16; ++c) {
        const double e = std::fabs(a[t * 16 + c] - b[t * 16 + c]);
        (plan.segment(plan.segment_of(t)).dense ? dense_rows : sparse_rows) += e;
      }
    CHECK(dense_rows == 0.0);
    CHECK(sparse_rows > 1e-3);
  }
}
