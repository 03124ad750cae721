// Fast top-k (radix / nth_element selection) against the std::partial_sort reference: the
// same index list, in the same order, for random scores, heavy ties, NaN, +-0 and infinities.
#include <algorithm>
#include <set>

#include "kernel_test_util.h"

namespace k = kvsim::kernels;
using namespace kvsim::ktest;
using kvsim::i64;

namespace {

enum class Kind { random, ties, nan_inf_zero, all_equal, all_nan, dense };

std::vector<float> scores(Kind kind, i64 n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> s(static_cast<std::size_t>(n));
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  for (auto& v : s) {
    switch (kind) {
      case Kind::random: v = std::uniform_real_distribution<float>(-1e3f, 1e3f)(rng); break;
      case Kind::ties: v = static_cast<float>(static_cast<int>(rng() % 5)) - 2.f; break;
      case Kind::nan_inf_zero: {
        const float pool[] = {nan, inf, -inf, 0.f, -0.f, 1.f, -1.f, 1e-45f, -1e-45f, 3e38f, -3e38f};
        v = pool[rng() % 11];
        break;
      }
      case Kind::all_equal: v = 0.25f; break;
      case Kind::all_nan: v = nan; break;
      case Kind::dense:  // a few thousand adjacent floats: the select must refine to the last bits
        v = std::nextafter(1.f, 2.f) + static_cast<float>(rng() % 3000) * std::ldexp(1.f, -23);
        break;
    }
  }
  return s;
}

void check_same(const std::vector<float>& s, i64 k) {
  const i64 n = static_cast<i64>(s.size());
  std::vector<i64> ref(static_cast<std::size_t>(std::max<i64>(k, 0)) + 1, -7), got = ref;
  const i64 nr = k::scalar::topk(s.data(), n, k, ref.data());
  const i64 ng = k::topk(s.data(), n, k, got.data());
  CAPTURE(n);
  CAPTURE(k);
  REQUIRE(ng == nr);
  REQUIRE(got == ref);  // same indices, same order, nothing written past the count
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n), 0);
  k::topk_mask(s.data(), n, k, mask.data());
  std::vector<std::uint8_t> want(static_cast<std::size_t>(n), 0);
  for (i64 i = 0; i < nr; ++i) want[ref[i]] = 1;
  REQUIRE(mask == want);
}

}  // namespace

TEST_CASE("scalar topk reference: order by score desc, index asc on ties, NaN skipped") {
  const float nan = std::nanf("");
  const std::vector<float> s = {0.5f, nan, 2.f, 0.5f, -0.f, 2.f, 0.f};
  std::vector<i64> idx(7, -1);
  CHECK(k::scalar::topk(s.data(), 7, 10, idx.data()) == 6);
  CHECK(std::vector<i64>(idx.begin(), idx.begin() + 6) == std::vector<i64>{2, 5, 0, 3, 4, 6});
  CHECK(k::topk(s.data(), 7, 3, idx.data()) == 3);
  CHECK(std::vector<i64>(idx.begin(), idx.begin() + 3) == std::vector<i64>{2, 5, 0});
  CHECK(k::topk(s.data(), 7, 0, idx.data()) == 0);
  CHECK(k::topk(s.data(), 0, 5, idx.data()) == 0);
}

TEST_CASE("fast topk == reference for many (n, k) and score kinds") {
  for (auto kind : {Kind::random, Kind::ties, Kind::nan_inf_zero, Kind::all_equal, Kind::all_nan, Kind::dense}) {
    for (i64 n : {1, 2, 15, 16, 17, 100, 1000, 4099, 20000}) {
      const auto s = scores(kind, n, 1000 + n + static_cast<int>(kind));
      std::set<i64> ks = {0, 1, 2, 7, n / 16 - 1, n / 16, n / 16 + 1, n / 3, n / 2, n - 1, n, n + 5};
      for (i64 k : ks)
        if (k >= 0) check_same(s, k);
    }
  }
}

TEST_CASE("fast topk == reference at 128K scores (long-context scale)") {
  const i64 n = 131072;
  for (auto kind : {Kind::random, Kind::ties, Kind::nan_inf_zero, Kind::dense})
    for (i64 k : {64, 2048, 8191, 65536, 100000}) check_same(scores(kind, n, 77 + k), k);
}
