#pragma once
// Selections made outside kvsim and stored in HDF5 (trace format v2, optional group
// /selections; the same layout in any separate file): kept masks of a method at given budgets
// (e.g. a kvpress press run by kvsim-dump), or per-token scores that kvsim ranks itself.
//
//   /selections/<name>                     attrs kind ("kept" | "scores"), mode ("kv" | "query"),
//                                          n_c (int64: the compressible span [0, n_c)), source (str)
//   kind kept:   <name>/<budget>/layers/<l>/kept    uint8 [units, n_c]  (<budget>: a budget
//                                                   string, e.g. "cr=0.5", "0.2", "512")
//                <name>/<budget>/layers/<l>/key_channels  uint8 [num_kv_heads, head_dim],
//                                                   optional: key channels kept (ThinK)
//   kind scores: <name>/layers/<l>/scores           float32 [units, n_c], higher = keep
//                <name>/layers/<l>/protect          uint8 [n_c], optional: always kept
// units = num_kv_heads (mode kv) or num_heads (mode query); <l> is the trace layer index.
#include <memory>
#include <string>
#include <vector>

#include "core/types.h"

namespace kvsim {

struct StoredSelectionInfo {
  std::string path, name, kind, mode, source;
  i64 n_c = 0;
  std::vector<std::string> budgets;  // kind kept: the stored budget strings
};

class StoredSelection {
 public:
  // Opens path read-only and reads /selections/<name>; throws kvsim::Error naming the file and
  // the field (a missing name lists the stored ones).
  StoredSelection(const std::string& path, const std::string& name);
  ~StoredSelection();
  StoredSelection(const StoredSelection&) = delete;
  StoredSelection& operator=(const StoredSelection&) = delete;

  const StoredSelectionInfo& info() const { return info_; }
  // kind kept: the mask [units][n_c] of one budget and layer (checked: 0/1 values, shape).
  std::vector<std::uint8_t> kept(const std::string& budget, int layer, int units) const;
  // kind kept: the key-channel mask [num_kv_heads][head_dim] if stored, else empty.
  std::vector<std::uint8_t> key_channels(const std::string& budget, int layer, int num_kv_heads, int head_dim) const;
  // kind scores: [units][n_c] (checked finite) and the protect mask [n_c] (all 0 if absent).
  std::vector<float> scores(int layer, int units) const;
  std::vector<std::uint8_t> protect(int layer) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  StoredSelectionInfo info_;
};

// Names under /selections of a file (empty if none); throws only if the file cannot be opened.
std::vector<std::string> stored_selection_names(const std::string& path);

}  // namespace kvsim
