#include "trace/trace_writer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "core/error.h"
#include "core/output_path.h"
#include "kernels/kernels.h"
#include "trace/float_narrow.h"
#include "trace/h5_handles.h"
#include "trace/h5_output_driver.h"
#include "trace/trace_schema.h"

namespace kvsim {

using h5::Handle;

struct TraceWriter::Impl {
  std::string path, partial;
  TraceMeta meta;
  WriteOptions opt;
  h5::OutputStatus status;  // before file: the driver writes into it until the file closes
  Handle file;
  std::vector<bool> written;
  bool finished = false;

  [[noreturn]] void error(const std::string& field, const std::string& what) const { fail(path, field, what); }
  void write_root();
  void write_int_dataset(const std::string& name, const std::vector<i64>& v, hid_t file_type);
  void write_tensor(hid_t group, int layer, const std::string& name, const avec<float>& data,
                    const std::vector<i64>& dims, const std::vector<i64>& chunk);
};

namespace {

void check_meta(const TraceMeta& m, const std::string& path) {
  auto bad = [&](const std::string& field, const std::string& what) { fail(path, field, what); };
  if (m.num_layers <= 0 || m.num_heads <= 0 || m.num_kv_heads <= 0 || m.head_dim <= 0 || m.hidden_size <= 0)
    bad("model shape", "num_layers, num_heads, num_kv_heads, head_dim and hidden_size must be positive");
  if (m.num_heads % m.num_kv_heads != 0) bad("@num_kv_heads", "must divide num_heads");
  if (m.seq_len <= 0 || static_cast<i64>(m.segment.size()) != m.seq_len ||
      static_cast<i64>(m.input_ids.size()) != m.seq_len)
    bad("/tokens", "input_ids and segment must both hold seq_len positions");
  for (i64 i = 0; i < m.seq_len; ++i)
    if (m.segment[i] > 2 || (i > 0 && m.segment[i] < m.segment[i - 1]))
      bad("/tokens/segment", "values must be 0, 1, 2 in that order (context, question, generated)");
  i64 prompt = 0;
  while (prompt < m.seq_len && m.segment[prompt] != kGenerated) ++prompt;
  if (m.prefill_len != prompt || prompt == 0)
    bad("@prefill_len", "must equal the number of context + question positions (" + std::to_string(prompt) + ")");
  if (m.q_pos.empty()) bad("/q_pos", "no stored query positions");
  for (std::size_t i = 0; i < m.q_pos.size(); ++i)
    if (m.q_pos[i] < 0 || m.q_pos[i] >= m.seq_len || (i > 0 && m.q_pos[i] <= m.q_pos[i - 1]))
      bad("/q_pos", "positions must be strictly increasing inside [0, seq_len)");
  for (const auto& [name, span] : m.spans)
    if (name.empty() || name.find('/') != std::string::npos || span.first < 0 || span.first > span.second ||
        span.second > m.seq_len)
      bad("/spans/" + name, "must be a range inside [0, seq_len) with a plain name");
  if (!(m.rope_theta > 0) || !std::isfinite(m.rope_theta)) bad("@rope_theta", "must be positive");
  if (!(m.attn_softcap >= 0) || !std::isfinite(m.attn_softcap)) bad("@attn_logit_softcap", "must be >= 0");
  if (m.rotary_dim < 0 || m.rotary_dim > m.head_dim || m.rotary_dim % 2) bad("@rotary_dim", "must be even, 0..head_dim");
  if (!m.layer_attrs.empty() && static_cast<int>(m.layer_attrs.size()) != m.num_layers)
    bad("/layers", "layer_attrs must be empty or hold num_layers entries");
  for (std::size_t l = 0; l < m.layer_attrs.size(); ++l)
    if (m.layer_attrs[l].sliding_window > 0 && m.layer_attrs[l].sliding_window < m.seq_len)
      bad("/layers/" + std::to_string(l) + "@sliding_window", "shorter than the trace: not replayable");
}

}  // namespace

void TraceWriter::Impl::write_int_dataset(const std::string& name, const std::vector<i64>& v, hid_t file_type) {
  const hsize_t n = v.size();
  Handle space = h5::space_handle(H5Screate_simple(1, &n, nullptr));
  Handle d = h5::dataset_handle(
      H5Dcreate2(file.id(), name.c_str(), file_type, space.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!d || H5Dwrite(d.id(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0)
    error(name, "cannot write dataset");
}

void TraceWriter::Impl::write_root() {
  const hid_t f = file.id();
  h5::write_attr_string(f, "format", "kvsim-trace");
  h5::write_attr_i64(f, "version", kTraceFormatVersion);
  h5::write_attr_string(f, "model", meta.model);
  h5::write_attr_string(f, "source", meta.source.empty() ? "kvsim TraceWriter" : meta.source);
  h5::write_attr_i64(f, "num_layers", meta.num_layers);
  h5::write_attr_i64(f, "num_heads", meta.num_heads);
  h5::write_attr_i64(f, "num_kv_heads", meta.num_kv_heads);
  h5::write_attr_i64(f, "head_dim", meta.head_dim);
  h5::write_attr_i64(f, "hidden_size", meta.hidden_size);
  h5::write_attr_string(f, "rope_style", meta.rope_style == RopeStyle::half ? "half" : "interleaved");
  h5::write_attr_f64(f, "rope_theta", meta.rope_theta);
  if (!meta.rope_scaling.empty()) h5::write_attr_string(f, "rope_scaling", meta.rope_scaling);
  const double scale = meta.attn_scale > 0 ? meta.attn_scale : 1.0 / std::sqrt(static_cast<double>(meta.head_dim));
  h5::write_attr_f64(f, "attn_scale", scale);
  h5::write_attr_i64(f, "prefill_len", meta.prefill_len);
  if (meta.attn_softcap > 0) h5::write_attr_f64(f, "attn_logit_softcap", meta.attn_softcap);
  if (meta.rotary_dim > 0) h5::write_attr_i64(f, "rotary_dim", meta.rotary_dim);

  Handle tokens = h5::group_handle(H5Gcreate2(f, "tokens", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  write_int_dataset("/tokens/input_ids", std::vector<i64>(meta.input_ids.begin(), meta.input_ids.end()),
                    H5T_STD_I32LE);
  write_int_dataset("/tokens/segment", std::vector<i64>(meta.segment.begin(), meta.segment.end()), H5T_STD_U8LE);
  write_int_dataset("/q_pos", meta.q_pos, H5T_STD_I64LE);
  if (!meta.spans.empty()) {
    Handle spans = h5::group_handle(H5Gcreate2(f, "spans", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    for (const auto& [name, span] : meta.spans)
      write_int_dataset("/spans/" + name, {span.first, span.second}, H5T_STD_I64LE);
  }
  if (!meta.text.empty()) {
    Handle t = h5::type_handle(H5Tcopy(H5T_C_S1));
    H5Tset_size(t.id(), H5T_VARIABLE);
    H5Tset_cset(t.id(), H5T_CSET_UTF8);
    Handle space = h5::space_handle(H5Screate(H5S_SCALAR));
    Handle d = h5::dataset_handle(H5Dcreate2(f, "text", t.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    const char* p = meta.text.c_str();
    if (!d || H5Dwrite(d.id(), t.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &p) < 0) error("/text", "cannot write");
  }
  Handle layers = h5::group_handle(H5Gcreate2(f, "layers", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!tokens || !layers) error("", "cannot create groups");
}

TraceWriter::TraceWriter(const std::string& path, const TraceMeta& meta, const WriteOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  std::lock_guard lock(h5::library_mutex());
  h5::silence_errors();
  Impl& m = *impl_;
  m.path = path;
  m.meta = meta;
  m.opt = opt;
  check_meta(meta, path);
  check_output_target(path);
  m.partial = create_partial_file(path);
  m.written.assign(static_cast<std::size_t>(meta.num_layers), false);
  {
    Handle fapl = h5::plist_handle(h5::output_file_access(&m.status));
    m.file = h5::file_handle(H5Fcreate(m.partial.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id()));
  }
  if (!m.file) {
    discard_partial_file(m.partial);
    fail(m.partial, "", "cannot create the file (check the folder exists and is writable)");
  }
  try {
    if (opt.gzip && (H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0 || H5Zfilter_avail(H5Z_FILTER_SHUFFLE) <= 0))
      m.error("--gzip", "this HDF5 library has no deflate/shuffle filter");
    m.write_root();
    if (!m.status.ok()) m.error("", m.status.message());
  } catch (...) {  // no destructor runs for a failed constructor: clean up here
    m.file.reset();
    discard_partial_file(m.partial);
    throw;
  }
}

TraceWriter::~TraceWriter() {
  std::lock_guard lock(h5::library_mutex());
  if (!impl_ || impl_->finished) return;
  impl_->file.reset();
  discard_partial_file(impl_->partial);
}

void TraceWriter::Impl::write_tensor(hid_t group, int layer, const std::string& name, const avec<float>& data,
                                     const std::vector<i64>& dims, const std::vector<i64>& chunk) {
  const std::string field = trace_detail::layer_path(layer, name);
  i64 n = 1;
  for (i64 x : dims) n *= x;
  if (static_cast<i64>(data.size()) != n) error(field, "tensor has " + std::to_string(data.size()) + " values, expected " + std::to_string(n));
  if (const i64 bad = kernels::count_nonfinite(data.data(), n); bad > 0)
    error(field, std::to_string(bad) + " non-finite values (NaN/Inf) in the data to write");

  std::vector<hsize_t> hd(dims.begin(), dims.end()), hc(chunk.begin(), chunk.end());
  Handle space = h5::space_handle(H5Screate_simple(static_cast<int>(hd.size()), hd.data(), nullptr));
  Handle dcpl = h5::plist_handle(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(dcpl.id(), static_cast<int>(hc.size()), hc.data());
  if (opt.gzip) {
    H5Pset_shuffle(dcpl.id());
    H5Pset_deflate(dcpl.id(), 4);
  }
  const hid_t ftype = opt.dtype == StorageDtype::float32   ? H5T_IEEE_F32LE
                      : opt.dtype == StorageDtype::float16 ? h5::float16_type()
                                                           : H5T_STD_U16LE;
  Handle d = h5::dataset_handle(
      H5Dcreate2(group, name.c_str(), ftype, space.id(), H5P_DEFAULT, dcpl.id(), H5P_DEFAULT));
  if (!d) error(field, "cannot create dataset");
  if (opt.dtype == StorageDtype::bfloat16) h5::write_attr_string(d.id(), "dtype", "bfloat16");

  herr_t rc;
  if (opt.dtype == StorageDtype::float32) {
    rc = H5Dwrite(d.id(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data());
  } else {
    std::vector<std::uint16_t> raw(static_cast<std::size_t>(n));
    const i64 bad = opt.dtype == StorageDtype::float16 ? narrow_to_f16(data.data(), raw.data(), n)
                                                       : narrow_to_bf16(data.data(), raw.data(), n);
    if (bad >= 0)
      error(field, "value " + std::to_string(data[bad]) + " at flat index " + std::to_string(bad) + " exceeds the " +
                       dtype_name(opt.dtype) + " range (max " +
                       (opt.dtype == StorageDtype::float16 ? "65504" : "3.39e38") + "); write it as float32");
    // Raw words with the file's type as memory type: no conversion by HDF5.
    rc = H5Dwrite(d.id(), ftype, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data());
  }
  if (!status.ok()) error(field, status.message());
  if (rc < 0) error(field, "cannot write dataset (disk full?)");
}

void TraceWriter::write_layer(const LayerData& L) {
  std::lock_guard lock(h5::library_mutex());
  Impl& m = *impl_;
  const TraceMeta& meta = m.meta;
  const std::string where = "/layers/" + std::to_string(L.layer);
  if (m.finished) m.error(where, "write_layer after finish()");
  if (L.layer < 0 || L.layer >= meta.num_layers) m.error(where, "layer index out of range");
  if (m.written[L.layer]) m.error(where, "layer written twice");
  if (L.num_heads != meta.num_heads || L.num_kv_heads != meta.num_kv_heads || L.head_dim != meta.head_dim ||
      L.seq_len != meta.seq_len || L.num_q != meta.num_queries())
    m.error(where, "layer shape does not match the trace metadata");
  if (L.has_o_proj() != meta.has_o_proj)
    m.error(where + "/o_proj", meta.has_o_proj ? "missing (metadata says every layer has o_proj)"
                                               : "present but metadata has has_o_proj = false");
  if (L.o.empty() == meta.has_o)
    m.error(where + "/o", meta.has_o ? "missing (metadata says every layer has o)"
                                     : "present but metadata has has_o = false");

  Handle g = h5::group_handle(H5Gcreate2(m.file.id(), where.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!g) m.error(where, "cannot create group");
  if (L.layer < static_cast<int>(meta.layer_attrs.size())) {
    const LayerAttrs& a = meta.layer_attrs[L.layer];
    if (!a.attention_type.empty()) h5::write_attr_string(g.id(), "attention_type", a.attention_type);
    if (a.sliding_window > 0) h5::write_attr_i64(g.id(), "sliding_window", a.sliding_window);
    if (a.rope_theta > 0) h5::write_attr_f64(g.id(), "rope_theta", a.rope_theta);
    if (!a.rope_scaling.empty()) h5::write_attr_string(g.id(), "rope_scaling", a.rope_scaling);
  }
  const i64 d = meta.head_dim, S = meta.seq_len, nq = meta.num_queries();
  const i64 H = meta.num_heads, G = meta.num_kv_heads, D = meta.hidden_size;
  try {
    m.write_tensor(g.id(), L.layer, "q", L.q, {H, nq, d}, {1, std::min<i64>(nq, 1024), d});
    m.write_tensor(g.id(), L.layer, "k", L.k, {G, S, d}, {1, std::min<i64>(S, 1024), d});
    m.write_tensor(g.id(), L.layer, "v", L.v, {G, S, d}, {1, std::min<i64>(S, 1024), d});
    if (meta.has_o_proj) {
      // About 1 MiB of float32 per chunk: whole rows, as readers consume them.
      const i64 rows = std::clamp<i64>((i64{1} << 18) / (H * d), 1, D);
      m.write_tensor(g.id(), L.layer, "o_proj", L.o_proj, {D, H * d}, {rows, H * d});
    }
    if (meta.has_o) m.write_tensor(g.id(), L.layer, "o", L.o, {H, nq, d}, {1, std::min<i64>(nq, 1024), d});
  } catch (...) {
    // Leave no half-written layer behind, so the caller may fix the data and retry.
    g.reset();
    H5Ldelete(m.file.id(), where.c_str(), H5P_DEFAULT);
    throw;
  }
  m.written[L.layer] = true;
}

void TraceWriter::finish() {
  std::lock_guard lock(h5::library_mutex());
  Impl& m = *impl_;
  if (m.finished) return;
  for (int l = 0; l < m.meta.num_layers; ++l)
    if (!m.written[l]) m.error("/layers/" + std::to_string(l), "layer was never written");
  if (H5Fflush(m.file.id(), H5F_SCOPE_GLOBAL) < 0) m.error("", "cannot flush (disk full?)");
  if (!m.status.ok()) m.error("", m.status.message());
  if (H5Fclose(m.file.release()) < 0) m.error("", "cannot close the file (disk full?)");
  if (!m.status.ok()) m.error("", m.status.message());
  commit_partial_file(m.partial, m.path);
  m.finished = true;
}

}  // namespace kvsim
