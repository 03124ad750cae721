#pragma once
// Writes the current trace format (kTraceFormatVersion). The file is written to "<path>.partial" and renamed on finish(),
// so an interrupted write never leaves a file that looks complete.
#include <memory>
#include <string>

#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim {

struct WriteOptions {
  StorageDtype dtype = StorageDtype::float32;
  bool gzip = false;
};

class TraceWriter {
 public:
  TraceWriter(const std::string& path, const TraceMeta& meta, const WriteOptions& opt = {});
  ~TraceWriter();  // removes the partial file if finish() was not called
  void write_layer(const LayerData& layer);  // layers in any order, each exactly once
  void finish();                             // checks all layers were written, renames

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvsim
