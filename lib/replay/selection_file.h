#pragma once
// selection.h5 (--save-selection): /<rule index>/<budget index>/layers/<l>/kept, uint8
// [units, n_c], with attributes rule, budget, mode; for key-channel pruning (ThinK) also
// .../key_channels, uint8 [num_kv_heads, head_dim] (1 = channel kept). Written to a unique
// partial file (core/output_path.h) through the fail-soft driver (trace/h5_output_driver.h):
// finish() closes it and throws on any failed write, commit() renames it; destroying an
// uncommitted file removes the partial file and leaves no HDF5 identifier open.
#include <memory>
#include <string>

#include "core/selection.h"

namespace kvsim {

class SelectionFile {
 public:
  explicit SelectionFile(std::string path);
  ~SelectionFile();
  void write(int rule_index, int budget_index, int layer, const Selection& sel, const std::string& rule_spec,
             const std::string& budget_text, int num_kv_heads);
  void finish();
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvsim
