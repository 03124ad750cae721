// NormCache: the hash, the key's sensitivity to every input, the entry format (round trip,
// corrupt entries are misses), and LayerCache loading bit-identical norms from it.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <thread>

#include "attention/layer_cache.h"
#include "attention/norm_cache.h"
#include "layer_fixtures.h"
#include "testutil/testutil.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

std::vector<float> ramp(i64 n, float scale) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (i64 i = 0; i < n; ++i) v[i] = scale * static_cast<float>((i * 7919) % 1000 - 500) / 37.f;
  return v;
}

bool same_bits(const float* a, const float* b, i64 n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

// A key built from real-looking digests, for the entry-format tests.
NormKey sample_key(const NormCache& c, i64 n, NormKind kind = NormKind::l1) {
  const auto v = ramp(n * 4, 1.f), w = ramp(4 * 8, 0.5f);
  return c.key(hash_value_rows(v.data(), n, 4), hash_o_proj_slice(w.data(), 4, 4, 8), n, 4, 8, kind);
}

void rewrite(const std::string& path, const std::function<void(std::string&)>& edit) {
  std::string bytes = slurp(path);
  edit(bytes);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

}  // namespace

TEST_CASE("hasher: streaming in pieces equals one call; every byte and the length matter") {
  std::vector<unsigned char> data(1000);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<unsigned char>(i * 131 + 7);
  const Hash128 whole = hash_bytes(data.data(), data.size());
  for (std::size_t step : {1, 3, 8, 31, 32, 33, 100, 999}) {
    Hasher h;
    for (std::size_t i = 0; i < data.size(); i += step) h.update(data.data() + i, std::min(step, data.size() - i));
    CHECK(h.digest() == whole);
  }
  for (std::size_t i : {0, 1, 31, 32, 500, 998, 999}) {
    auto copy = data;
    copy[i] ^= 1;
    const Hash128 x = hash_bytes(copy.data(), copy.size());
    CHECK(x.lo != whole.lo);
    CHECK(x.hi != whole.hi);
  }
  const unsigned char zeros[3] = {0, 0, 0};
  CHECK(hash_bytes(zeros, 1) != hash_bytes(zeros, 2));  // zero padding never hides the length
  CHECK(hash_bytes(zeros, 0) != hash_bytes(zeros, 1));
  CHECK(whole.hex().size() == 32);
}

TEST_CASE("key: a different V byte, W byte, n, d, D, kind, version or kernel fingerprint changes it") {
  const int d = 8, D = 24, H = 2;
  const i64 n = 40, ld = static_cast<i64>(H) * d;
  auto v = ramp(n * d, 1.f), W = ramp(D * ld, 0.25f);
  const Hash128 fp{1, 2};
  auto key_of = [&](const std::vector<float>& vv, const std::vector<float>& ww, i64 nn, int dd, int DD, NormKind k,
                    std::uint32_t ver, const Hash128& f) {
    return combine_norm_key(hash_value_rows(vv.data(), nn, dd), hash_o_proj_slice(ww.data() + d, ld, dd, DD), nn, dd,
                            DD, k, ver, f);
  };
  const Hash128 base = key_of(v, W, n, d, D, NormKind::l1, 1, fp);
  CHECK(key_of(v, W, n, d, D, NormKind::l1, 1, fp) == base);  // deterministic

  auto v2 = v;
  reinterpret_cast<unsigned char*>(v2.data())[n * d * 4 - 1] ^= 0x01;  // last byte of row n-1
  CHECK(key_of(v2, W, n, d, D, NormKind::l1, 1, fp) != base);
  auto v3 = v;
  v3.resize(static_cast<std::size_t>(n + 1) * d, 1.f);  // a row beyond n: not an input, same key
  CHECK(key_of(v3, W, n, d, D, NormKind::l1, 1, fp) == base);

  auto W2 = W;
  W2[(D - 1) * ld + d + d - 1] = std::nextafter(W2[(D - 1) * ld + d + d - 1], 10.f);  // last entry of the slice
  CHECK(key_of(v, W2, n, d, D, NormKind::l1, 1, fp) != base);
  auto W3 = W;
  W3[0] = 99.f;  // column of the other head: outside the slice
  CHECK(key_of(v, W3, n, d, D, NormKind::l1, 1, fp) == base);

  CHECK(key_of(v, W, n - 1, d, D, NormKind::l1, 1, fp) != base);
  CHECK(key_of(v, W, n, d, D - 1, NormKind::l1, 1, fp) != base);
  CHECK(key_of(v, W, n * 2, d / 2, D, NormKind::l1, 1, fp) != base);  // same V bytes, other shape
  CHECK(key_of(v, W, n, d, D, NormKind::l2, 1, fp) != base);
  CHECK(key_of(v, W, n, d, D, NormKind::l1, 2, fp) != base);
  CHECK(key_of(v, W, n, d, D, NormKind::l1, 1, Hash128{1, 3}) != base);
  CHECK(hash_o_proj_slice(nullptr, ld, d, D) != hash_o_proj_slice(W.data() + d, ld, d, D));

  TempDir dir("nu-key");
  const NormCache c(dir.path.string());
  CHECK(c.kernel_fingerprint() == c.kernel_fingerprint());
  const NormKey k = c.key(hash_value_rows(v.data(), n, d), hash_o_proj_slice(W.data() + d, ld, d, D), n, d, D,
                          NormKind::l1);
  CHECK(k.hash == combine_norm_key(hash_value_rows(v.data(), n, d), hash_o_proj_slice(W.data() + d, ld, d, D), n, d,
                                   D, NormKind::l1, kNormAlgoVersion, c.kernel_fingerprint()));
  CHECK(c.entry_path(k) == dir.path.string() + "/" + k.hash.hex() + ".nu");
}

TEST_CASE("entry: store then load is bit-identical; other keys and sizes miss") {
  TempDir dir("nu-entry");
  const NormCache c(dir.file("cache/sub"));  // created on the first store
  const i64 n = 37;
  std::vector<float> nu = ramp(n, 3.f);
  nu[0] = -0.f;
  nu[1] = std::numeric_limits<float>::denorm_min();
  nu[2] = 1e30f;
  const NormKey key = sample_key(c, n);
  std::vector<float> out(n, 7.f);
  CHECK_FALSE(c.load(key, out.data(), n));
  c.store(key, nu.data(), n);
  CHECK_FALSE(c.store_disabled());
  CHECK(std::filesystem::file_size(c.entry_path(key)) == 64 + n * 4);
  REQUIRE(c.load(key, out.data(), n));
  CHECK(same_bits(out.data(), nu.data(), n));
  CHECK_FALSE(c.load(key, out.data(), n - 1));               // asked for another length
  CHECK_FALSE(c.load(sample_key(c, n, NormKind::l2), out.data(), n));  // another key
  NormKey shape = key;
  shape.D += 1;  // same hash, header disagrees: never trusted
  CHECK_FALSE(c.load(shape, out.data(), n));
  CHECK(c.hits() == 1);
  CHECK(c.misses() == 4);
  for (const auto& e : std::filesystem::directory_iterator(dir.file("cache/sub")))
    CHECK(e.path().extension() == ".nu");  // no temporary left behind

  // A second cache object over the same folder (another run) sees the entry.
  const NormCache c2(dir.file("cache/sub"));
  CHECK(c2.load(key, out.data(), n));
}

TEST_CASE("entry: truncated, corrupt, wrong-magic, wrong-version or padded entries are misses and get rewritten") {
  TempDir dir("nu-corrupt");
  const NormCache c(dir.path.string());
  const i64 n = 64;
  const auto nu = ramp(n, 1.f);
  const NormKey key = sample_key(c, n);
  const std::string path = c.entry_path(key);
  std::vector<float> out(n);
  const std::vector<std::pair<const char*, std::function<void(std::string&)>>> damages = {
      {"truncated payload", [](std::string& b) { b.resize(b.size() - 1); }},
      {"truncated header", [](std::string& b) { b.resize(30); }},
      {"empty", [](std::string& b) { b.clear(); }},
      {"wrong magic", [](std::string& b) { b[7] = '2'; }},
      {"wrong version", [](std::string& b) { b[8] ^= 0x40; }},
      {"wrong kind", [](std::string& b) { b[12] = 1; }},
      {"wrong key", [](std::string& b) { b[40] ^= 1; }},
      {"flipped payload bit", [](std::string& b) { b[64 + 4 * 10 + 2] ^= 0x10; }},
      {"trailing byte", [](std::string& b) { b.push_back('\0'); }},
  };
  for (const auto& [what, damage] : damages) {
    INFO(what);
    c.store(key, nu.data(), n);
    REQUIRE(c.load(key, out.data(), n));
    rewrite(path, damage);
    CHECK_FALSE(c.load(key, out.data(), n));
    c.store(key, nu.data(), n);  // a miss is recomputed and stored over the bad entry
    REQUIRE(c.load(key, out.data(), n));
    CHECK(same_bits(out.data(), nu.data(), n));
  }
  CHECK_FALSE(c.store_disabled());
}

TEST_CASE("entry: concurrent stores of one key leave one valid entry") {
  TempDir dir("nu-concurrent");
  const NormCache a(dir.path.string()), b(dir.path.string());
  const i64 n = 5000;
  const auto nu = ramp(n, 2.f);
  const NormKey key = sample_key(a, n);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) (t % 2 ? a : b).store(key, nu.data(), n);
    });
  for (auto& t : threads) t.join();
  std::vector<float> out(n);
  REQUIRE(a.load(key, out.data(), n));
  CHECK(same_bits(out.data(), nu.data(), n));
  int files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path)) ++files;
  CHECK(files == 1);
}

TEST_CASE("LayerCache with a nu cache: misses and stores, then hits with bit-identical norms") {
  LayerShape s;
  s.H = 4; s.Hkv = 2; s.d = 8; s.D = 600;  // D > column block of the L1 kernel
  s.S = 300; s.n_c = 200;
  const auto meta = make_meta(s);
  const auto L = make_layer(s, 23);
  const std::vector<i64> rows = {250, 280};
  TempDir dir("nu-layer");
  const NormCache nc(dir.path.string());

  LayerCache plain(meta, L, s.n_c, rows);
  {
    LayerCache first(meta, L, s.n_c, rows);
    first.set_norm_cache(&nc);
    first.precompute_norms(NormKind::l1);
    for (int h = 0; h < s.H; ++h) {
      CHECK(same_bits(first.value_norms(h, NormKind::l1), plain.value_norms(h, NormKind::l1), first.norm_len()));
      CHECK(same_bits(first.value_norms(h, NormKind::l2), plain.value_norms(h, NormKind::l2), first.norm_len()));
      CHECK(same_bits(first.value_norms(h, NormKind::upper), plain.value_norms(h, NormKind::upper), first.norm_len()));
      CHECK(std::isnan(first.value_norms(h, NormKind::l1)[first.norm_len()]));
    }
    CHECK(nc.hits() == 0);
    CHECK(nc.misses() == 2 * s.H);  // l1 and l2 per head; upper is never cached
  }
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path)) ++entries;
  CHECK(entries == 2 * s.H);

  LayerCache second(meta, L, s.n_c, rows);
  second.set_norm_cache(&nc);
  second.precompute_norms(NormKind::l2);
  for (int h = 0; h < s.H; ++h) {
    CHECK(same_bits(second.value_norms(h, NormKind::l1), plain.value_norms(h, NormKind::l1), second.norm_len()));
    CHECK(same_bits(second.value_norms(h, NormKind::l2), plain.value_norms(h, NormKind::l2), second.norm_len()));
    CHECK(std::isnan(second.value_norms(h, NormKind::l2)[second.norm_len()]));
  }
  CHECK(nc.hits() == 2 * s.H);
  CHECK(nc.misses() == 2 * s.H);

  // Other evaluation rows change norm_len (the rows hashed): new entries, not stale ones.
  LayerCache shorter(meta, L, s.n_c, {260});
  shorter.set_norm_cache(&nc);
  CHECK(same_bits(shorter.value_norms(0, NormKind::l1), plain.value_norms(0, NormKind::l1), shorter.norm_len()));
  CHECK(nc.misses() == 2 * s.H + 1);

  // Another layer's values (one changed V entry in KV group 1): heads 2, 3 miss, heads 0, 1 hit.
  auto L2 = L;
  L2.v[(1 * s.S + 5) * s.d + 3] += 1.f;
  LayerCache changed(meta, L2, s.n_c, rows);
  changed.set_norm_cache(&nc);
  LayerCache changed_plain(meta, L2, s.n_c, rows);
  const i64 hits0 = nc.hits(), misses0 = nc.misses();
  for (int h = 0; h < s.H; ++h)
    CHECK(same_bits(changed.value_norms(h, NormKind::l1), changed_plain.value_norms(h, NormKind::l1),
                    changed.norm_len()));
  CHECK(nc.hits() == hits0 + 2);
  CHECK(nc.misses() == misses0 + 2);
}

TEST_CASE("LayerCache with a nu cache: traces without o_proj never consult it") {
  LayerShape s;
  s.o_proj = false;
  const auto meta = make_meta(s);
  const auto L = make_layer(s, 5);
  TempDir dir("nu-identity");
  const NormCache nc(dir.path.string());
  LayerCache cache(meta, L, s.n_c, {40});
  cache.set_norm_cache(&nc);
  cache.value_norms(0, NormKind::l1);
  cache.value_norms(1, NormKind::l2);
  CHECK(nc.hits() + nc.misses() == 0);
  CHECK(std::filesystem::is_empty(dir.path));
}

TEST_CASE("unwritable cache folder: no error, no cache, correct norms") {
  TempDir dir("nu-unwritable");
  std::ofstream(dir.file("plain-file")) << "x";
  const NormCache nc(dir.file("plain-file/cache"));  // a folder below a regular file cannot exist
  LayerShape s;
  const auto meta = make_meta(s);
  const auto L = make_layer(s, 9);
  LayerCache plain(meta, L, s.n_c, {40});
  for (int run = 0; run < 2; ++run) {
    LayerCache cache(meta, L, s.n_c, {40});
    cache.set_norm_cache(&nc);
    for (int h = 0; h < s.H; ++h)
      CHECK(same_bits(cache.value_norms(h, NormKind::l1), plain.value_norms(h, NormKind::l1), cache.norm_len()));
  }
  CHECK(nc.store_disabled());
  CHECK(nc.hits() == 0);
}

TEST_CASE("default cache folder: KVSIM_CACHE_DIR, else XDG_CACHE_HOME/kvsim, else HOME/.cache/kvsim") {
  auto saved = [](const char* n) -> std::optional<std::string> {
    const char* v = std::getenv(n);
    return v ? std::optional<std::string>(v) : std::nullopt;
  };
  const auto k = saved("KVSIM_CACHE_DIR"), x = saved("XDG_CACHE_HOME"), h = saved("HOME");
  ::setenv("KVSIM_CACHE_DIR", "/a/kv", 1);
  ::setenv("XDG_CACHE_HOME", "/b/xdg", 1);
  ::setenv("HOME", "/c/home", 1);
  CHECK(default_norm_cache_dir() == "/a/kv");
  ::unsetenv("KVSIM_CACHE_DIR");
  CHECK(default_norm_cache_dir() == "/b/xdg/kvsim");
  ::setenv("XDG_CACHE_HOME", "", 1);
  CHECK(default_norm_cache_dir() == "/c/home/.cache/kvsim");
  ::unsetenv("XDG_CACHE_HOME");
  ::unsetenv("HOME");
  CHECK(default_norm_cache_dir().empty());
  auto restore = [](const char* n, const std::optional<std::string>& v) {
    if (v) ::setenv(n, v->c_str(), 1);
    else ::unsetenv(n);
  };
  restore("KVSIM_CACHE_DIR", k);
  restore("XDG_CACHE_HOME", x);
  restore("HOME", h);
}
