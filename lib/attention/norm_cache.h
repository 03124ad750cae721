#pragma once
// Content-addressed on-disk cache of projected value norms nu^h_j = ||v_j W_o^h|| ("nu cache").
// Exact nu costs S*d*D*2 FLOP per query head (minutes for a long 32-layer trace) and depends only
// on a layer's V rows and W_o, not on rules, budgets or protocol, so repeated replays of one
// trace load it instead of recomputing it.
//
// Key: a 128-bit hash of exactly the inputs (the bytes of value rows [0, n) of the KV head, the
// bytes of the d x D W_o^h slice or an "identity" tag, n, d, D, the norm kind, kNormAlgoVersion)
// and a kernel fingerprint (the active ISA and the bits the norm kernels produce on a fixed probe
// input), so a kernel change that alters results on this machine also changes every key.
// Entry: one file "<dir>/<32 hex>.nu" per (layer head, kind): a 64-byte header (magic
// "KVSIMNU1", version, kind, n, d, D, key, payload hash) and n float32 values. Written to
// "<name>.tmp.<pid>.<k>" then renamed, so concurrent runs are safe. Any unreadable, truncated or
// corrupt entry is a miss (and is overwritten), never an error; a directory that cannot be
// created or written disables storing after one warning on stderr.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "attention/layer_cache.h"
#include "core/types.h"
#include "kernels/isa.h"
#include "trace/layer_data.h"

namespace kvsim {

// Bump whenever projected_l1_norms / projected_l2_norms change their results.
inline constexpr std::uint32_t kNormAlgoVersion = 2;  // 2: l2 Gram summed in order (no sgemm)

struct Hash128 {
  std::uint64_t lo = 0, hi = 0;
  bool operator==(const Hash128&) const = default;
  std::string hex() const;  // 32 lowercase hex digits, hi then lo
};

// Streaming non-cryptographic 128-bit hash: four independent 64-bit multiply-rotate lanes
// (xxHash64-style rounds) over 32-byte stripes, then two differently mixed finalisations of
// the 256-bit state. Byte-order: native (little-endian on every supported machine).
class Hasher {
 public:
  explicit Hasher(std::uint64_t seed = 0);
  void update(const void* data, std::size_t bytes);
  template <class T> void update_value(const T& v) { update(&v, sizeof v); }
  Hash128 digest() const;

 private:
  void stripe(const unsigned char* p);
  std::uint64_t acc_[4];
  unsigned char buf_[32];
  std::size_t buf_len_ = 0;
  std::uint64_t total_ = 0;
};

Hash128 hash_bytes(const void* data, std::size_t bytes);
// The value rows [0, n) of one KV head (v: [n][d], contiguous).
Hash128 hash_value_rows(const float* v, i64 n, int d);
// The W_o^h slice as passed to the norm kernels (Wt[e * ld + c], e < D, c < d); nullptr hashes
// the "identity" tag.
Hash128 hash_o_proj_slice(const float* Wt, i64 ld, int d, int D);

// What a cache entry is for: the full key plus the shape it describes (checked on load).
struct NormKey {
  Hash128 hash;
  NormKind kind = NormKind::l1;
  i64 n = 0;
  int d = 0, D = 0;
};

// The key hash of an entry: the input digests, shape, kind, algorithm version and kernel
// fingerprint (NormCache::key passes kNormAlgoVersion and its own fingerprint).
Hash128 combine_norm_key(const Hash128& v_rows, const Hash128& w_slice, i64 n, int d, int D, NormKind kind,
                         std::uint32_t version, const Hash128& kernels);

// The nu cache folder $KVSIM_CACHE_DIR, else $XDG_CACHE_HOME/kvsim, else $HOME/.cache/kvsim;
// "" when none of them is set.
std::string default_norm_cache_dir();

class NormCache {
 public:
  explicit NormCache(std::string dir);
  const std::string& dir() const { return dir_; }

  // combine_norm_key with kNormAlgoVersion and kernel_fingerprint().
  NormKey key(const Hash128& v_rows, const Hash128& w_slice, i64 n, int d, int D, NormKind kind) const;
  std::string entry_path(const NormKey& key) const;

  // Fills out[0, n) and returns true when a valid entry for key (with key.n == n) exists.
  bool load(const NormKey& key, float* out, i64 n) const;
  // Writes the entry atomically; failures warn once on stderr and disable further stores.
  void store(const NormKey& key, const float* nu, i64 n) const;

  // The bits the l1/l2 kernels produce on a fixed probe input under the active ISA (memoised).
  Hash128 kernel_fingerprint() const;

  i64 hits() const { return hits_.load(); }
  i64 misses() const { return misses_.load(); }
  bool store_disabled() const { return store_disabled_.load(); }

 private:
  void warn_once(const std::string& what) const;

  std::string dir_;
  mutable std::once_flag fingerprint_once_[kernels::kIsaCount], mkdir_once_;  // per kernels::Isa
  mutable Hash128 fingerprint_[kernels::kIsaCount];
  mutable std::atomic<i64> hits_{0}, misses_{0};
  mutable std::atomic<bool> store_disabled_{false}, warned_{false};
};

// The keys of one layer's entries, with the input digests memoised: the V digest once per KV
// group (shared by its G query heads), the W_o^h digest once per head. Thread-safe.
class LayerNormKeys {
 public:
  LayerNormKeys(const NormCache& cache, const LayerData& data, i64 n);
  NormKey key(int h, NormKind kind) const;

 private:
  const NormCache& cache_;
  const LayerData& data_;
  i64 n_;
  int G_;
  mutable std::unique_ptr<std::once_flag[]> v_once_, w_once_;
  mutable std::vector<Hash128> v_hash_, w_hash_;
};

}  // namespace kvsim
