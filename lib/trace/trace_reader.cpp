#include "trace/trace_reader.h"

#include <algorithm>

#include "core/error.h"
#include "trace/float_headroom.h"
#include "trace/trace_schema.h"

namespace kvsim {

using namespace trace_detail;

struct TraceReader::Impl {
  std::string path;
  h5::Handle file;
};

TraceReader::TraceReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  std::lock_guard lock(h5::library_mutex());
  impl_->path = path;
  meta_.path = path;
  Problems pb(path, /*collect=*/false);  // throws at the first problem
  impl_->file = open_trace_file(path, pb);
  read_root(impl_->file.id(), meta_, pb);
  check_layers(impl_->file.id(), meta_, pb);
}

TraceReader::~TraceReader() {
  std::lock_guard lock(h5::library_mutex());
  impl_.reset();
}

namespace {

// Reads a [heads, rows, head_dim] tensor one head at a time (bounds the 16-bit staging buffer)
// and rejects non-finite values.
void read_per_head(const Tensor& t, float* out, Problems& pb) {
  const i64 per_head = t.dims[1] * t.dims[2];
  NonFinite nf;
  for (i64 h = 0; h < t.dims[0]; ++h) {
    const std::vector<i64> start{h, 0, 0}, count{1, t.dims[1], t.dims[2]};
    read_block(t, start, count, out + h * per_head, pb);
    nf.scan(out + h * per_head, start, count);
  }
  if (nf.count) pb.add(t.field, nf.describe());
}

void read_matrix(const Tensor& t, float* out, Problems& pb) {
  const i64 rows = t.dims[0], cols = t.dims[1];
  const i64 block = std::max<i64>(1, (i64{1} << 22) / std::max<i64>(cols, 1));
  NonFinite nf;
  for (i64 r = 0; r < rows; r += block) {
    const std::vector<i64> start{r, 0}, count{std::min(block, rows - r), cols};
    read_block(t, start, count, out + r * cols, pb);
    nf.scan(out + r * cols, start, count);
  }
  if (nf.count) pb.add(t.field, nf.describe());
}

// Reads the sorted unique rows `rows` of a [heads, Nq, head_dim] tensor as [heads, rows, head_dim].
void read_rows(const Tensor& t, const std::vector<i64>& rows, float* out, Problems& pb) {
  const i64 d = t.dims[2], n = static_cast<i64>(rows.size());
  // Contiguous runs of rows become one hyperslab each, selected for every head at once.
  std::vector<std::pair<i64, i64>> runs;
  for (i64 r : rows) {
    if (!runs.empty() && runs.back().second == r) ++runs.back().second;
    else runs.push_back({r, r + 1});
  }
  NonFinite nf;
  for (i64 h = 0; h < t.dims[0]; ++h) {
    float* dst = out + h * n * d;
    if (runs.size() > 64) {  // scattered rows: one read of the head, then gather
      avec<float> all(static_cast<std::size_t>(t.dims[1] * d));
      read_block(t, {h, 0, 0}, {1, t.dims[1], d}, all.data(), pb);
      for (i64 i = 0; i < n; ++i) std::copy_n(all.data() + rows[i] * d, d, dst + i * d);
    } else {
      h5::Handle space = h5::space_handle(H5Dget_space(t.dset.id()));
      H5Sselect_none(space.id());
      for (const auto& [a, b] : runs) {
        const hsize_t start[3] = {static_cast<hsize_t>(h), static_cast<hsize_t>(a), 0};
        const hsize_t count[3] = {1, static_cast<hsize_t>(b - a), static_cast<hsize_t>(d)};
        if (H5Sselect_hyperslab(space.id(), H5S_SELECT_OR, start, nullptr, count, nullptr) < 0)
          pb.add(t.field, "cannot select the requested rows");
      }
      read_selection(t, space.id(), n * d, dst, pb);
    }
    nf.scan(dst, {h, 0, 0}, {1, n, d});
  }
  if (nf.count) pb.add(t.field, nf.describe() + " (row index within the requested rows)");
}

}  // namespace

LayerData TraceReader::read_layer(int layer, const LayerRequest& req) const {
  std::lock_guard lock(h5::library_mutex());
  Problems pb(meta_.path, /*collect=*/false);
  if (layer < 0 || layer >= meta_.num_layers)
    pb.add("/layers/" + std::to_string(layer), "no such layer (trace has " + std::to_string(meta_.num_layers) + ")");
  const hid_t file = impl_->file.id();

  LayerData out;
  out.layer = layer;
  out.num_heads = meta_.num_heads;
  out.num_kv_heads = meta_.num_kv_heads;
  out.head_dim = meta_.head_dim;
  out.hidden_size = meta_.hidden_size;
  out.seq_len = meta_.seq_len;

  // Requested query rows: sorted unique set read from disk, then arranged in request order.
  const i64 nq_all = meta_.num_queries();
  std::vector<i64> uniq = req.q_rows;
  std::sort(uniq.begin(), uniq.end());
  uniq.erase(std::unique(uniq.begin(), uniq.end()), uniq.end());
  for (i64 r : uniq)
    if (r < 0 || r >= nq_all)
      pb.add("/q_pos", "requested query row " + std::to_string(r) + " is outside [0, " + std::to_string(nq_all) + ")");
  const bool all_rows = req.q_rows.empty() || (static_cast<i64>(uniq.size()) == nq_all && uniq == req.q_rows);
  out.num_q = all_rows ? nq_all : static_cast<i64>(req.q_rows.size());
  const i64 d = meta_.head_dim;

  auto load_queries = [&](const Tensor& t, avec<float>& dst) {
    dst.resize(static_cast<std::size_t>(meta_.num_heads * out.num_q * d));
    if (all_rows) return read_per_head(t, dst.data(), pb);
    if (uniq == req.q_rows) return read_rows(t, uniq, dst.data(), pb);
    avec<float> tmp(static_cast<std::size_t>(meta_.num_heads * uniq.size() * d));
    read_rows(t, uniq, tmp.data(), pb);
    for (int h = 0; h < meta_.num_heads; ++h)
      for (i64 i = 0; i < out.num_q; ++i) {
        const i64 u = std::lower_bound(uniq.begin(), uniq.end(), req.q_rows[i]) - uniq.begin();
        std::copy_n(tmp.data() + (h * static_cast<i64>(uniq.size()) + u) * d, d,
                    dst.data() + (h * out.num_q + i) * d);
      }
  };

  if (req.q) load_queries(*open_tensor(file, meta_, layer, "q", true, pb), out.q);
  for (auto [want, name, dst] : {std::tuple{req.k, "k", &out.k}, std::tuple{req.v, "v", &out.v}}) {
    if (!want) continue;
    auto t = open_tensor(file, meta_, layer, name, true, pb);
    dst->resize(static_cast<std::size_t>(meta_.num_kv_heads * meta_.seq_len * d));
    read_per_head(*t, dst->data(), pb);
  }
  if (req.o_proj && meta_.has_o_proj) {
    auto t = open_tensor(file, meta_, layer, "o_proj", true, pb);
    out.o_proj.resize(static_cast<std::size_t>(t->dims[0] * t->dims[1]));
    read_matrix(*t, out.o_proj.data(), pb);
  }
  if (req.o && meta_.has_o) load_queries(*open_tensor(file, meta_, layer, "o", true, pb), out.o);
  check_float32_headroom(meta_, out);
  return out;
}

}  // namespace kvsim
