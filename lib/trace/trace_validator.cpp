#include "trace/trace_validator.h"

#include <algorithm>
#include <map>

#include "core/error.h"
#include "trace/float_headroom.h"
#include "trace/trace_schema.h"

namespace kvsim {

using namespace trace_detail;

namespace {

// The observation window (question-agnostic compression point) and at least one evaluation
// query must be stored.
void check_query_coverage(const TraceMeta& meta, int window, Problems& pb) {
  const i64 ce = meta.context_end();
  const i64 w0 = std::max<i64>(0, ce - window);
  i64 missing = 0, first_missing = -1;
  for (i64 p = w0; p < ce; ++p)
    if (!std::binary_search(meta.q_pos.begin(), meta.q_pos.end(), p)) {
      if (first_missing < 0) first_missing = p;
      ++missing;
    }
  if (missing)
    pb.add("/q_pos", "observation window [" + std::to_string(w0) + ", " + std::to_string(ce) + ") before the " +
                         "compression point (end of context) lacks " + std::to_string(missing) +
                         " positions, first " + std::to_string(first_missing) + " (--window " +
                         std::to_string(window) + ")");
  if (meta.q_pos.empty() || meta.q_pos.back() < ce)
    pb.add("/q_pos", "no stored query at or after the compression point " + std::to_string(ce) +
                         " (nothing to evaluate)");
}

// Streams every tensor of one layer, one head (or row block) at a time, counting NaN/Inf.
void scan_layer(hid_t file, const TraceMeta& meta, int layer, Problems& pb) {
  std::map<std::string, double> max_abs;  // of each tensor read, for the float32 headroom rule
  for (const char* name : {"q", "k", "v", "o", "o_proj"}) {
    Problems quiet(pb.path(), true);  // shape problems were already reported by check_layers
    auto t = open_tensor(file, meta, layer, name, false, quiet);
    if (!t) continue;
    NonFinite nf;
    avec<float> buf;
    if (t->dims.size() == 3) {
      buf.resize(static_cast<std::size_t>(t->dims[1] * t->dims[2]));
      for (i64 h = 0; h < t->dims[0]; ++h) {
        const std::vector<i64> start{h, 0, 0}, count{1, t->dims[1], t->dims[2]};
        if (!read_block(*t, start, count, buf.data(), pb)) break;
        nf.scan(buf.data(), start, count);
      }
    } else {
      const i64 rows = t->dims[0], cols = t->dims[1];
      const i64 block = std::max<i64>(1, (i64{1} << 20) / std::max<i64>(cols, 1));
      buf.resize(static_cast<std::size_t>(std::min(block, rows) * cols));
      for (i64 r = 0; r < rows; r += block) {
        const std::vector<i64> start{r, 0}, count{std::min(block, rows - r), cols};
        if (!read_block(*t, start, count, buf.data(), pb)) break;
        nf.scan(buf.data(), start, count);
      }
    }
    if (nf.count) pb.add(t->field, nf.describe());
    max_abs[name] = nf.max_abs;
  }
  const auto m = [&](const char* n) { return max_abs.count(n) ? max_abs[n] : 0.0; };
  const HeadroomProblem p = float32_headroom(meta, m("q"), m("k"), m("v"), m("o_proj"), max_abs.count("o_proj") > 0);
  if (!p.tensor.empty()) pb.add(layer_path(layer, p.tensor), p.what);
}

}  // namespace

std::vector<std::string> validate_trace(const std::string& path, const ValidateOptions& opt) {
  std::lock_guard lock(h5::library_mutex());
  Problems pb(path, /*collect=*/true);
  try {
    h5::Handle file = open_trace_file(path, pb);
    if (!file) return pb.messages();
    TraceMeta meta;
    meta.path = path;
    const bool root_ok = read_root(file.id(), meta, pb);
    const bool shape_ok = meta.num_layers > 0 && meta.num_heads > 0 && meta.num_kv_heads > 0 &&
                          meta.head_dim > 0 && meta.hidden_size > 0 && meta.seq_len > 0;
    if (root_ok) check_query_coverage(meta, opt.window, pb);
    if (shape_ok) {
      check_layers(file.id(), meta, pb);
      // Tensors that failed their shape/type checks are skipped by the scan.
      if (opt.scan_values)
        for (int l = 0; l < meta.num_layers; ++l) scan_layer(file.id(), meta, l, pb);
    }
  } catch (const std::bad_alloc&) {
    pb.add("", "out of memory while reading (dataset sizes are implausible: corrupt file?)");
  }
  return pb.messages();
}

}  // namespace kvsim
