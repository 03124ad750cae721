#include "trace/trace_schema.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/error.h"
#include "kernels/kernels.h"
#include "trace/self_contained.h"
#include "trace/untrusted_file.h"

namespace kvsim::trace_detail {

using h5::Handle;

void Problems::add(const std::string& field, const std::string& what) {
  std::string msg = path_;
  if (!field.empty()) msg += ": " + field;
  msg += ": " + what;
  if (!collect_) throw Error(msg);
  messages_.push_back(std::move(msg));
}

// ---------------------------------------------------------------------------------------------
// Opening

static bool has_hdf5_signature(const std::string& path) {
  // The superblock may sit at 0, 512, 1024, 2048, ... (user block); check the usual places.
  std::ifstream f(path, std::ios::binary);
  static const char sig[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  for (std::streamoff off = 0; off <= (1 << 20); off = off == 0 ? 512 : off * 2) {
    char buf[8] = {};
    f.clear();
    f.seekg(off);
    if (!f.read(buf, 8)) return false;
    if (std::memcmp(buf, sig, 8) == 0) return true;
  }
  return false;
}

Handle open_trace_file(const std::string& path, Problems& pb) {
  h5::silence_errors();
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    pb.add("", "no such file");
    return {};
  }
  if (fs::is_directory(path, ec)) {
    pb.add("", "is a directory, not a trace file");
    return {};
  }
  if (!std::ifstream(path, std::ios::binary)) {
    pb.add("", "cannot open the file for reading");
    return {};
  }
  if (!has_hdf5_signature(path)) {
    pb.add("", "not an HDF5 file (no HDF5 signature)");
    return {};
  }
  // The whole metadata parse, once, in a child process (see trace/untrusted_file.h).
  const std::string unsafe = preflight("trace metadata", [&] {
    Problems scratch(path, /*collect=*/true);
    Handle f = h5::open_untrusted_file(path);
    if (!f || !foreign_storage(f.id()).field.empty()) return;  // reported below, nothing followed
    TraceMeta m;
    m.path = path;
    read_root(f.id(), m, scratch);
    if (m.num_layers > 0 && m.num_heads > 0 && m.num_kv_heads > 0 && m.head_dim > 0 && m.hidden_size > 0 &&
        m.seq_len > 0)
      check_layers(f.id(), m, scratch);
  });
  if (!unsafe.empty()) {
    pb.add("", unsafe);
    return {};
  }
  Handle f = h5::open_untrusted_file(path);
  if (!f) {
    pb.add("", "cannot open as HDF5 (truncated or corrupt file)");
    return f;
  }
  const ForeignStorage foreign = foreign_storage(f.id());
  if (!foreign.field.empty()) {
    pb.add(foreign.field, foreign.what);
    return {};
  }
  return f;
}

// ---------------------------------------------------------------------------------------------
// Root attributes

namespace {

struct AttrReader {
  hid_t obj;
  Problems& pb;
  std::string where;  // prefix of field names in messages ("" for root attributes)

  Handle open(const std::string& name, bool required) {
    const htri_t e = H5Aexists(obj, name.c_str());
    if (e <= 0) {
      if (required) pb.add(where + "@" + name, e < 0 ? "cannot be read" : "missing required attribute");
      return {};
    }
    Handle a = h5::attr_handle(H5Aopen(obj, name.c_str(), H5P_DEFAULT));
    if (!a) pb.add(where + "@" + name, "cannot be opened");
    return a;
  }

  std::optional<std::string> str(const std::string& name, bool required) {
    Handle a = open(name, required);
    if (!a) return std::nullopt;
    auto s = h5::read_string_attr(a.id());
    if (!s) pb.add(where + "@" + name, "must be a string");
    return s;
  }

  std::optional<i64> integer(const std::string& name, bool required) {
    Handle a = open(name, required);
    if (!a) return std::nullopt;
    Handle t = h5::type_handle(H5Aget_type(a.id()));
    Handle sp = h5::space_handle(H5Aget_space(a.id()));
    if (!t || H5Tget_class(t.id()) != H5T_INTEGER || h5::num_points(sp.id()) != 1) {
      pb.add(where + "@" + name, "must be a single integer");
      return std::nullopt;
    }
    std::int64_t v = 0;
    if (H5Aread(a.id(), H5T_NATIVE_INT64, &v) < 0) {
      pb.add(where + "@" + name, "cannot be read");
      return std::nullopt;
    }
    return v;
  }

  std::optional<double> number(const std::string& name, bool required) {
    Handle a = open(name, required);
    if (!a) return std::nullopt;
    Handle t = h5::type_handle(H5Aget_type(a.id()));
    Handle sp = h5::space_handle(H5Aget_space(a.id()));
    const H5T_class_t cls = t ? H5Tget_class(t.id()) : H5T_NO_CLASS;
    if ((cls != H5T_INTEGER && cls != H5T_FLOAT) || h5::num_points(sp.id()) != 1) {
      pb.add(where + "@" + name, "must be a single number");
      return std::nullopt;
    }
    double v = 0;
    if (H5Aread(a.id(), H5T_NATIVE_DOUBLE, &v) < 0) {
      pb.add(where + "@" + name, "cannot be read");
      return std::nullopt;
    }
    if (!std::isfinite(v)) {
      pb.add(where + "@" + name, "must be finite");
      return std::nullopt;
    }
    return v;
  }
};

std::uintmax_t file_size(const Problems& pb) {
  std::error_code ec;
  const std::uintmax_t n = std::filesystem::file_size(pb.path(), ec);
  return ec ? std::numeric_limits<std::uintmax_t>::max() : n;
}

// Reads a rank-1 integer dataset as int64. nullopt (reported) if absent or malformed.
std::optional<std::vector<i64>> read_int_vector(hid_t file, const std::string& path, bool required,
                                                Problems& pb) {
  if (!h5::path_exists(file, path)) {
    if (required) pb.add(path, "missing required dataset");
    return std::nullopt;
  }
  Handle d = h5::dataset_handle(H5Dopen2(file, path.c_str(), H5P_DEFAULT));
  if (!d) {
    pb.add(path, "is not a readable dataset");
    return std::nullopt;
  }
  Handle t = h5::type_handle(H5Dget_type(d.id()));
  if (!t || H5Tget_class(t.id()) != H5T_INTEGER) {
    pb.add(path, "must hold integers");
    return std::nullopt;
  }
  auto dims = h5::dataset_dims(d.id());
  if (!dims || dims->size() != 1) {
    pb.add(path, "must be one-dimensional");
    return std::nullopt;
  }
  if (const std::string why = h5::storage_problem(d.id(), (*dims)[0], sizeof(i64), file_size(pb)); !why.empty()) {
    pb.add(path, why);
    return std::nullopt;
  }
  std::vector<i64> v(static_cast<std::size_t>((*dims)[0]));
  if (!v.empty() && H5Dread(d.id(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0) {
    pb.add(path, "cannot be read (corrupt data)");
    return std::nullopt;
  }
  return v;
}

}  // namespace

bool read_root(hid_t file, TraceMeta& meta, Problems& pb) {
  MemoryCap cap(preflight_limits().memory);  // a corrupt size fails here as it did in the preflight
  AttrReader root{file, pb, ""};
  const std::size_t before = pb.count();

  // An HDF5 file of another tool: one line, not a list of every attribute it lacks.
  if (H5Aexists(file, "format") == 0) {
    pb.add("@format", "missing: not a kvsim trace (see traces/README.md)");
    return false;
  }
  if (auto f = root.str("format", true); f && *f != "kvsim-trace")
    pb.add("@format", "is \"" + *f + "\", expected \"kvsim-trace\": not a kvsim trace (see traces/README.md)");
  if (auto v = root.integer("version", true)) {
    if (*v < 1 || *v > kTraceFormatVersion)
      pb.add("@version", "is " + std::to_string(*v) + "; this kvsim reads trace format versions 1 to " +
                             std::to_string(kTraceFormatVersion));
    else
      meta.version = static_cast<int>(*v);
  }
  if (auto s = root.str("model", true)) meta.model = *s;
  if (auto s = root.str("source", true)) meta.source = *s;
  if (auto s = root.str("model_sha256", false)) meta.model_sha256 = *s;
  if (auto s = root.str("source_precision", false)) meta.source_precision = *s;

  bool shape_ok = true;
  auto positive = [&](const char* name, int& out, i64 limit) {
    auto v = root.integer(name, true);
    if (!v) {
      shape_ok = false;
    } else if (*v <= 0 || *v > limit) {
      pb.add(std::string("@") + name, "is " + std::to_string(*v) + ", must be in 1.." + std::to_string(limit));
      shape_ok = false;
    } else {
      out = static_cast<int>(*v);
    }
  };
  positive("num_layers", meta.num_layers, 100000);
  positive("num_heads", meta.num_heads, 100000);
  positive("num_kv_heads", meta.num_kv_heads, 100000);
  positive("head_dim", meta.head_dim, 65536);
  positive("hidden_size", meta.hidden_size, 1 << 24);
  if (shape_ok && meta.num_heads % meta.num_kv_heads != 0) {
    pb.add("@num_kv_heads", std::to_string(meta.num_kv_heads) + " does not divide num_heads = " +
                                std::to_string(meta.num_heads));
    shape_ok = false;
  }

  if (auto s = root.str("rope_style", true)) {
    if (*s == "half") meta.rope_style = RopeStyle::half;
    else if (*s == "interleaved") meta.rope_style = RopeStyle::interleaved;
    else pb.add("@rope_style", "is \"" + *s + "\", expected \"half\" or \"interleaved\"");
  }
  if (auto t = root.number("rope_theta", true)) {
    if (*t <= 0) pb.add("@rope_theta", "must be positive");
    meta.rope_theta = *t;
  }
  if (auto s = root.str("rope_scaling", false)) {
    if (!s->empty() && s->front() != '{' && *s != "null")
      pb.add("@rope_scaling", "must be a JSON object string");
    meta.rope_scaling = *s == "null" ? "" : *s;
  }
  meta.attn_scale = meta.head_dim > 0 ? 1.0 / std::sqrt(static_cast<double>(meta.head_dim)) : 0.0;
  if (auto a = root.number("attn_scale", false)) {
    if (*a <= 0) pb.add("@attn_scale", "must be positive");
    else meta.attn_scale = *a;
  }
  if (auto c = root.number("attn_logit_softcap", false)) {
    if (*c < 0) pb.add("@attn_logit_softcap", "must be >= 0 (0 = no soft-capping)");
    else meta.attn_softcap = *c;
  }
  if (auto r = root.integer("rotary_dim", false)) {
    if (*r < 0 || (meta.head_dim > 0 && *r > meta.head_dim) || *r % 2 != 0)
      pb.add("@rotary_dim", "is " + std::to_string(*r) + ", must be even and in 0..head_dim");
    else meta.rotary_dim = static_cast<int>(*r);
  }
  auto prefill = root.integer("prefill_len", true);

  // Positions.
  bool pos_ok = true;
  auto seg = read_int_vector(file, "/tokens/segment", true, pb);
  auto ids = read_int_vector(file, "/tokens/input_ids", true, pb);
  if (!seg) {
    pos_ok = false;
  } else if (seg->empty()) {
    pb.add("/tokens/segment", "is empty (a trace needs at least one position)");
    pos_ok = false;
  } else {
    meta.seq_len = static_cast<i64>(seg->size());
    meta.segment.assign(seg->size(), 0);
    int prev = 0;
    bool order_reported = false;
    for (std::size_t i = 0; i < seg->size(); ++i) {
      const i64 s = (*seg)[i];
      if (s < 0 || s > 2) {
        pb.add("/tokens/segment", "value " + std::to_string(s) + " at position " + std::to_string(i) +
                                      " (allowed: 0 context, 1 question, 2 generated)");
        pos_ok = false;
        break;
      }
      if (s < prev && !order_reported) {
        pb.add("/tokens/segment", "position " + std::to_string(i) + " has segment " + std::to_string(s) +
                                      " after segment " + std::to_string(prev) +
                                      " (order must be context, question, generated)");
        order_reported = true;
        pos_ok = false;
      }
      prev = std::max<int>(prev, static_cast<int>(s));
      meta.segment[i] = static_cast<std::uint8_t>(s);
    }
  }
  if (ids) {
    if (meta.seq_len > 0 && static_cast<i64>(ids->size()) != meta.seq_len) {
      pb.add("/tokens/input_ids", "has " + std::to_string(ids->size()) + " positions, /tokens/segment has " +
                                      std::to_string(meta.seq_len));
      pos_ok = false;
    }
    meta.input_ids.resize(ids->size());
    for (std::size_t i = 0; i < ids->size(); ++i) {
      const i64 v = (*ids)[i];
      if (v < std::numeric_limits<std::int32_t>::min() || v > std::numeric_limits<std::int32_t>::max()) {
        pb.add("/tokens/input_ids", "value " + std::to_string(v) + " at position " + std::to_string(i) +
                                        " does not fit int32");
        break;
      }
      meta.input_ids[i] = static_cast<std::int32_t>(v);
    }
  } else {
    pos_ok = false;
  }

  if (!prefill) {
    pos_ok = false;
  } else if (pos_ok) {
    meta.prefill_len = *prefill;
    i64 prompt = 0;
    while (prompt < meta.seq_len && meta.segment[prompt] != kGenerated) ++prompt;
    if (*prefill != prompt)
      pb.add("@prefill_len", "is " + std::to_string(*prefill) + " but /tokens/segment has " +
                                 std::to_string(prompt) + " prompt (context + question) positions");
    if (prompt == 0) pb.add("/tokens/segment", "has no prompt (context or question) positions");
  } else {
    meta.prefill_len = *prefill;
  }

  if (auto q = read_int_vector(file, "/q_pos", true, pb)) {
    if (q->empty()) {
      pb.add("/q_pos", "is empty (no stored queries)");
      pos_ok = false;
    }
    for (std::size_t i = 0; i < q->size(); ++i) {
      const i64 p = (*q)[i];
      if (p < 0 || (meta.seq_len > 0 && p >= meta.seq_len)) {
        pb.add("/q_pos", "position " + std::to_string(p) + " at index " + std::to_string(i) +
                             " is outside [0, " + std::to_string(meta.seq_len) + ")");
        pos_ok = false;
        break;
      }
      if (i > 0 && p <= (*q)[i - 1]) {
        pb.add("/q_pos", std::string(p == (*q)[i - 1] ? "duplicate" : "unsorted") + " position " +
                             std::to_string(p) + " at index " + std::to_string(i) +
                             " (must be strictly increasing)");
        pos_ok = false;
        break;
      }
    }
    meta.q_pos = std::move(*q);
  } else {
    pos_ok = false;
  }

  // Optional spans and text.
  if (h5::path_exists(file, "spans")) {
    Handle g = h5::group_handle(H5Gopen2(file, "spans", H5P_DEFAULT));
    if (!g) {
      pb.add("/spans", "must be a group");
    } else {
      for (const auto& name : h5::member_names(g.id())) {
        const std::string path = "/spans/" + name;
        auto v = read_int_vector(file, path, true, pb);
        if (!v) continue;
        if (v->size() != 2) {
          pb.add(path, "must hold 2 values [begin, end), has " + std::to_string(v->size()));
          continue;
        }
        const i64 a = (*v)[0], b = (*v)[1];
        if (a < 0 || a > b || (meta.seq_len > 0 && b > meta.seq_len)) {
          pb.add(path, "[" + std::to_string(a) + ", " + std::to_string(b) + ") is not a range inside [0, " +
                           std::to_string(meta.seq_len) + ")");
          continue;
        }
        meta.spans[name] = {a, b};
      }
    }
  }
  if (h5::path_exists(file, "text")) {
    Handle d = h5::dataset_handle(H5Dopen2(file, "text", H5P_DEFAULT));
    auto s = d ? h5::read_string_dataset(d.id()) : std::nullopt;
    if (!s) pb.add("/text", "must be a scalar string dataset");
    else meta.text = *s;
  }
  return shape_ok && pos_ok && pb.count() == before;
}

// ---------------------------------------------------------------------------------------------
// Layer tensors

std::string layer_path(int layer, const std::string& name) {
  return "/layers/" + std::to_string(layer) + "/" + name;
}

std::vector<i64> expected_dims(const TraceMeta& m, const std::string& name) {
  if (name == "q" || name == "o") return {m.num_heads, m.num_queries(), m.head_dim};
  if (name == "k" || name == "v") return {m.num_kv_heads, m.seq_len, m.head_dim};
  return {m.hidden_size, static_cast<i64>(m.num_heads) * m.head_dim};  // o_proj
}

static std::string dims_string(const std::vector<i64>& d) {
  std::string s = "[";
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

static std::string type_description(hid_t t) {
  const std::size_t size = H5Tget_size(t);
  switch (H5Tget_class(t)) {
    case H5T_FLOAT: return "float" + std::to_string(size * 8);
    case H5T_INTEGER:
      return std::string(H5Tget_sign(t) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(size * 8);
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    default: return "a non-numeric type";
  }
}

std::optional<Tensor> open_tensor(hid_t file, const TraceMeta& meta, int layer, const std::string& name,
                                  bool required, Problems& pb) {
  Tensor t;
  t.field = layer_path(layer, name);
  if (!h5::path_exists(file, t.field)) {
    if (required) pb.add(t.field, "missing required dataset");
    return std::nullopt;
  }
  t.dset = h5::dataset_handle(H5Dopen2(file, t.field.c_str(), H5P_DEFAULT));
  if (!t.dset) {
    pb.add(t.field, "is not a readable dataset");
    return std::nullopt;
  }
  Handle ft = h5::type_handle(H5Dget_type(t.dset.id()));
  if (!ft) {
    pb.add(t.field, "has an unreadable datatype");
    return std::nullopt;
  }
  std::optional<std::string> dtype_attr;
  if (H5Aexists(t.dset.id(), "dtype") > 0) {
    Handle a = h5::attr_handle(H5Aopen(t.dset.id(), "dtype", H5P_DEFAULT));
    dtype_attr = a ? h5::read_string_attr(a.id()) : std::nullopt;
    if (!dtype_attr) {
      pb.add(t.field + "@dtype", "must be a string");
      return std::nullopt;
    }
    if (*dtype_attr != "float32" && *dtype_attr != "float16" && *dtype_attr != "bfloat16") {
      pb.add(t.field + "@dtype", "unknown dtype \"" + *dtype_attr + "\" (float32, float16 or bfloat16)");
      return std::nullopt;
    }
  }
  const H5T_class_t cls = H5Tget_class(ft.id());
  const std::size_t size = H5Tget_size(ft.id());
  if (cls == H5T_FLOAT && size == 4 && H5Tget_precision(ft.id()) == 32) {
    t.dtype = StorageDtype::float32;
  } else if (h5::is_ieee_f16(ft.id())) {
    t.dtype = StorageDtype::float16;
    t.swap_bytes = H5Tget_order(ft.id()) == H5T_ORDER_BE;
  } else if (cls == H5T_INTEGER && size == 2 && H5Tget_sign(ft.id()) == H5T_SGN_NONE) {
    if (dtype_attr != "bfloat16") {
      pb.add(t.field, "uint16 data needs the attribute dtype=\"bfloat16\"");
      return std::nullopt;
    }
    t.dtype = StorageDtype::bfloat16;
    t.swap_bytes = H5Tget_order(ft.id()) == H5T_ORDER_BE;
  } else {
    pb.add(t.field, "unsupported storage type " + type_description(ft.id()) +
                        " (float32, float16, or bfloat16 as uint16 with dtype=\"bfloat16\")");
    return std::nullopt;
  }
  if (dtype_attr && *dtype_attr != dtype_name(t.dtype)) {
    pb.add(t.field + "@dtype", "says " + *dtype_attr + " but the data is stored as " + dtype_name(t.dtype));
    return std::nullopt;
  }
  auto dims = h5::dataset_dims(t.dset.id());
  const auto want = expected_dims(meta, name);
  if (!dims || *dims != want) {
    pb.add(t.field, "shape " + (dims ? dims_string(*dims) : std::string("(scalar or unreadable)")) +
                        ", expected " + dims_string(want));
    return std::nullopt;
  }
  i64 n = 1;
  for (i64 x : *dims) n *= x;
  if (const std::string why = h5::storage_problem(t.dset.id(), n, size, file_size(pb)); !why.empty()) {
    pb.add(t.field, why);
    return std::nullopt;
  }
  t.dims = *dims;
  return t;
}

// Format v2 attributes of /layers/<l> (all optional): attention_type, sliding_window,
// rope_theta, rope_scaling. A sliding window shorter than the trace means the model did not
// attend to every earlier position, which kvsim's full causal attention cannot reproduce.
static void read_layer_attrs(hid_t file, TraceMeta& meta, int l, Problems& pb) {
  const std::string where = "/layers/" + std::to_string(l);
  Handle g = h5::group_handle(H5Gopen2(file, where.c_str(), H5P_DEFAULT));
  if (!g) return;  // reported by the tensor checks
  AttrReader attrs{g.id(), pb, where};
  LayerAttrs& a = meta.layer_attrs[static_cast<std::size_t>(l)];
  if (auto s = attrs.str("attention_type", false)) a.attention_type = *s;
  if (auto w = attrs.integer("sliding_window", false)) {
    if (*w < 0) pb.add(where + "@sliding_window", "must be >= 0 (0 = full attention)");
    else a.sliding_window = *w;
  }
  if (auto t = attrs.number("rope_theta", false)) {
    if (*t <= 0) pb.add(where + "@rope_theta", "must be positive");
    else a.rope_theta = *t;
  }
  if (auto s = attrs.str("rope_scaling", false)) {
    if (!s->empty() && s->front() != '{') pb.add(where + "@rope_scaling", "must be a JSON object string");
    else a.rope_scaling = *s;
  }
  if (a.sliding_window > 0 && meta.seq_len > a.sliding_window)
    pb.add(where + "@sliding_window", "is " + std::to_string(a.sliding_window) + " but the trace has " +
                                          std::to_string(meta.seq_len) +
                                          " positions: the model attended to a sliding window, which kvsim's full "
                                          "causal attention does not reproduce (record only full-attention layers)");
}

void check_layers(hid_t file, TraceMeta& meta, Problems& pb) {
  MemoryCap cap(preflight_limits().memory);
  if (!h5::path_exists(file, "layers") || h5::object_type(file, "layers") != H5O_TYPE_GROUP) {
    pb.add("/layers", "missing required group");
    return;
  }
  {
    Handle g = h5::group_handle(H5Gopen2(file, "layers", H5P_DEFAULT));
    for (const auto& name : h5::member_names(g.id())) {
      const bool decimal = !name.empty() && name.size() <= 6 &&
                           std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
                           (name == "0" || name[0] != '0');
      if (!decimal || std::stoi(name) >= meta.num_layers)
        pb.add("/layers/" + name, "unexpected member (layers are named 0.." +
                                      std::to_string(meta.num_layers - 1) + ", decimal, no padding)");
    }
  }
  int with_o_proj = 0, with_o = 0;
  bool first = true;
  meta.layer_attrs.assign(static_cast<std::size_t>(meta.num_layers), LayerAttrs{});
  for (int l = 0; l < meta.num_layers; ++l) {
    if (!h5::path_exists(file, "layers/" + std::to_string(l))) {
      pb.add("/layers/" + std::to_string(l), "missing layer group");
      continue;
    }
    read_layer_attrs(file, meta, l, pb);
    for (const char* name : {"q", "k", "v"}) {
      auto t = open_tensor(file, meta, l, name, true, pb);
      if (t && first && std::string(name) == "k") {
        meta.dtype = t->dtype;
        first = false;
      }
    }
    with_o_proj += open_tensor(file, meta, l, "o_proj", false, pb).has_value() ||
                   h5::path_exists(file, layer_path(l, "o_proj"));
    with_o += open_tensor(file, meta, l, "o", false, pb).has_value() || h5::path_exists(file, layer_path(l, "o"));
  }
  auto all_or_none = [&](int n, const char* name) {
    if (n != 0 && n != meta.num_layers)
      pb.add(std::string("/layers/*/") + name, "present in " + std::to_string(n) + " of " +
                                                  std::to_string(meta.num_layers) + " layers (all or none)");
    return n == meta.num_layers;
  };
  meta.has_o_proj = all_or_none(with_o_proj, "o_proj");
  meta.has_o = all_or_none(with_o, "o");
}

// ---------------------------------------------------------------------------------------------
// Reading values

static void byte_swap(std::uint16_t* p, i64 n) {
  for (i64 i = 0; i < n; ++i) p[i] = static_cast<std::uint16_t>((p[i] << 8) | (p[i] >> 8));
}

bool read_selection(const Tensor& t, hid_t file_space, i64 n, float* out, Problems& pb) {
  const hsize_t count = static_cast<hsize_t>(n);
  return read_into(t, file_space, {count}, out, pb);
}

bool read_into(const Tensor& t, hid_t file_space, const std::vector<hsize_t>& mem_dims, float* out, Problems& pb) {
  i64 n = 1;
  for (hsize_t x : mem_dims) n *= static_cast<i64>(x);
  if (n == 0) return true;
  // A memory space of the same shape as a block selection lets HDF5 map whole chunks at once
  // instead of iterating element by element.
  Handle mem = h5::space_handle(H5Screate_simple(static_cast<int>(mem_dims.size()), mem_dims.data(), nullptr));
  herr_t rc;
  if (t.dtype == StorageDtype::float32) {
    rc = H5Dread(t.dset.id(), H5T_NATIVE_FLOAT, mem.id(), file_space, H5P_DEFAULT, out);
  } else {
    // Raw 16-bit words with the file's own type (no HDF5 soft conversion); the widening is a
    // SIMD kernel. Callers read at most one head at a time, so this buffer stays small.
    std::vector<std::uint16_t> raw(static_cast<std::size_t>(n));
    Handle mt = h5::type_handle(H5Dget_type(t.dset.id()));
    // The buffer holds 2-byte words: a corrupt type of another size would be read past it.
    if (!mt || H5Tget_size(mt.id()) != sizeof(std::uint16_t)) {
      pb.add(t.field, "has a 16-bit storage type whose size is not 2 bytes (corrupt datatype)");
      return false;
    }
    rc = H5Dread(t.dset.id(), mt.id(), mem.id(), file_space, H5P_DEFAULT, raw.data());
    if (rc >= 0) {
      if (t.swap_bytes) byte_swap(raw.data(), n);
      if (t.dtype == StorageDtype::float16) kernels::widen_f16(raw.data(), out, n);
      else kernels::widen_bf16(raw.data(), out, n);
    }
  }
  if (rc < 0) pb.add(t.field, "cannot read the data (corrupt or truncated file)");
  return rc >= 0;
}

bool read_block(const Tensor& t, const std::vector<i64>& start, const std::vector<i64>& count, float* out,
                Problems& pb) {
  Handle space = h5::space_handle(H5Dget_space(t.dset.id()));
  std::vector<hsize_t> s(start.begin(), start.end()), c(count.begin(), count.end());
  i64 n = 1;
  for (i64 x : count) n *= x;
  if (!space || H5Sselect_hyperslab(space.id(), H5S_SELECT_SET, s.data(), nullptr, c.data(), nullptr) < 0) {
    pb.add(t.field, "cannot select the data to read");
    return false;
  }
  return n == 0 || read_into(t, space.id(), c, out, pb);
}

void NonFinite::scan(const float* x, const std::vector<i64>& start, const std::vector<i64>& extent) {
  i64 n = 1;
  for (i64 e : extent) n *= e;
  const i64 c = kernels::count_nonfinite(x, n);
  float m = static_cast<float>(max_abs);
  for (i64 i = 0; i < n; ++i)
    if (std::isfinite(x[i])) m = std::max(m, std::fabs(x[i]));
  max_abs = m;
  if (c == 0) return;
  if (count == 0) {
    i64 flat = 0;
    while (std::isfinite(x[flat])) ++flat;
    first.assign(start.size(), 0);
    for (std::size_t d = extent.size(); d-- > 0;) {
      first[d] = start[d] + flat % extent[d];
      flat /= extent[d];
    }
  }
  count += c;
}

std::string NonFinite::describe() const {
  return std::to_string(count) + " non-finite value" + (count == 1 ? "" : "s") + " (NaN/Inf), first at " +
         dims_string(first);
}

}  // namespace kvsim::trace_detail
