// The validator on one broken file per rule it checks, and the reader on the same files.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/error.h"
#include "testutil/testutil.h"
#include "trace/trace_reader.h"
#include "trace/trace_validator.h"
#include "trace_test_util.h"

using namespace kvsim;
using namespace kvsim::test;
namespace fs = std::filesystem;

namespace {

struct BrokenCase {
  const char* name;
  std::function<void(hid_t)> edit;
  const char* expect;        // substring of one validator message
  bool reader_rejects_open;  // TraceReader's constructor must throw too
};

// Creates the variable-length string attribute `name` on obj (which must not have it yet).
void create_string_attr(hid_t obj, const char* name, const std::string& v) {
  const hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  const hid_t s = H5Screate(H5S_SCALAR);
  const hid_t a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
  const char* p = v.c_str();
  H5Awrite(a, t, &p);
  H5Aclose(a);
  H5Sclose(s);
  H5Tclose(t);
}

void set_string(hid_t f, const char* name, const std::string& v) {
  H5Adelete(f, name);
  create_string_attr(f, name, v);
}

void set_dataset_string_attr(hid_t f, const std::string& dset, const char* name, const std::string& v) {
  const hid_t d = H5Dopen2(f, dset.c_str(), H5P_DEFAULT);
  if (H5Aexists(d, name) <= 0) create_string_attr(d, name, v);
  H5Dclose(d);
}

void in_group(hid_t f, const char* path, const std::function<void(hid_t)>& edit) {
  const hid_t g = H5Gopen2(f, path, H5P_DEFAULT);
  REQUIRE(g >= 0);
  edit(g);
  H5Gclose(g);
}

std::vector<long long> read_i64(hid_t f, const char* path) {
  const hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
  const hid_t s = H5Dget_space(d);
  std::vector<long long> v(static_cast<std::size_t>(H5Sget_simple_extent_npoints(s)));
  H5Dread(d, H5T_NATIVE_LLONG, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
  H5Sclose(s);
  H5Dclose(d);
  return v;
}

bool any_contains(const std::vector<std::string>& msgs, const std::string& s) {
  for (const auto& m : msgs)
    if (m.find(s) != std::string::npos) return true;
  return false;
}

std::string joined(const std::vector<std::string>& msgs) {
  std::string s;
  for (const auto& m : msgs) s += m + "\n";
  return s;
}

}  // namespace

TEST_CASE("validator: a valid trace has no problems, in every dtype") {
  TempDir tmp("val-ok");
  for (StorageDtype dt : {StorageDtype::float32, StorageDtype::float16, StorageDtype::bfloat16}) {
    const std::string p = tmp.file(std::string("ok-") + dtype_name(dt) + ".h5");
    write_tiny(p, dt);
    ValidateOptions vo;
    vo.window = 16;
    const auto msgs = validate_trace(p, vo);
    CHECK_MESSAGE(msgs.empty(), joined(msgs));
  }
}

TEST_CASE("validator and reader: one broken file per rule") {
  TempDir tmp("val-broken");
  const std::string base = tmp.file("base.h5");
  write_tiny(base);
  const std::vector<long long> qpos_base = [&] {
    std::vector<long long> v;
    edit_h5(base, [&](hid_t f) { v = read_i64(f, "/q_pos"); });
    return v;
  }();
  REQUIRE(qpos_base.size() == 32);
  const std::vector<float> zeros(4 * 96 * 8 * 2, 0.f);
  const std::vector<double> zeros64(2 * 96 * 8, 0.0);
  const std::vector<std::uint16_t> zeros16(2 * 96 * 8, 0);

  const std::vector<BrokenCase> cases = {
      {"format", [](hid_t f) { set_string(f, "format", "other-trace"); }, "@format: is \"other-trace\"", true},
      {"version", [](hid_t f) { set_int_attr(f, "version", 3); }, "@version: is 3; this kvsim reads trace format versions 1 to 2", true},
      {"softcap", [](hid_t f) { set_double_attr(f, "attn_logit_softcap", -1); }, "@attn_logit_softcap: must be >= 0", true},
      {"rotary_dim", [](hid_t f) { set_int_attr(f, "rotary_dim", 3); }, "@rotary_dim: is 3, must be even", true},
      {"rotary_dim > head_dim", [](hid_t f) { set_int_attr(f, "rotary_dim", 10); }, "@rotary_dim: is 10", true},
      {"sliding window", [](hid_t f) { in_group(f, "layers/1", [](hid_t g) { set_int_attr(g, "sliding_window", 64); }); },
       "/layers/1@sliding_window: is 64 but the trace has 96 positions", true},
      {"layer rope_theta", [](hid_t f) { in_group(f, "layers/0", [](hid_t g) { set_double_attr(g, "rope_theta", -5); }); },
       "/layers/0@rope_theta: must be positive", true},
      {"layer rope_scaling", [](hid_t f) { in_group(f, "layers/0", [](hid_t g) { set_string(g, "rope_scaling", "x"); }); },
       "/layers/0@rope_scaling: must be a JSON object string", true},
      {"version type", [](hid_t f) { set_string(f, "version", "1"); }, "@version: must be a single integer", true},
      {"missing model", [](hid_t f) { H5Adelete(f, "model"); }, "@model: missing required attribute", true},
      {"missing source", [](hid_t f) { H5Adelete(f, "source"); }, "@source: missing required attribute", true},
      {"num_layers", [](hid_t f) { set_int_attr(f, "num_layers", 0); }, "@num_layers: is 0", true},
      {"missing head_dim", [](hid_t f) { H5Adelete(f, "head_dim"); }, "@head_dim: missing", true},
      {"gqa divisibility", [](hid_t f) { set_int_attr(f, "num_kv_heads", 3); }, "does not divide num_heads = 4", true},
      {"rope_style", [](hid_t f) { set_string(f, "rope_style", "rotary"); }, "@rope_style: is \"rotary\"", true},
      {"rope_theta", [](hid_t f) { set_double_attr(f, "rope_theta", -1); }, "@rope_theta: must be positive", true},
      {"rope_theta nan", [](hid_t f) { set_double_attr(f, "rope_theta", std::nan("")); }, "@rope_theta: must be finite", true},
      {"rope_scaling", [](hid_t f) { set_string(f, "rope_scaling", "linear"); }, "@rope_scaling: must be a JSON", true},
      {"attn_scale", [](hid_t f) { set_double_attr(f, "attn_scale", 0); }, "@attn_scale: must be positive", true},
      {"prefill_len", [](hid_t f) { set_int_attr(f, "prefill_len", 80); }, "@prefill_len: is 80 but", true},
      {"missing prefill_len", [](hid_t f) { H5Adelete(f, "prefill_len"); }, "@prefill_len: missing", true},
      {"input_ids length", [](hid_t f) { replace_i64_vector(f, "/tokens/input_ids", std::vector<long long>(95, 1)); },
       "/tokens/input_ids: has 95 positions", true},
      {"input_ids float", [](hid_t f) { replace_dataset(f, "/tokens/input_ids", H5T_IEEE_F64LE, {96}, H5T_NATIVE_DOUBLE, std::vector<double>(96, 1).data()); },
       "/tokens/input_ids: must hold integers", true},
      {"missing segment", [](hid_t f) { H5Ldelete(f, "/tokens/segment", H5P_DEFAULT); }, "/tokens/segment: missing required dataset", true},
      {"segment value", [](hid_t f) {
         auto s = read_i64(f, "/tokens/segment");
         s[5] = 3;
         replace_i64_vector(f, "/tokens/segment", s);
       }, "value 3 at position 5", true},
      {"segment order", [](hid_t f) {
         auto s = read_i64(f, "/tokens/segment");
         s[85] = 0;  // a context token inside the question
         replace_i64_vector(f, "/tokens/segment", s);
       }, "order must be context, question, generated", true},
      {"segment rank", [](hid_t f) { replace_dataset(f, "/tokens/segment", H5T_STD_U8LE, {2, 48}, H5T_NATIVE_LLONG, std::vector<long long>(96, 0).data()); },
       "/tokens/segment: must be one-dimensional", true},
      {"q_pos missing", [](hid_t f) { H5Ldelete(f, "/q_pos", H5P_DEFAULT); }, "/q_pos: missing required dataset", true},
      {"q_pos empty", [](hid_t f) { replace_i64_vector(f, "/q_pos", {}); }, "/q_pos: is empty", true},
      {"q_pos unsorted", [&](hid_t f) {
         auto q = qpos_base;
         std::swap(q[3], q[4]);
         replace_i64_vector(f, "/q_pos", q);
       }, "unsorted position", true},
      {"q_pos duplicate", [&](hid_t f) {
         auto q = qpos_base;
         q[4] = q[3];
         replace_i64_vector(f, "/q_pos", q);
       }, "duplicate position", true},
      {"q_pos range", [&](hid_t f) {
         auto q = qpos_base;
         q.back() = 96;
         replace_i64_vector(f, "/q_pos", q);
       }, "position 96 at index 31 is outside [0, 96)", true},
      {"layers group", [](hid_t f) { H5Ldelete(f, "/layers", H5P_DEFAULT); }, "/layers: missing required group", true},
      {"layer missing", [](hid_t f) { H5Ldelete(f, "/layers/1", H5P_DEFAULT); }, "/layers/1: missing layer group", true},
      {"layer extra", [](hid_t f) { H5Gclose(H5Gcreate2(f, "/layers/01", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)); },
       "/layers/01: unexpected member", true},
      {"k missing", [](hid_t f) { H5Ldelete(f, "/layers/1/k", H5P_DEFAULT); }, "/layers/1/k: missing required dataset", true},
      {"q shape", [&](hid_t f) { replace_dataset(f, "/layers/0/q", H5T_IEEE_F32LE, {4, 10, 8}, H5T_NATIVE_FLOAT, zeros.data()); },
       "/layers/0/q: shape [4, 10, 8], expected [4, 32, 8]", true},
      {"v rank", [&](hid_t f) { replace_dataset(f, "/layers/0/v", H5T_IEEE_F32LE, {2 * 96 * 8}, H5T_NATIVE_FLOAT, zeros.data()); },
       "/layers/0/v: shape [1536], expected [2, 96, 8]", true},
      {"float64", [&](hid_t f) { replace_dataset(f, "/layers/0/k", H5T_IEEE_F64LE, {2, 96, 8}, H5T_NATIVE_DOUBLE, zeros64.data()); },
       "/layers/0/k: unsupported storage type float64", true},
      {"unknown dtype attribute", [&](hid_t f) { set_dataset_string_attr(f, "/layers/0/v", "dtype", "float8"); },
       "/layers/0/v@dtype: unknown dtype \"float8\"", true},
      {"uint16 without dtype", [&](hid_t f) { replace_dataset(f, "/layers/1/v", H5T_STD_U16LE, {2, 96, 8}, H5T_NATIVE_UINT16, zeros16.data()); },
       "/layers/1/v: uint16 data needs the attribute dtype=\"bfloat16\"", true},
      {"dtype mismatch", [&](hid_t f) { set_dataset_string_attr(f, "/layers/1/k", "dtype", "bfloat16"); },
       "/layers/1/k@dtype: says bfloat16 but the data is stored as float32", true},
      {"o_proj shape", [&](hid_t f) { replace_dataset(f, "/layers/1/o_proj", H5T_IEEE_F32LE, {16, 16}, H5T_NATIVE_FLOAT, zeros.data()); },
       "/layers/1/o_proj: shape [16, 16], expected [16, 32]", true},
      {"o_proj in some layers", [](hid_t f) { H5Ldelete(f, "/layers/1/o_proj", H5P_DEFAULT); },
       "/layers/*/o_proj: present in 1 of 2 layers", true},
      {"o shape", [&](hid_t f) { replace_dataset(f, "/layers/0/o", H5T_IEEE_F32LE, {4, 31, 8}, H5T_NATIVE_FLOAT, zeros.data()); },
       "/layers/0/o: shape [4, 31, 8], expected [4, 32, 8]", true},
      {"nan in k", [](hid_t f) { poke_float(f, "/layers/1/k", {1, 17, 3}, std::nanf("")); },
       "/layers/1/k: 1 non-finite value (NaN/Inf), first at [1, 17, 3]", false},
      {"inf in o_proj", [](hid_t f) { poke_float(f, "/layers/0/o_proj", {5, 9}, INFINITY); },
       "/layers/0/o_proj: 1 non-finite value (NaN/Inf), first at [5, 9]", false},
      {"span range", [](hid_t f) { replace_i64_vector(f, "/spans/needle", {90, 100}); },
       "/spans/needle: [90, 100) is not a range inside [0, 96)", true},
      {"span length", [](hid_t f) { replace_i64_vector(f, "/spans/question", {1, 2, 3}); },
       "/spans/question: must hold 2 values", true},
      {"text type", [](hid_t f) { replace_i64_vector(f, "/text", {1}); }, "/text: must be a scalar string dataset", true},
  };

  for (const auto& c : cases) {
    CAPTURE(c.name);
    const std::string p = tmp.file(std::string("broken-") + std::to_string(&c - cases.data()) + ".h5");
    fs::copy_file(base, p, fs::copy_options::overwrite_existing);
    edit_h5(p, c.edit);
    ValidateOptions vo;
    vo.window = 16;
    const auto msgs = validate_trace(p, vo);
    CHECK_MESSAGE(any_contains(msgs, c.expect), joined(msgs));
    for (const auto& m : msgs) {
      CHECK(m.rfind(p + ": ", 0) == 0);  // every message names the file first
      CHECK(m.find('\n') == std::string::npos);
    }
    bool threw = false;
    try {
      read_every_layer(p);
    } catch (const Error& e) {
      threw = true;
      CHECK(std::string(e.what()).rfind(p + ": ", 0) == 0);
      if (c.reader_rejects_open) CHECK(std::string(e.what()).find(c.expect) != std::string::npos);
    }
    CHECK(threw);
  }
}

TEST_CASE("validator: observation window and evaluation queries") {
  TempDir tmp("val-window");
  const std::string p = tmp.file("w.h5");
  write_tiny(p);  // stores the 16 positions before the compression point (80)
  ValidateOptions vo;
  vo.window = 16;
  CHECK(validate_trace(p, vo).empty());
  vo.window = 32;
  const auto msgs = validate_trace(p, vo);
  REQUIRE(msgs.size() == 1);
  CHECK(msgs[0] == p + ": /q_pos: observation window [48, 80) before the compression point (end of context) "
                       "lacks 16 positions, first 48 (--window 32)");

  // Only context queries stored: nothing to evaluate. Written through TraceWriter, which allows it.
  const SynthOptions o = tiny_options();
  TraceMeta meta = synth_meta(o);
  meta.q_pos.assign(meta.q_pos.begin(), meta.q_pos.begin() + 16);
  const std::string p2 = tmp.file("noeval.h5");
  {
    TraceWriter w(p2, meta);
    for (int l = 0; l < o.num_layers; ++l) w.write_layer(synth_layer(o, meta, l));
    w.finish();
  }
  vo.window = 16;
  const auto msgs2 = validate_trace(p2, vo);
  REQUIRE(msgs2.size() == 1);
  CHECK(msgs2[0].find("no stored query at or after the compression point 80") != std::string::npos);
}

TEST_CASE("validator and reader: missing, non-HDF5, truncated and directory paths") {
  TempDir tmp("val-files");
  const std::string missing = tmp.file("nope.h5");
  auto one = [](const std::vector<std::string>& m) {
    REQUIRE(m.size() == 1);
    return m[0];
  };
  CHECK(one(validate_trace(missing)) == missing + ": no such file");
  CHECK_THROWS_WITH_AS(TraceReader{missing}, (missing + ": no such file").c_str(), Error);

  const std::string text = tmp.file("text.h5");
  std::ofstream(text) << "this is not HDF5\n";
  CHECK(one(validate_trace(text)) == text + ": not an HDF5 file (no HDF5 signature)");
  CHECK_THROWS_AS(TraceReader{text}, Error);

  const std::string empty = tmp.file("empty.h5");
  std::ofstream(empty).flush();
  CHECK(one(validate_trace(empty)).find("not an HDF5 file") != std::string::npos);

  CHECK(one(validate_trace(tmp.path.string())).find("is a directory") != std::string::npos);

  const std::string good = tmp.file("good.h5");
  write_tiny(good);
  const auto size = fs::file_size(good);
  for (double frac : {0.1, 0.5, 0.9, 0.999}) {
    CAPTURE(frac);
    const std::string cut = tmp.file("cut.h5");
    fs::copy_file(good, cut, fs::copy_options::overwrite_existing);
    fs::resize_file(cut, static_cast<std::uintmax_t>(size * frac));
    const auto msgs = validate_trace(cut);
    REQUIRE(!msgs.empty());
    CHECK(msgs[0].find("truncated or corrupt") != std::string::npos);
    CHECK_THROWS_AS(TraceReader{cut}, Error);
  }
}

TEST_CASE("writer: refuses bad input and never leaves a complete-looking file") {
  TempDir tmp("writer");
  const SynthOptions o = tiny_options();
  const TraceMeta meta = synth_meta(o);
  const std::string p = tmp.file("w.h5");
  {
    TraceWriter w(p, meta);
    w.write_layer(synth_layer(o, meta, 0));
    CHECK(partial_files(p).size() == 1);
    CHECK_THROWS_WITH_AS(w.write_layer(synth_layer(o, meta, 0)), doctest::Contains("layer written twice"), Error);
    CHECK_THROWS_WITH_AS(w.finish(), doctest::Contains("/layers/1: layer was never written"), Error);
  }
  CHECK(partial_files(p).empty());
  CHECK(!fs::exists(p));

  {  // float16 overflow names the tensor and suggests float32
    LayerData big = synth_layer(o, meta, 0);
    big.v[5] = 1e6f;
    TraceWriter w(p, meta, {StorageDtype::float16, false});
    CHECK_THROWS_WITH_AS(w.write_layer(big), doctest::Contains("/layers/0/v: value 1000000"), Error);
    CHECK_THROWS_WITH_AS(w.write_layer(big), doctest::Contains("write it as float32"), Error);
  }
  {  // bfloat16 holds it
    LayerData big = synth_layer(o, meta, 0);
    big.v[5] = 1e6f;
    TraceWriter w(p, meta, {StorageDtype::bfloat16, false});
    CHECK_NOTHROW(w.write_layer(big));
  }
  {
    LayerData nan = synth_layer(o, meta, 1);
    nan.k[0] = std::nanf("");
    TraceWriter w(p, meta);
    CHECK_THROWS_WITH_AS(w.write_layer(nan), doctest::Contains("/layers/1/k: 1 non-finite"), Error);
  }
  {
    LayerData no_oproj = synth_layer(o, meta, 1);
    no_oproj.o_proj.clear();
    TraceWriter w(p, meta);
    CHECK_THROWS_WITH_AS(w.write_layer(no_oproj), doctest::Contains("o_proj: missing"), Error);
  }
  TraceMeta bad = meta;
  bad.prefill_len = 3;
  CHECK_THROWS_WITH_AS(TraceWriter(p, bad), doctest::Contains("@prefill_len"), Error);
  bad = meta;
  bad.q_pos = {5, 4};
  CHECK_THROWS_WITH_AS(TraceWriter(p, bad), doctest::Contains("/q_pos"), Error);
  CHECK_THROWS_WITH_AS(TraceWriter(tmp.file("no/such/dir/x.h5"), meta), doctest::Contains("cannot create"), Error);
  CHECK(!fs::exists(p));
}

TEST_CASE("an HDF5 file of another tool is one line: not a kvsim trace, with the pointer to the format") {
  TempDir tmp("val-foreign");
  const std::string p = tmp.file("foreign.h5");
  {
    const hid_t f = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    const hsize_t n = 3;
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const hid_t d = H5Dcreate2(f, "x", H5T_NATIVE_FLOAT, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d);
    H5Sclose(space);
    H5Fclose(f);
  }
  const auto problems = validate_trace(p);
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("@format: missing: not a kvsim trace (see traces/README.md)") != std::string::npos);
  CHECK_THROWS_WITH_AS(TraceReader{p}, doctest::Contains("not a kvsim trace"), Error);
}
