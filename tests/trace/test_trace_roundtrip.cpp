// TraceWriter -> TraceReader round trips for every storage dtype, subsets of query rows, and
// the narrowing conversions.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "core/error.h"
#include "kernels/kernels.h"
#include "testutil/testutil.h"
#include "trace/float_narrow.h"
#include "trace/trace_reader.h"
#include "trace/trace_validator.h"
#include "trace_test_util.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

float f16_value(float x) {
  const std::uint16_t h = float_to_f16(x);
  float y;
  kernels::scalar::widen_f16(&h, &y, 1);
  return y;
}
float bf16_value(float x) {
  const std::uint16_t h = float_to_bf16(x);
  float y;
  kernels::scalar::widen_bf16(&h, &y, 1);
  return y;
}

void check_tensor(const avec<float>& got, const avec<float>& want, StorageDtype dt, const char* what) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  std::size_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const float w = dt == StorageDtype::float32 ? want[i] : dt == StorageDtype::float16 ? f16_value(want[i]) : bf16_value(want[i]);
    bad += std::memcmp(&got[i], &w, 4) != 0;
  }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("narrowing to float16 rounds to nearest even and flags overflow") {
  CHECK(float_to_f16(1.0f) == 0x3c00);
  CHECK(float_to_f16(-2.0f) == 0xc000);
  CHECK(float_to_f16(65504.0f) == 0x7bff);
  CHECK(float_to_f16(65519.0f) == 0x7bff);  // below the rounding midpoint
  CHECK(float_to_f16(65520.0f) == 0x7c00);  // midpoint rounds to even = inf
  CHECK(float_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);      // tie -> even
  CHECK(float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie -> even (up)
  CHECK(float_to_f16(std::ldexp(1.0f, -24)) == 0x0001);             // smallest subnormal
  CHECK(float_to_f16(std::ldexp(1.0f, -25)) == 0x0000);             // tie -> even (zero)
  CHECK(float_to_f16(3 * std::ldexp(1.0f, -25)) == 0x0002);
  CHECK(float_to_f16(std::ldexp(1.0f, -14)) == 0x0400);             // smallest normal
  CHECK(float_to_f16(std::ldexp(1023.5f, -24)) == 0x0400);          // subnormal rounding up to normal
  CHECK((float_to_f16(std::nanf("")) & 0x7fff) > 0x7c00);
  // Exhaustive: every finite half survives float32 -> half unchanged.
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;
    const std::uint16_t hh = static_cast<std::uint16_t>(h);
    float x;
    kernels::scalar::widen_f16(&hh, &x, 1);
    REQUIRE(float_to_f16(x) == hh);
  }
  const float in[3] = {1.f, 70000.f, 2.f};
  std::uint16_t out[3];
  CHECK(narrow_to_f16(in, out, 3) == 1);
  const float ok[2] = {-65504.f, 0.5f};
  CHECK(narrow_to_f16(ok, out, 2) == -1);
}

TEST_CASE("narrowing to bfloat16 rounds to nearest even") {
  CHECK(float_to_bf16(1.0f) == 0x3f80);
  CHECK(float_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);      // tie -> even
  CHECK(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);  // tie -> even (up)
  CHECK(float_to_bf16(1.0f + std::ldexp(1.0f, -7)) == 0x3f81);      // exact
  CHECK(float_to_bf16(-3.0f) == 0xc040);
  CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80);  // rounds to inf
  const float in[2] = {1.f, std::numeric_limits<float>::max()};
  std::uint16_t out[2];
  CHECK(narrow_to_bf16(in, out, 2) == 1);
}

TEST_CASE("round trip: metadata and every tensor, for every storage dtype") {
  TempDir tmp("trace-rt");
  const SynthOptions o = tiny_options(7);
  TraceMeta meta = synth_meta(o);
  meta.text = "Once upon a time \xe2\x9c\x93";
  meta.model = "tiny/model";
  meta.rope_scaling = "{\"type\": \"linear\", \"factor\": 2.0}";
  meta.has_o = true;
  // Format v2 attributes.
  meta.attn_softcap = 30.0;
  meta.rotary_dim = 4;
  meta.layer_attrs.resize(static_cast<std::size_t>(o.num_layers));
  meta.layer_attrs[0] = {"sliding_attention", 4096, 10000.0, "{\"rope_type\": \"default\"}"};
  meta.layer_attrs[1].attention_type = "full_attention";
  std::vector<LayerData> layers;
  for (int l = 0; l < o.num_layers; ++l) {
    layers.push_back(synth_layer(o, meta, l));
    layers.back().o = layers.back().q;  // any finite tensor of the right shape
    for (float& x : layers.back().o) x *= 0.5f;
  }
  for (StorageDtype dt : {StorageDtype::float32, StorageDtype::float16, StorageDtype::bfloat16}) {
    for (bool gzip : {false, true}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(gzip);
      const std::string path = tmp.file(std::string("rt-") + dtype_name(dt) + (gzip ? "-gz" : "") + ".h5");
      {
        TraceWriter w(path, meta, {dt, gzip});
        for (int l = o.num_layers - 1; l >= 0; --l) w.write_layer(layers[l]);  // any order
        w.finish();
      }
      CHECK(partial_files(path).empty());
      TraceReader r(path);
      const TraceMeta& m = r.meta();
      CHECK(m.path == path);
      CHECK(m.model == meta.model);
      CHECK(m.num_layers == 2);
      CHECK(m.num_heads == 4);
      CHECK(m.num_kv_heads == 2);
      CHECK(m.head_dim == 8);
      CHECK(m.hidden_size == 16);
      CHECK(m.rope_style == RopeStyle::half);
      CHECK(m.rope_theta == 500000.0);
      CHECK(m.rope_scaling == meta.rope_scaling);
      CHECK(m.attn_scale == doctest::Approx(1.0 / std::sqrt(8.0)).epsilon(1e-15));
      CHECK(m.prefill_len == 88);
      CHECK(m.seq_len == 96);
      CHECK(m.input_ids == meta.input_ids);
      CHECK(m.segment == meta.segment);
      CHECK(m.q_pos == meta.q_pos);
      CHECK(m.spans == meta.spans);
      CHECK(m.text == meta.text);
      CHECK(m.dtype == dt);
      CHECK(m.has_o_proj);
      CHECK(m.has_o);
      CHECK(m.context_end() == 80);
      CHECK(m.version == 2);
      CHECK(m.attn_softcap == 30.0);
      CHECK(m.logits().softcap == 30.0f);
      CHECK(m.rotary_dim == 4);
      CHECK(m.layer_attrs[0].attention_type == "sliding_attention");
      CHECK(m.layer_attrs[0].sliding_window == 4096);
      CHECK(m.layer_rope_theta(0) == 10000.0);
      CHECK(m.layer_rope_theta(1) == 500000.0);
      CHECK(m.layer_rope_scaling(0) == "{\"rope_type\": \"default\"}");
      CHECK(m.layer_rope_scaling(1) == meta.rope_scaling);
      CHECK(m.layer_attrs[1].sliding_window == 0);
      for (int l = 0; l < o.num_layers; ++l) {
        LayerRequest req;
        req.o = true;
        const LayerData L = r.read_layer(l, req);
        CHECK(L.layer == l);
        CHECK(L.num_q == meta.num_queries());
        CHECK(L.seq_len == 96);
        check_tensor(L.q, layers[l].q, dt, "q");
        check_tensor(L.k, layers[l].k, dt, "k");
        check_tensor(L.v, layers[l].v, dt, "v");
        check_tensor(L.o_proj, layers[l].o_proj, dt, "o_proj");
        check_tensor(L.o, layers[l].o, dt, "o");
      }
    }
  }
}

TEST_CASE("read_layer: subsets of query rows, in any order, and partial requests") {
  TempDir tmp("trace-rows");
  SynthOptions o = tiny_options(3);
  o.seq_len = 160;
  o.all_queries = true;  // 160 query rows: every other row is 80 runs (> 64: read-and-gather path)
  const i64 N = 160;
  const std::string path = tmp.file("rows.h5");
  for (StorageDtype dt : {StorageDtype::float32, StorageDtype::float16}) {
    write_tiny(path, dt, o);
    TraceReader r(path);
    const LayerData full = r.read_layer(1);
    REQUIRE(full.num_q == N);
    const int H = full.num_heads, d = full.head_dim;
    std::vector<std::vector<i64>> requests = {
        {0, 1, 2, 50, 51, N - 1},  // a few runs: one hyperslab union
        {N - 1, 3, 3, 40},         // unsorted, duplicated
    };
    std::vector<i64> every_other, reversed, two_residues;
    for (i64 i = 0; i < N; i += 2) every_other.push_back(i);
    for (i64 i = N - 1; i >= 0; --i) reversed.push_back(i);
    for (i64 i = 0; i < N; ++i)
      if (i % 3 != 2) two_residues.push_back(i);  // 54 runs of 2: union path
    requests.push_back(every_other);
    requests.push_back(reversed);
    requests.push_back(two_residues);
    for (const auto& rows : requests) {
      LayerRequest req;
      req.q_rows = rows;
      req.k = req.v = req.o_proj = false;
      const LayerData L = r.read_layer(1, req);
      REQUIRE(L.num_q == static_cast<i64>(rows.size()));
      CHECK(L.k.empty());
      CHECK(L.o_proj.empty());
      for (int h = 0; h < H; ++h)
        for (std::size_t i = 0; i < rows.size(); ++i)
          REQUIRE(std::memcmp(L.q_row(h, static_cast<i64>(i)), full.q_row(h, rows[i]), d * sizeof(float)) == 0);
    }
    LayerRequest bad;
    bad.q_rows = {N};
    CHECK_THROWS_WITH_AS(r.read_layer(0, bad), doctest::Contains("requested query row 160"), Error);
    CHECK_THROWS_WITH_AS(r.read_layer(2), doctest::Contains("/layers/2"), Error);
  }
}

TEST_CASE("reader accepts fixed-length strings, missing attn_scale and big-endian float16") {
  TempDir tmp("trace-compat");
  const std::string path = tmp.file("compat.h5");
  write_tiny(path, StorageDtype::float16);
  const LayerData before = TraceReader(path).read_layer(0);
  // Rewrite layer 0's k as big-endian float16 with the same values.
  std::vector<std::uint16_t> raw(before.k.size());
  for (std::size_t i = 0; i < raw.size(); ++i) raw[i] = float_to_f16(before.k[i]);
  edit_h5(path, [&](hid_t f) {
    set_fixed_string_attr(f, "format", "kvsim-trace");
    set_fixed_string_attr(f, "rope_style", "half");
    H5Adelete(f, "attn_scale");
    const hid_t be = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(be, 15, 10, 5, 0, 10);
    H5Tset_size(be, 2);
    H5Tset_ebias(be, 15);
    const hid_t le = H5Tcopy(be);
    H5Tset_order(be, H5T_ORDER_BE);
    replace_dataset(f, "/layers/0/k", be, {2, 96, 8}, le, raw.data());  // HDF5 swaps to BE on write
    H5Tclose(be);
    H5Tclose(le);
  });
  TraceReader r(path);
  CHECK(r.meta().attn_scale == doctest::Approx(1.0 / std::sqrt(8.0)));
  const LayerData after = r.read_layer(0);
  CHECK(after.k == before.k);
  ValidateOptions vo;
  vo.window = 16;
  const auto msgs = validate_trace(path, vo);
  CHECK_MESSAGE(msgs.empty(), (msgs.empty() ? std::string() : msgs[0]));
}

TEST_CASE("read_layer from several threads at once (prefetching) gives the same data") {
  TempDir tmp("trace-threads");
  const std::string path = tmp.file("t.h5");
  write_tiny(path, StorageDtype::float16);
  TraceReader r(path);
  const LayerData want0 = r.read_layer(0), want1 = r.read_layer(1);
  std::vector<int> ok(8, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 10; ++rep) {
        const LayerData L = r.read_layer(i % 2);
        ok[i] += L.k == (i % 2 ? want1.k : want0.k) && L.q == (i % 2 ? want1.q : want0.q);
      }
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 8; ++i) CHECK(ok[i] == 10);
}
