// Fast deterministic top-k (portable C++, the same on every ISA). Each non-NaN score j becomes
// one 64-bit key, (rank_key(score) << 32) | j, where rank_key maps floats to uint32 in
// DEScending order (and -0 to +0, which compare equal). Keys are distinct and ascending key
// order is exactly the reference order (larger score first, lower index wins a tie), so:
//   first a radix select (histograms of 11/11/10-bit rank digits) drops every key ranked below
//     the k-th, leaving the k best plus ties at the k-th rank (or a few more: it stops early);
//   few candidates (<= 4096): std::sort them;
//   many candidates per k (ties): nth_element on them, then sort the first k;
//   large k: stable LSD radix sort on the 32-bit rank keys (indices are already ascending
//            within a rank key), 3 passes of 11 bits: O(n).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/kernels.h"

namespace kvsim::kernels {
namespace {

inline std::uint32_t rank_key(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  u = u == 0x80000000u ? 0u : u;  // -0 ties with +0
  // Ascending with the float: flip all bits of negatives, only the sign of positives (written
  // without a branch: the sign of real scores is unpredictable).
  const std::uint32_t flip = (0u - (u >> 31)) | 0x80000000u;
  return ~(u ^ flip);  // descending with the float
}

// Keeps the keys whose top bits (key >> shift) are at most those of the k-th smallest key, given
// `below` keys known to have a smaller prefix at the previous level and the histogram `hist`
// of the next digit among the others. Returns the new prefix bound. Order is preserved.
std::uint64_t narrow(std::vector<std::uint64_t>& keys, std::size_t k, int shift, std::uint64_t prev_bound,
                     const std::vector<std::uint32_t>& hist, std::size_t& below) {
  std::size_t digit = 0;
  for (; digit + 1 < hist.size() && below + hist[digit] < k; ++digit) below += hist[digit];
  const std::uint64_t bound = (prev_bound << (hist.size() == 2048 ? 11 : 10)) | digit;
  std::size_t w = 0;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const std::uint64_t key = keys[i];
    keys[w] = key;
    w += (key >> shift) <= bound;
  }
  keys.resize(w);
  return bound;
}

// Keys of the non-NaN scores whose rank is at most that of the k-th best (k >= 1): the k best
// plus any ties with the k-th, in index order. A radix select on the rank key, 11/11/10 bits;
// it stops refining once few keys beyond k remain. Reuses a per-thread buffer.
std::vector<std::uint64_t>& candidate_keys(const float* score, i64 n, i64 k_in) {
  thread_local std::vector<std::uint64_t> keys;
  thread_local std::vector<std::uint32_t> hist;
  const std::size_t k = static_cast<std::size_t>(k_in);
  keys.resize(static_cast<std::size_t>(n));
  // Four interleaved histograms: runs of equal digits (common: scores share exponents) would
  // otherwise chain every increment through store-to-load forwarding.
  std::array<std::array<std::uint32_t, 2048>, 4> sub{};
  std::size_t m = 0;
  for (i64 j = 0; j < n; ++j) {
    const std::uint64_t key = (static_cast<std::uint64_t>(rank_key(score[j])) << 32) | static_cast<std::uint64_t>(j);
    keys[m] = key;
    const bool keep = !std::isnan(score[j]);
    m += keep;
    sub[j & 3][key >> 53] += keep;
  }
  keys.resize(m);
  hist.resize(2048);
  for (std::size_t b = 0; b < 2048; ++b) hist[b] = sub[0][b] + sub[1][b] + sub[2][b] + sub[3][b];
  if (m <= k) return keys;
  std::size_t below = 0;
  std::uint64_t bound = narrow(keys, k, 53, 0, hist, below);
  for (const int shift : {42, 32}) {
    if (keys.size() <= k + k / 16 + 64) break;
    const std::size_t bits = shift == 42 ? 11 : 10;
    hist.assign(std::size_t{1} << bits, 0);
    for (const std::uint64_t key : keys)
      if ((key >> (shift + bits)) == bound) ++hist[(key >> shift) & ((std::uint64_t{1} << bits) - 1)];
    bound = narrow(keys, k, shift, bound, hist, below);
  }
  return keys;
}

// Stable ascending sort of keys by their upper 32 bits.
void radix_sort_by_rank(std::vector<std::uint64_t>& keys) {
  thread_local std::vector<std::uint64_t> tmp;
  tmp.resize(keys.size());
  std::uint64_t* src = keys.data();
  std::uint64_t* dst = tmp.data();
  const std::size_t m = keys.size();
  constexpr int kBits = 11;
  constexpr std::size_t kBuckets = std::size_t{1} << kBits;
  for (int shift = 32; shift < 64; shift += kBits) {
    std::array<std::size_t, kBuckets> count{};
    for (std::size_t i = 0; i < m; ++i) ++count[(src[i] >> shift) & (kBuckets - 1)];
    if (count[(src[0] >> shift) & (kBuckets - 1)] == m) continue;  // one digit: pass is a no-op
    std::size_t pos = 0;
    for (auto& c : count) { const std::size_t c0 = c; c = pos; pos += c0; }
    for (std::size_t i = 0; i < m; ++i) dst[count[(src[i] >> shift) & (kBuckets - 1)]++] = src[i];
    std::swap(src, dst);
  }
  if (src != keys.data()) std::copy(src, src + m, keys.data());
}

bool fits_key(i64 n) { return n <= static_cast<i64>(std::numeric_limits<std::uint32_t>::max()); }

}  // namespace

i64 topk(const float* score, i64 n, i64 k, i64* idx) {
  if (k <= 0 || n <= 0) return 0;
  if (!fits_key(n)) return scalar::topk(score, n, k, idx);
  auto& keys = candidate_keys(score, n, k);
  const i64 m = static_cast<i64>(keys.size());
  k = std::min(k, m);
  if (k <= 0) return 0;
  if (m <= 4096) {
    std::sort(keys.begin(), keys.end());
  } else if (k * 16 <= m) {
    std::nth_element(keys.begin(), keys.begin() + k - 1, keys.end());
    std::sort(keys.begin(), keys.begin() + k);
  } else {
    radix_sort_by_rank(keys);
  }
  for (i64 i = 0; i < k; ++i) idx[i] = static_cast<i64>(keys[i] & 0xFFFFFFFFu);
  return k;
}

void topk_mask(const float* score, i64 n, i64 k, std::uint8_t* mask) {
  if (k <= 0 || n <= 0) return;
  if (!fits_key(n)) {
    std::vector<i64> idx(static_cast<std::size_t>(std::min(k, n)));
    const i64 got = scalar::topk(score, n, k, idx.data());
    for (i64 i = 0; i < got; ++i) mask[idx[i]] = 1;
    return;
  }
  auto& keys = candidate_keys(score, n, k);
  const i64 m = static_cast<i64>(keys.size());
  k = std::min(k, m);
  if (k <= 0) return;
  if (k < m) std::nth_element(keys.begin(), keys.begin() + k - 1, keys.end());
  for (i64 i = 0; i < k; ++i) mask[keys[i] & 0xFFFFFFFFu] = 1;
}

}  // namespace kvsim::kernels
