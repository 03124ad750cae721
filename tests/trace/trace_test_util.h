#pragma once
// Small traces for the trace tests, and direct HDF5 edits to break them one rule at a time.
#include <hdf5.h>

#include <functional>
#include <string>

#include "trace/synthetic.h"
#include "trace/trace_meta.h"
#include "trace/trace_reader.h"
#include "trace/trace_writer.h"

namespace kvsim::test {

// A tiny shape: 2 layers, 4 heads, 2 KV heads, head_dim 8, hidden 16, S = 96
// (context 80, question 8, generated 8), window 16 stored.
inline SynthOptions tiny_options(std::uint64_t seed = 1) {
  SynthOptions o;
  o.num_layers = 2;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.head_dim = 8;
  o.hidden_size = 16;
  o.seq_len = 96;
  o.question_len = 8;
  o.gen_len = 8;
  o.window = 16;
  o.needle_len = 4;
  o.seed = seed;
  return o;
}

inline void write_tiny(const std::string& path, StorageDtype dtype = StorageDtype::float32,
                       const SynthOptions& o = tiny_options()) {
  WriteOptions w;
  w.dtype = dtype;
  write_synthetic_trace(path, o, w);
}

// Opens path with TraceReader and reads every layer (o_proj included); throws what the reader throws.
inline void read_every_layer(const std::string& path) {
  TraceReader r(path);
  for (int l = 0; l < r.meta().num_layers; ++l) {
    LayerRequest req;
    req.o = true;
    r.read_layer(l, req);
  }
}

// Opens path read-write, runs edit(file id), closes.
inline void edit_h5(const std::string& path, const std::function<void(hid_t)>& edit) {
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (f < 0) throw std::runtime_error("edit_h5: cannot open " + path);
  edit(f);
  H5Fclose(f);
}

// Replaces the scalar attribute `name` by one of file type ftype holding *v (memory type mtype).
inline void set_scalar_attr(hid_t obj, const char* name, hid_t ftype, hid_t mtype, const void* v) {
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
  const hid_t s = H5Screate(H5S_SCALAR);
  const hid_t a = H5Acreate2(obj, name, ftype, s, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, mtype, v);
  H5Aclose(a);
  H5Sclose(s);
}

inline void set_int_attr(hid_t obj, const char* name, long long v) {
  set_scalar_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_LLONG, &v);
}

inline void set_double_attr(hid_t obj, const char* name, double v) {
  set_scalar_attr(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}

// Fixed-length ASCII string attribute (as some writers other than h5py produce).
inline void set_fixed_string_attr(hid_t obj, const char* name, const std::string& v) {
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
  const hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, v.size() + 1);
  const hid_t s = H5Screate(H5S_SCALAR);
  const hid_t a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, t, v.c_str());
  H5Aclose(a);
  H5Sclose(s);
  H5Tclose(t);
}

// Replaces dataset `path` by a new one of the given file type, dims and data (memory type mtype).
inline void replace_dataset(hid_t f, const std::string& path, hid_t ftype, const std::vector<hsize_t>& dims,
                            hid_t mtype, const void* data) {
  if (H5Lexists(f, path.c_str(), H5P_DEFAULT) > 0) H5Ldelete(f, path.c_str(), H5P_DEFAULT);
  const hid_t s = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t d = H5Dcreate2(f, path.c_str(), ftype, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (data) H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  H5Dclose(d);
  H5Sclose(s);
}

inline void replace_i64_vector(hid_t f, const std::string& path, const std::vector<long long>& v) {
  replace_dataset(f, path, H5T_STD_I64LE, {v.size()}, H5T_NATIVE_LLONG, v.data());
}

// Writes one float32 value at a flat index of an existing float dataset.
inline void poke_float(hid_t f, const std::string& path, const std::vector<hsize_t>& index, float value) {
  const hid_t d = H5Dopen2(f, path.c_str(), H5P_DEFAULT);
  const hid_t s = H5Dget_space(d);
  std::vector<hsize_t> count(index.size(), 1);
  H5Sselect_hyperslab(s, H5S_SELECT_SET, index.data(), nullptr, count.data(), nullptr);
  const hsize_t one = 1;
  const hid_t m = H5Screate_simple(1, &one, nullptr);
  H5Dwrite(d, H5T_NATIVE_FLOAT, m, s, H5P_DEFAULT, &value);
  H5Sclose(m);
  H5Sclose(s);
  H5Dclose(d);
}

}  // namespace kvsim::test
