#include "trace/h5_handles.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "trace/untrusted_file.h"

namespace kvsim::h5 {

void silence_errors() {
  // Per call rather than once: thread-safe HDF5 builds keep one error stack per thread.
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

std::recursive_mutex& library_mutex() {
  static std::recursive_mutex mu;
  return mu;
}

bool path_exists(hid_t loc, const std::string& path) {
  std::string prefix;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    const std::string part = path.substr(start, end - start);
    if (!part.empty()) {
      // Descend only through a group whose object header reads as one: HDF5 1.10 follows a
      // link inside an object it cannot parse into a local heap that is not there and crashes
      // (found by fuzzing: H5Lexists("layers/0") where H5Oget_info("layers") fails).
      if (!prefix.empty() && object_type(loc, prefix) != H5O_TYPE_GROUP) return false;
      prefix += (prefix.empty() ? "" : "/") + part;
      if (H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
      // The link may dangle (soft/external link): require a real object behind it.
      if (H5Oexists_by_name(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    }
    start = end + 1;
  }
  return !prefix.empty();
}

H5O_type_t object_type(hid_t loc, const std::string& path) {
  H5O_info_t info;
  if (H5Oget_info_by_name(loc, path.c_str(), &info, H5P_DEFAULT) < 0) return H5O_TYPE_UNKNOWN;
  return info.type;
}

static herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  return 0;
}

std::vector<std::string> member_names(hid_t group) {
  std::vector<std::string> names;
  hsize_t idx = 0;
  if (H5Literate(group, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, collect_name, &names) < 0) return {};
  return names;
}

std::optional<std::vector<i64>> dims_of_space(hid_t space) {
  if (space < 0 || H5Sget_simple_extent_type(space) != H5S_SIMPLE) return std::nullopt;
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 0 || rank > 32) return std::nullopt;
  hsize_t d[32];
  if (H5Sget_simple_extent_dims(space, d, nullptr) < 0) return std::nullopt;
  return std::vector<i64>(d, d + rank);
}

std::optional<std::vector<i64>> dataset_dims(hid_t dset) {
  Handle space = space_handle(H5Dget_space(dset));
  if (!space) return std::nullopt;
  return dims_of_space(space.id());
}

i64 num_points(hid_t space) {
  if (space < 0) return -1;
  const H5S_class_t cls = H5Sget_simple_extent_type(space);
  if (cls == H5S_SCALAR) return 1;
  if (cls != H5S_SIMPLE) return 0;
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  return n < 0 ? -1 : static_cast<i64>(n);
}

// Every chunk of a chunked dataset: listed by the index, inside the file, at a chunk-aligned
// coordinate inside the dataset (a corrupt index makes HDF5 1.10 copy from wild addresses), and,
// without filters, storing a whole chunk: HDF5 1.10 reads an unfiltered chunk into a buffer of
// its stored size and then copies the full chunk out of it (ASan: a 1280-byte read out of an
// 8-byte buffer, shared regression crash-2910c391). raw_chunk_bytes is 0 for filtered datasets.
static std::string chunk_index_problem(hid_t dset, int rank, const hsize_t* chunk, std::uintmax_t file_size,
                                       long double raw_chunk_bytes) {
  Handle space = space_handle(H5Dget_space(dset));
  hsize_t dims[32], maxdims[32];
  if (!space || H5Sget_simple_extent_ndims(space.id()) != rank || H5Sget_simple_extent_dims(space.id(), dims, maxdims) < 0)
    return "has a chunk layout that does not match its shape (corrupt)";
  // A chunk larger than a fixed-size dimension: HDF5 1.10 copies the whole chunk extent.
  for (int i = 0; i < rank; ++i)
    if (chunk[i] == 0 || (chunk[i] > std::max<hsize_t>(dims[i], 1) && maxdims[i] == dims[i]))
      return "has chunks of " + std::to_string(chunk[i]) + " along dimension " + std::to_string(i) + " of size " +
             std::to_string(dims[i]) + " (corrupt chunk layout)";
  hsize_t count = 0;
  if (H5Dget_num_chunks(dset, space.id(), &count) < 0) return "has an unreadable chunk index (corrupt)";
  long double expected = 1;
  for (int i = 0; i < rank; ++i) expected *= static_cast<long double>((dims[i] + chunk[i] - 1) / chunk[i]);
  if (static_cast<long double>(count) > expected) return "lists more chunks than its shape has (corrupt chunk index)";
  for (hsize_t c = 0; c < count; ++c) {
    hsize_t off[32];
    unsigned mask = 0;
    haddr_t addr = 0;
    hsize_t size = 0;
    if (H5Dget_chunk_info(dset, space.id(), c, off, &mask, &addr, &size) < 0)
      return "has an unreadable chunk index (corrupt)";
    if (addr == HADDR_UNDEF || static_cast<long double>(addr) + size > static_cast<long double>(file_size))
      return "has a chunk at byte " + std::to_string(addr) + " (+" + std::to_string(size) + ") outside the " +
             std::to_string(file_size) + "-byte file (truncated or corrupt)";
    for (int i = 0; i < rank; ++i)
      if (off[i] >= dims[i] || off[i] % chunk[i] != 0)
        return "has a chunk at a coordinate outside its shape (corrupt chunk index)";
    if (raw_chunk_bytes > 0 && static_cast<long double>(size) < raw_chunk_bytes)
      return "has an unfiltered chunk of " + std::to_string(size) + " bytes where a chunk holds " +
             std::to_string(static_cast<long long>(raw_chunk_bytes)) + " (corrupt chunk index)";
  }
  return "";
}

std::string storage_problem(hid_t dset, i64 n, std::size_t elem_size, std::uintmax_t file_size) {
  if (n <= 0) return "";
  constexpr i64 kMaxElements = i64{1} << 42;  // 16 Ti elements: beyond any real trace
  if (n > kMaxElements) return "declares " + std::to_string(n) + " elements (corrupt header)";
  Handle dcpl = plist_handle(H5Dget_create_plist(dset));
  if (!dcpl) return "has an unreadable storage layout";
  const H5D_layout_t layout = H5Pget_layout(dcpl.id());
  const long double need = static_cast<long double>(n) * static_cast<long double>(elem_size);
  const hsize_t stored = H5Dget_storage_size(dset);
  // What the file must hold: n values of the stored type (int8 segments are 1 byte in the file).
  Handle ftype = type_handle(H5Dget_type(dset));
  const std::size_t file_elem = ftype ? H5Tget_size(ftype.id()) : 0;
  if (file_elem == 0) return "has an unreadable datatype";
  const long double need_in_file = static_cast<long double>(n) * static_cast<long double>(file_elem);
  if (layout == H5D_CONTIGUOUS) {
    const haddr_t off = H5Dget_offset(dset);
    if (off == HADDR_UNDEF || stored == 0) return "declares " + std::to_string(n) + " values but stores none";
    if (static_cast<long double>(stored) < need_in_file)
      return "declares " + std::to_string(n) + " values but stores only " + std::to_string(stored) + " bytes (corrupt)";
    if (static_cast<long double>(off) + stored > static_cast<long double>(file_size))
      return "data at byte " + std::to_string(off) + " (+" + std::to_string(stored) + ") lies past the end of the " +
             std::to_string(file_size) + "-byte file (truncated or corrupt)";
  } else if (layout == H5D_CHUNKED) {
    const int rank = H5Pget_chunk(dcpl.id(), 0, nullptr);
    if (rank < 1 || rank > 32) return "has a corrupt chunk layout";
    hsize_t chunk[32];
    H5Pget_chunk(dcpl.id(), rank, chunk);
    long double chunk_bytes = static_cast<long double>(elem_size);
    for (int i = 0; i < rank; ++i) chunk_bytes *= static_cast<long double>(chunk[i]);
    if (chunk_bytes > (1u << 30)) return "has chunks of " + std::to_string(static_cast<long long>(chunk_bytes)) +
                                         " bytes (corrupt layout; kvsim writes chunks under 1 GiB)";
    const int filters = H5Pget_nfilters(dcpl.id());
    for (int i = 0; i < filters; ++i) {
      unsigned flags = 0;
      std::size_t nelem = 0;
      const H5Z_filter_t f = H5Pget_filter2(dcpl.id(), static_cast<unsigned>(i), &flags, &nelem, nullptr, 0, nullptr,
                                             nullptr);
      if (f != H5Z_FILTER_DEFLATE && f != H5Z_FILTER_SHUFFLE && f != H5Z_FILTER_FLETCHER32 && f != 32015 /* zstd */ &&
          f != 32001 /* blosc */ && f != 32004 /* lz4 */)
        return "uses HDF5 filter " + std::to_string(f) + ", which kvsim does not read";
    }
    if (stored == 0) return "declares " + std::to_string(n) + " values but stores none (unwritten dataset or corrupt chunk index)";
    long double raw_chunk_bytes = 0;
    if (filters == 0) {
      raw_chunk_bytes = static_cast<long double>(file_elem);
      for (int i = 0; i < rank; ++i) raw_chunk_bytes *= static_cast<long double>(chunk[i]);
    }
    if (const std::string bad = chunk_index_problem(dset, rank, chunk, file_size, raw_chunk_bytes); !bad.empty())
      return bad;
    if (stored > file_size) return "claims " + std::to_string(stored) + " stored bytes in a " +
                                   std::to_string(file_size) + "-byte file (corrupt)";
    constexpr long double kMaxExpansion = 1100.0L;  // deflate's limit is ~1032:1
    if (need > static_cast<long double>(stored) * kMaxExpansion + (1 << 20))
      return "declares " + std::to_string(n) + " values but stores only " + std::to_string(stored) +
             " bytes for them (unwritten, truncated or corrupt dataset)";
  } else if (layout == H5D_COMPACT) {
    if (need > (1 << 16)) return "declares " + std::to_string(n) + " values in a compact (<64 KiB) layout (corrupt)";
    // HDF5 1.10 copies the declared size out of the compact buffer without checking it.
    if (static_cast<long double>(stored) < need_in_file)
      return "declares " + std::to_string(n) + " values but its compact storage holds " + std::to_string(stored) +
             " bytes (corrupt)";
  } else {
    return "has an unsupported storage layout (virtual or unknown)";
  }
  return "";
}

Handle open_untrusted_file(const std::string& path) {
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  MemoryCap cap(metadata_memory_cap(ec ? 0 : size));
  return file_handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
}

// The address space a string read of object `obj` may add (variable-length strings live in the
// file's global heap, uncompressed): metadata_memory_cap of the file's size.
static unsigned long long string_read_cap(hid_t obj) {
  unsigned long long cap = preflight_limits().memory;
  const hid_t file = H5Iget_file_id(obj);
  hsize_t size = 0;
  if (file >= 0 && H5Fget_filesize(file, &size) >= 0) cap = metadata_memory_cap(size);
  if (file >= 0) H5Fclose(file);
  return cap;
}

// Shared string decoding for attributes and datasets: `read(memtype, buf)` fills the buffer.
template <class ReadFn>
static std::optional<std::string> read_string(hid_t ftype, hid_t space, unsigned long long cap_bytes, ReadFn read) {
  // A corrupt variable-length descriptor makes HDF5 allocate (and clear) whatever length it
  // claims: cap it, so the read fails instead (see trace/untrusted_file.h).
  MemoryCap cap(cap_bytes);
  if (ftype < 0 || H5Tget_class(ftype) != H5T_STRING || num_points(space) != 1) return std::nullopt;
  const htri_t is_var = H5Tis_variable_str(ftype);
  if (is_var < 0) return std::nullopt;
  Handle mtype = type_handle(H5Tcopy(H5T_C_S1));
  if (!mtype) return std::nullopt;
  H5Tset_cset(mtype.id(), H5Tget_cset(ftype));
  if (is_var) {
    H5Tset_size(mtype.id(), H5T_VARIABLE);
    char* p = nullptr;
    if (read(mtype.id(), &p) < 0) return std::nullopt;
    std::string s = p ? std::string(p) : std::string();
    if (p) H5free_memory(p);
    return s;
  }
  const std::size_t n = H5Tget_size(ftype);
  if (n == 0 || n > (1u << 30)) return std::nullopt;
  std::vector<char> buf(n + 1, '\0');
  H5Tset_size(mtype.id(), n + 1);
  H5Tset_strpad(mtype.id(), H5T_STR_NULLTERM);
  if (read(mtype.id(), buf.data()) < 0) return std::nullopt;
  return std::string(buf.data());
}

std::optional<std::string> read_string_attr(hid_t attr) {
  Handle ftype = type_handle(H5Aget_type(attr));
  Handle space = space_handle(H5Aget_space(attr));
  if (!ftype || !space) return std::nullopt;
  return read_string(ftype.id(), space.id(), string_read_cap(attr),
                     [&](hid_t mt, void* buf) { return H5Aread(attr, mt, buf); });
}

std::optional<std::string> read_string_dataset(hid_t dset) {
  Handle ftype = type_handle(H5Dget_type(dset));
  Handle space = space_handle(H5Dget_space(dset));
  if (!ftype || !space) return std::nullopt;
  return read_string(ftype.id(), space.id(), string_read_cap(dset), [&](hid_t mt, void* buf) {
    return H5Dread(dset, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
  });
}

static void write_attr(hid_t obj, const std::string& name, hid_t type, const void* value) {
  Handle space = space_handle(H5Screate(H5S_SCALAR));
  Handle attr = attr_handle(H5Acreate2(obj, name.c_str(), type, space.id(), H5P_DEFAULT, H5P_DEFAULT));
  if (!attr || H5Awrite(attr.id(), type, value) < 0)
    throw Error("cannot write attribute @" + name);
}

void write_attr_string(hid_t obj, const std::string& name, const std::string& value) {
  Handle t = type_handle(H5Tcopy(H5T_C_S1));
  H5Tset_size(t.id(), H5T_VARIABLE);
  H5Tset_cset(t.id(), H5T_CSET_UTF8);
  const char* p = value.c_str();
  write_attr(obj, name, t.id(), &p);
}

void write_attr_i64(hid_t obj, const std::string& name, i64 value) {
  const std::int64_t v = value;
  // Stored little-endian 64-bit, as numpy/h5py write Python ints.
  Handle space = space_handle(H5Screate(H5S_SCALAR));
  Handle attr = attr_handle(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, space.id(), H5P_DEFAULT, H5P_DEFAULT));
  if (!attr || H5Awrite(attr.id(), H5T_NATIVE_INT64, &v) < 0)
    throw Error("cannot write attribute @" + name);
}

void write_attr_f64(hid_t obj, const std::string& name, double value) {
  Handle space = space_handle(H5Screate(H5S_SCALAR));
  Handle attr = attr_handle(H5Acreate2(obj, name.c_str(), H5T_IEEE_F64LE, space.id(), H5P_DEFAULT, H5P_DEFAULT));
  if (!attr || H5Awrite(attr.id(), H5T_NATIVE_DOUBLE, &value) < 0)
    throw Error("cannot write attribute @" + name);
}

hid_t float16_type() {
  static const hid_t t = [] {
    hid_t id = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(id, 15, 10, 5, 0, 10);
    H5Tset_size(id, 2);
    H5Tset_ebias(id, 15);
    H5Tlock(id);
    return id;
  }();
  return t;
}

bool is_ieee_f16(hid_t t) {
  if (H5Tget_class(t) != H5T_FLOAT || H5Tget_size(t) != 2) return false;
  std::size_t spos, epos, esize, mpos, msize;
  if (H5Tget_fields(t, &spos, &epos, &esize, &mpos, &msize) < 0) return false;
  return spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 && H5Tget_ebias(t) == 15 &&
         H5Tget_offset(t) == 0 && H5Tget_precision(t) == 16;
}

}  // namespace kvsim::h5
