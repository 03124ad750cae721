#pragma once
// Streams a trace one layer at a time. Every problem with the file is reported as
// kvsim::Error("<path>: <dataset or attribute>: <what>"). HDF5 calls are serialised by a
// module-wide lock, so read_layer may run on a prefetch thread while another thread computes.
#include <memory>
#include <string>
#include <vector>

#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim {

struct LayerRequest {
  bool q = true, k = true, v = true, o_proj = true, o = false;
  // Rows of /layers/<l>/q (indices into /q_pos) to load; empty = all rows.
  std::vector<i64> q_rows;
};

class TraceReader {
 public:
  explicit TraceReader(const std::string& path);  // opens, reads and checks root metadata
  ~TraceReader();
  TraceReader(const TraceReader&) = delete;
  TraceReader& operator=(const TraceReader&) = delete;

  const TraceMeta& meta() const { return meta_; }
  // Reads one layer, widened to float32; checks shapes and rejects NaN/Inf.
  LayerData read_layer(int layer, const LayerRequest& req = {}) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  TraceMeta meta_;
};

}  // namespace kvsim
