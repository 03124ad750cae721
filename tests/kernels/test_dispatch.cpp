// The dispatching entry points call the implementation of the active ISA, for every kernel.
#include "kernel_test_util.h"

namespace k = kvsim::kernels;
using namespace kvsim::ktest;
using kvsim::i64;

namespace {

// Runs every dispatching kernel on fixed inputs and returns all outputs, concatenated.
std::vector<float> run_all_dispatched() {
  const i64 n = 1000, d = 96;
  const auto x = uniform(n, -5.f, 5.f, 1), y = uniform(n, -1.f, 1.f, 2);
  const auto G = uniform(d * d, -1.f, 1.f, 3);
  const auto mask = random_mask(n, 0.5, 4);
  std::vector<std::uint16_t> h(n);
  for (i64 i = 0; i < n; ++i) h[i] = static_cast<std::uint16_t>(0x3000 + 7 * i);
  std::vector<float> all, buf(n);
  auto put = [&](const std::vector<float>& v, i64 len) { all.insert(all.end(), v.begin(), v.begin() + len); };
  k::widen_f16(h.data(), buf.data(), n);
  put(buf, n);
  k::widen_bf16(h.data(), buf.data(), n);
  put(buf, n);
  all.push_back(static_cast<float>(k::count_nonfinite(x.data(), n)));
  buf = x;
  all.push_back(k::softmax_inplace(buf.data(), n));
  put(buf, n);
  buf = x;
  all.push_back(k::scaled_softmax_inplace(buf.data(), n, 0.3f));
  put(buf, n);
  all.push_back(k::sum(x.data(), n));
  all.push_back(k::masked_sum(x.data(), mask.data(), n));
  all.push_back(k::dot(x.data(), y.data(), n));
  all.push_back(k::abs_sum(x.data(), n));
  all.push_back(k::max_value(x.data(), n));
  std::vector<float> out(d, 0.f);
  k::masked_weighted_rowsum(y.data(), mask.data(), x.data(), n / d, d, d, out.data());
  put(out, d);
  k::row_abs_sums(x.data(), n / d, d, d, out.data());
  put(out, n / d);
  k::row_quadratic_forms(x.data(), n / d, d, G.data(), out.data());
  put(out, n / d);
  k::avg_pool1d(x.data(), n, 7, buf.data());
  put(buf, n);
  k::max_pool1d(x.data(), n, 7, buf.data());
  put(buf, n);
  k::group_reduce(x.data(), 4, n / 4, n / 4, k::GroupOp::mean, buf.data());
  put(buf, n / 4);
  buf = y;
  k::axpy(0.5f, x.data(), buf.data(), n);
  put(buf, n);
  k::scale(buf.data(), n, 3.f);
  put(buf, n);
  float masses[4];
  k::split_mass_sums(x.data(), y.data(), mask.data(), n, masses);
  all.insert(all.end(), masses, masses + 4);
  all.push_back(static_cast<float>(k::compress_masked(x.data(), mask.data(), n, buf.data())));
  put(buf, static_cast<i64>(all.back()));
  std::vector<float> panel(static_cast<std::size_t>(d * k::kPanel)), l1(n / d, 0.f), sq(n / d, 0.f);
  std::vector<float> proj(static_cast<std::size_t>((n / d) * k::kPanel), 0.f);
  k::pack_panels(G.data(), d, d, k::kPanel, panel.data());
  k::project_panel(x.data(), n / d, d, panel.data(), l1.data(), sq.data(), proj.data());
  put(l1, n / d);
  put(sq, n / d);
  put(proj, static_cast<i64>(proj.size()));
  return all;
}

}  // namespace

TEST_CASE("dispatch: the active ISA's implementation runs for every kernel") {
  const k::Isa restore = k::active_isa();
  k::set_isa_for_testing(k::Isa::scalar);
  CHECK(k::active_isa() == k::Isa::scalar);
  const auto scalar_out = run_all_dispatched();
  for (k::Isa isa : {k::Isa::avx2, k::Isa::avx512}) {
    if (!k::cpu_isas().supports(isa)) {
      MESSAGE("CPU/OS without " << std::string(k::isa_name(isa)) << ": its dispatch is not checked here");
      continue;
    }
    CAPTURE(k::isa_name(isa));
    k::set_isa_for_testing(isa);
    CHECK(k::active_isa() == isa);
    const auto simd_out = run_all_dispatched();
    REQUIRE(simd_out.size() == scalar_out.size());
    // Close (they compute the same thing) but not all identical (the reassociated sums and the
    // vector exp differ in the last bits), so each run really went to a different implementation.
    i64 differing = 0;
    for (std::size_t i = 0; i < simd_out.size(); ++i) {
      CAPTURE(i);
      REQUIRE(std::fabs(simd_out[i] - scalar_out[i]) <= 1e-4 * std::max(1.f, std::fabs(scalar_out[i])));
      differing += bits_of(simd_out[i]) != bits_of(scalar_out[i]);
    }
    CHECK(differing > 0);
  }
  k::set_isa_for_testing(restore);
}
