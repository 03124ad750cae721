#include "attention/norm_cache.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <system_error>

#include "attention/value_norms.h"
#include "kernels/isa.h"

namespace kvsim {

namespace {

constexpr std::uint64_t P1 = 0x9E3779B185EBCA87ULL, P2 = 0xC2B2AE3D27D4EB4FULL, P3 = 0x165667B19E3779F9ULL,
                        P4 = 0x85EBCA77C2B2AE63ULL, P5 = 0x27D4EB2F165667C5ULL;

inline std::uint64_t rotl(std::uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline std::uint64_t round64(std::uint64_t acc, std::uint64_t in) { return rotl(acc + in * P2, 31) * P1; }
inline std::uint64_t merge(std::uint64_t h, std::uint64_t acc) { return (h ^ round64(0, acc)) * P1 + P4; }
inline std::uint64_t load64(const unsigned char* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline std::uint64_t avalanche_xxh(std::uint64_t h) {
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  return h ^ (h >> 32);
}
inline std::uint64_t avalanche_fmix(std::uint64_t h) {  // MurmurHash3 fmix64
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDULL;
  h ^= h >> 33;
  h *= 0xC4CEB9FE1A85EC53ULL;
  return h ^ (h >> 33);
}

// On-disk entry header: 64 bytes, native byte order, followed by n float32 values.
struct EntryHeader {
  char magic[8];
  std::uint32_t version, kind;
  std::int64_t n;
  std::int32_t d, D;
  std::uint64_t key_lo, key_hi;
  std::uint64_t payload_lo, payload_hi;  // hash of the n floats: catches flipped bytes
};
static_assert(sizeof(EntryHeader) == 64);
constexpr char kMagic[8] = {'K', 'V', 'S', 'I', 'M', 'N', 'U', '1'};

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

}  // namespace

std::string Hash128::hex() const {
  char s[33];
  std::snprintf(s, sizeof s, "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return s;
}

Hasher::Hasher(std::uint64_t seed) : acc_{seed + P1 + P2, seed + P2, seed, seed - P1} {}

void Hasher::stripe(const unsigned char* p) {
  acc_[0] = round64(acc_[0], load64(p));
  acc_[1] = round64(acc_[1], load64(p + 8));
  acc_[2] = round64(acc_[2], load64(p + 16));
  acc_[3] = round64(acc_[3], load64(p + 24));
}

void Hasher::update(const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += bytes;
  if (buf_len_ > 0) {
    const std::size_t take = std::min(bytes, sizeof buf_ - buf_len_);
    std::memcpy(buf_ + buf_len_, p, take);
    buf_len_ += take;
    p += take;
    bytes -= take;
    if (buf_len_ < sizeof buf_) return;
    stripe(buf_);
    buf_len_ = 0;
  }
  // The four lanes are independent dependency chains, so the CPU overlaps their multiplies.
  std::uint64_t a0 = acc_[0], a1 = acc_[1], a2 = acc_[2], a3 = acc_[3];
  for (; bytes >= 32; p += 32, bytes -= 32) {
    a0 = round64(a0, load64(p));
    a1 = round64(a1, load64(p + 8));
    a2 = round64(a2, load64(p + 16));
    a3 = round64(a3, load64(p + 24));
  }
  acc_[0] = a0, acc_[1] = a1, acc_[2] = a2, acc_[3] = a3;
  std::memcpy(buf_, p, bytes);
  buf_len_ = bytes;
}

Hash128 Hasher::digest() const {
  std::uint64_t a[4] = {acc_[0], acc_[1], acc_[2], acc_[3]};
  if (buf_len_ > 0) {  // zero-padded last stripe; the total length below tells padding from data
    unsigned char last[32] = {};
    std::memcpy(last, buf_, buf_len_);
    a[0] = round64(a[0], load64(last));
    a[1] = round64(a[1], load64(last + 8));
    a[2] = round64(a[2], load64(last + 16));
    a[3] = round64(a[3], load64(last + 24));
  }
  std::uint64_t lo = rotl(a[0], 1) + rotl(a[1], 7) + rotl(a[2], 12) + rotl(a[3], 18);
  for (int i = 0; i < 4; ++i) lo = merge(lo, a[i]);
  lo = avalanche_xxh(lo + total_);
  std::uint64_t hi = rotl(a[0], 13) + rotl(a[1], 29) + rotl(a[2], 41) + rotl(a[3], 53) + P5;
  for (int i = 3; i >= 0; --i) hi = (hi ^ rotl(a[i] * P3, 27)) * P5 + P2;
  hi = avalanche_fmix(hi ^ (total_ * P4));
  return {lo, hi};
}

Hash128 hash_bytes(const void* data, std::size_t bytes) {
  Hasher h;
  h.update(data, bytes);
  return h.digest();
}

Hash128 hash_value_rows(const float* v, i64 n, int d) {
  Hasher h(1);
  h.update(v, static_cast<std::size_t>(n) * d * sizeof(float));
  return h.digest();
}

Hash128 hash_o_proj_slice(const float* Wt, i64 ld, int d, int D) {
  Hasher h(2);
  if (!Wt) {
    static constexpr char kIdentity[] = "identity";
    h.update(kIdentity, sizeof kIdentity);
    return h.digest();
  }
  for (i64 e = 0; e < D; ++e) h.update(Wt + e * ld, static_cast<std::size_t>(d) * sizeof(float));
  return h.digest();
}

std::string default_norm_cache_dir() {
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? v : "";
  };
  if (const auto d = env("KVSIM_CACHE_DIR"); !d.empty()) return d;
  if (const auto d = env("XDG_CACHE_HOME"); !d.empty()) return d + "/kvsim";
  if (const auto d = env("HOME"); !d.empty()) return d + "/.cache/kvsim";
  return "";
}

NormCache::NormCache(std::string dir) : dir_(std::move(dir)) {}

// The bits the norm kernels produce on a fixed probe (crossing the row and column blocks of the
// L1 kernel, an offset W slice), with the active ISA: entries written by other kernels (another
// build, ISA or BLAS) never match.
Hash128 NormCache::kernel_fingerprint() const {
  const kernels::Isa isa = kernels::active_isa();
  const int i = static_cast<int>(isa);
  std::call_once(fingerprint_once_[i], [&] {
    constexpr i64 rows = 300;
    constexpr int d = 64, D = 600, ld = 2 * d;
    std::vector<float> v(static_cast<std::size_t>(rows) * d), w(static_cast<std::size_t>(D) * ld);
    std::uint64_t s = 0x2545F4914F6CDD1DULL;
    auto next = [&] {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      return static_cast<float>(static_cast<std::int64_t>(s >> 40) - (1 << 23)) / (1 << 23);
    };
    for (auto& x : v) x = next();
    for (auto& x : w) x = next();
    std::vector<float> l1(rows), l2(rows);
    projected_l1_norms(v.data(), rows, d, w.data() + d, ld, D, l1.data());
    projected_l2_norms(v.data(), rows, d, w.data() + d, ld, D, l2.data());
    Hasher h(3);
    const std::string name = kernels::isa_name(isa);
    h.update(name.data(), name.size());
    h.update(l1.data(), l1.size() * sizeof(float));
    h.update(l2.data(), l2.size() * sizeof(float));
    fingerprint_[i] = h.digest();
  });
  return fingerprint_[i];
}

Hash128 combine_norm_key(const Hash128& v_rows, const Hash128& w_slice, i64 n, int d, int D, NormKind kind,
                         std::uint32_t version, const Hash128& kernels) {
  Hasher h(4);
  h.update_value(version);
  h.update_value(static_cast<std::uint32_t>(kind));
  h.update_value(static_cast<std::int64_t>(n));
  h.update_value(static_cast<std::int32_t>(d));
  h.update_value(static_cast<std::int32_t>(D));
  h.update_value(v_rows);
  h.update_value(w_slice);
  h.update_value(kernels);
  return h.digest();
}

NormKey NormCache::key(const Hash128& v_rows, const Hash128& w_slice, i64 n, int d, int D, NormKind kind) const {
  return NormKey{combine_norm_key(v_rows, w_slice, n, d, D, kind, kNormAlgoVersion, kernel_fingerprint()), kind, n,
                 d, D};
}

std::string NormCache::entry_path(const NormKey& key) const { return dir_ + "/" + key.hash.hex() + ".nu"; }

bool NormCache::load(const NormKey& key, float* out, i64 n) const {
  auto miss = [&] {
    misses_.fetch_add(1);
    return false;
  };
  if (n != key.n || n < 0) return miss();
  File f(std::fopen(entry_path(key).c_str(), "rb"));
  if (!f) return miss();
  EntryHeader hd;
  if (std::fread(&hd, sizeof hd, 1, f.get()) != 1) return miss();
  if (std::memcmp(hd.magic, kMagic, sizeof kMagic) != 0 || hd.version != kNormAlgoVersion ||
      hd.kind != static_cast<std::uint32_t>(key.kind) || hd.n != n || hd.d != key.d || hd.D != key.D ||
      hd.key_lo != key.hash.lo || hd.key_hi != key.hash.hi)
    return miss();
  if (std::fread(out, sizeof(float), static_cast<std::size_t>(n), f.get()) != static_cast<std::size_t>(n))
    return miss();
  if (std::fgetc(f.get()) != EOF) return miss();  // trailing bytes: not an entry this code wrote
  const Hash128 payload = hash_bytes(out, static_cast<std::size_t>(n) * sizeof(float));
  if (payload.lo != hd.payload_lo || payload.hi != hd.payload_hi) return miss();
  hits_.fetch_add(1);
  return true;
}

void NormCache::warn_once(const std::string& what) const {
  store_disabled_.store(true);
  if (!warned_.exchange(true))
    std::cerr << "kvsim: warning: nu cache " << dir_ << ": " << what << "; continuing without storing to it\n";
}

void NormCache::store(const NormKey& key, const float* nu, i64 n) const {
  if (store_disabled_.load() || n != key.n || n < 0) return;
  std::call_once(mkdir_once_, [&] {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec) warn_once("cannot create folder: " + ec.message());
  });
  if (store_disabled_.load()) return;
  EntryHeader hd{};
  std::memcpy(hd.magic, kMagic, sizeof kMagic);
  hd.version = kNormAlgoVersion;
  hd.kind = static_cast<std::uint32_t>(key.kind);
  hd.n = n;
  hd.d = key.d;
  hd.D = key.D;
  hd.key_lo = key.hash.lo;
  hd.key_hi = key.hash.hi;
  const Hash128 payload = hash_bytes(nu, static_cast<std::size_t>(n) * sizeof(float));
  hd.payload_lo = payload.lo;
  hd.payload_hi = payload.hi;

  const std::string path = entry_path(key);
  static std::atomic<i64> tmp_counter{0};  // process-wide: distinct names for every writer
  const std::string tmp =
      path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(tmp_counter.fetch_add(1));
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) {
    warn_once("cannot write " + tmp + ": " + std::strerror(errno));
    return;
  }
  bool ok = std::fwrite(&hd, sizeof hd, 1, f) == 1;
  ok = ok && std::fwrite(nu, sizeof(float), static_cast<std::size_t>(n), f) == static_cast<std::size_t>(n);
  ok = (std::fclose(f) == 0) && ok;
  std::error_code ec;
  if (ok) std::filesystem::rename(tmp, path, ec);
  if (!ok || ec) {
    std::filesystem::remove(tmp, ec);
    warn_once("cannot write " + path + (ok ? "" : " (short write)"));
  }
}

LayerNormKeys::LayerNormKeys(const NormCache& cache, const LayerData& data, i64 n)
    : cache_(cache),
      data_(data),
      n_(n),
      G_(data.num_kv_heads > 0 ? data.num_heads / data.num_kv_heads : 1),
      v_once_(new std::once_flag[std::max(data.num_kv_heads, 1)]),
      w_once_(new std::once_flag[std::max(data.num_heads, 1)]),
      v_hash_(std::max(data.num_kv_heads, 1)),
      w_hash_(std::max(data.num_heads, 1)) {}

NormKey LayerNormKeys::key(int h, NormKind kind) const {
  const int g = h / G_, d = data_.head_dim, D = data_.hidden_size;
  std::call_once(v_once_[g], [&] { v_hash_[g] = hash_value_rows(data_.v_head(g), n_, d); });
  std::call_once(w_once_[h], [&] {
    const float* Wt = data_.has_o_proj() ? data_.o_proj.data() + static_cast<i64>(h) * d : nullptr;
    w_hash_[h] = hash_o_proj_slice(Wt, static_cast<i64>(data_.num_heads) * d, d, D);
  });
  return cache_.key(v_hash_[g], w_hash_[h], n_, d, D, kind);
}

}  // namespace kvsim
