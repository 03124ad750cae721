#pragma once
// Internal RAII wrappers and small helpers over the HDF5 C API, shared by the trace reader,
// writer and validator. HDF5's own error printing is switched off (silence_errors): every
// failure becomes a kvsim::Error or a validator message instead.
#include <hdf5.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/types.h"

namespace kvsim::h5 {

// Turns off HDF5's automatic error-stack printing (idempotent, cheap).
void silence_errors();

// The HDF5 library (Debian's serial build) is not thread-safe: every entry point of the trace
// module holds this lock, so a reader may prefetch the next layer on another thread.
std::recursive_mutex& library_mutex();

// Owns one hid_t and closes it with the right H5*close function.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), closer_(o.closer_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      closer_ = o.closer_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t id() const { return id_; }
  bool valid() const { return id_ >= 0; }
  explicit operator bool() const { return valid(); }
  hid_t release() { return std::exchange(id_, H5I_INVALID_HID); }  // caller closes it
  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

inline Handle file_handle(hid_t id) { return Handle(id, H5Fclose); }
inline Handle group_handle(hid_t id) { return Handle(id, H5Gclose); }
inline Handle dataset_handle(hid_t id) { return Handle(id, H5Dclose); }
inline Handle space_handle(hid_t id) { return Handle(id, H5Sclose); }
inline Handle type_handle(hid_t id) { return Handle(id, H5Tclose); }
inline Handle attr_handle(hid_t id) { return Handle(id, H5Aclose); }
inline Handle plist_handle(hid_t id) { return Handle(id, H5Pclose); }

// True if every component of the '/'-separated path exists below loc (no error if not).
bool path_exists(hid_t loc, const std::string& path);
// Object type at an existing path: H5O_TYPE_GROUP, H5O_TYPE_DATASET, ... or H5O_TYPE_UNKNOWN.
H5O_type_t object_type(hid_t loc, const std::string& path);
// Names of the links in a group (empty if it cannot be iterated).
std::vector<std::string> member_names(hid_t group);

// Dimensions of a simple dataspace; nullopt for scalar/null/unreadable spaces.
std::optional<std::vector<i64>> dims_of_space(hid_t space);
std::optional<std::vector<i64>> dataset_dims(hid_t dset);
// Number of elements of an attribute or dataset space (scalar = 1); -1 if unreadable.
i64 num_points(hid_t space);

// Why a dataset of n elements of elem_size bytes (in memory, after conversion) cannot be real
// in a file of file_size bytes, or "" if it can: its stored bytes must exist inside the file and
// be able to expand to n elements (deflate expands at most ~1032x), chunks must be of sane size
// and filters ones kvsim's writers use. Checked before anything is allocated for the data, so a
// corrupt header cannot make a small file claim gigabytes.
std::string storage_problem(hid_t dset, i64 n, std::size_t elem_size, std::uintmax_t file_size);

// H5Fopen read-only of a file kvsim did not write, under metadata_memory_cap of its size (a corrupt
// superblock can make HDF5 ask for gigabytes; trace/untrusted_file.h). Invalid handle on failure.
Handle open_untrusted_file(const std::string& path);

// Reads a string (fixed- or variable-length, scalar or one element) from an attribute /
// dataset; nullopt if it is not a string or cannot be read.
std::optional<std::string> read_string_attr(hid_t attr);
std::optional<std::string> read_string_dataset(hid_t dset);

// Writes scalar attributes on obj. Strings are variable-length UTF-8 (h5py reads them as str).
void write_attr_string(hid_t obj, const std::string& name, const std::string& value);
void write_attr_i64(hid_t obj, const std::string& name, i64 value);
void write_attr_f64(hid_t obj, const std::string& name, double value);

// The IEEE binary16 file type (little endian), built the way h5py/numpy describe float16.
hid_t float16_type();  // owned by this module; do not close
// True if t is an IEEE binary16 floating-point type (either byte order).
bool is_ieee_f16(hid_t t);

}  // namespace kvsim::h5
