#pragma once
// Internal: the rules of trace format (v1 or v2), written once and shared by the reader (which stops at
// the first problem) and the validator (which collects them all). Every check reports through a
// Problems sink as "<path>: <field>: <what>".
#include <optional>
#include <string>
#include <vector>

#include "trace/h5_handles.h"
#include "trace/trace_meta.h"

namespace kvsim::trace_detail {

class Problems {
 public:
  Problems(std::string path, bool collect) : path_(std::move(path)), collect_(collect) {}
  // Throws kvsim::Error at once unless collecting.
  void add(const std::string& field, const std::string& what);
  bool empty() const { return messages_.empty(); }
  std::size_t count() const { return messages_.size(); }
  const std::vector<std::string>& messages() const { return messages_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool collect_;
  std::vector<std::string> messages_;
};

// Opens a trace read-only; a missing, truncated or non-HDF5 file is one problem.
h5::Handle open_trace_file(const std::string& path, Problems& pb);

// Reads and checks the root attributes, /tokens, /q_pos, /spans and /text into meta.
// Returns false when the model shape or positions are unusable (layer checks must be skipped).
bool read_root(hid_t file, TraceMeta& meta, Problems& pb);

// A per-layer float tensor, opened and checked against the shape the metadata implies.
struct Tensor {
  h5::Handle dset;
  std::string field;  // "/layers/<l>/<name>" for messages
  StorageDtype dtype = StorageDtype::float32;
  bool swap_bytes = false;  // 16-bit data stored big-endian: raw reads need a byte swap
  std::vector<i64> dims;
};

std::string layer_path(int layer, const std::string& name);  // "/layers/<l>/<name>"
// Expected shape of /layers/<l>/<name> for name in q, k, v, o_proj, o.
std::vector<i64> expected_dims(const TraceMeta& meta, const std::string& name);

// Opens /layers/<layer>/<name>. Absent: nullopt, reported only if `required`.
// Wrong rank/shape/storage type: reported, nullopt.
std::optional<Tensor> open_tensor(hid_t file, const TraceMeta& meta, int layer, const std::string& name,
                                  bool required, Problems& pb);

// Checks that /layers holds exactly the groups 0..num_layers-1 with valid q, k, v, and that the
// optional o_proj / o are present in all layers or none; sets meta.dtype, has_o_proj, has_o.
void check_layers(hid_t file, TraceMeta& meta, Problems& pb);

// Reads a hyperslab (start, count) of t widened to float32 into out (row-major over count).
// Returns false after reporting if HDF5 fails (corrupt data).
bool read_block(const Tensor& t, const std::vector<i64>& start, const std::vector<i64>& count, float* out,
                Problems& pb);
// Reads the points of an existing file-space selection (n of them, in file order).
bool read_selection(const Tensor& t, hid_t file_space, i64 n, float* out, Problems& pb);
// Same, into a memory space of the given dims (use the block's own shape when possible: fast path).
bool read_into(const Tensor& t, hid_t file_space, const std::vector<hsize_t>& mem_dims, float* out, Problems& pb);

// Non-finite values (NaN/Inf) of a block read at `start` with extent `count` (row-major):
// how many, and the full index of the first. `add` merges blocks of one tensor.
struct NonFinite {
  i64 count = 0;
  double max_abs = 0;  // largest finite |x| seen (for the float32 headroom check)
  std::vector<i64> first;
  void scan(const float* x, const std::vector<i64>& start, const std::vector<i64>& count);
  std::string describe() const;  // "3 non-finite values (NaN/Inf), first at [0, 17, 2]"
};

}  // namespace kvsim::trace_detail
