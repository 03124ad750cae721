#include "replay/selection_file.h"

#include <mutex>

#include "core/error.h"
#include "core/output_path.h"
#include "trace/h5_handles.h"
#include "trace/h5_output_driver.h"

namespace kvsim {

using h5::Handle;

struct SelectionFile::Impl {
  std::string path, partial;
  h5::OutputStatus status;  // before file: the driver writes into it until the file closes
  Handle file;
  bool finished = false, committed = false;

  // Throws for a failed HDF5 call or a recorded I/O error, naming the field.
  void check(bool ok, const std::string& field) const {
    if (!status.ok()) fail(path, field, status.message());
    if (!ok) fail(path, field, "HDF5 write failed");
  }
  // Opens or creates every group along `name` ("/a/b/c").
  Handle group(const std::string& name) {
    Handle g = h5::group_handle(H5Gopen2(file.id(), "/", H5P_DEFAULT));
    std::size_t start = 1;
    while (start <= name.size()) {
      std::size_t end = name.find('/', start);
      if (end == std::string::npos) end = name.size();
      const std::string part = name.substr(start, end - start);
      Handle next = h5::group_handle(H5Lexists(g.id(), part.c_str(), H5P_DEFAULT) > 0
                                         ? H5Gopen2(g.id(), part.c_str(), H5P_DEFAULT)
                                         : H5Gcreate2(g.id(), part.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
      check(next.valid(), name);
      g = std::move(next);
      start = end + 1;
    }
    return g;
  }
  // Variable-length UTF-8, so h5py reads str, not bytes.
  void string_attr(hid_t obj, const char* name, const std::string& value) {
    Handle type = h5::type_handle(H5Tcopy(H5T_C_S1));
    H5Tset_size(type.id(), H5T_VARIABLE);
    H5Tset_cset(type.id(), H5T_CSET_UTF8);
    Handle space = h5::space_handle(H5Screate(H5S_SCALAR));
    Handle attr = h5::attr_handle(H5Acreate2(obj, name, type.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT));
    const char* ptr = value.c_str();
    check(attr.valid() && H5Awrite(attr.id(), type.id(), &ptr) >= 0, std::string("attribute ") + name);
  }
  void dataset(hid_t g, const std::string& field, const char* name, hsize_t rows, hsize_t cols,
               const std::uint8_t* data, const Selection* attrs_of, const std::string& rule, const std::string& budget) {
    const hsize_t dims[2] = {rows, cols};
    Handle space = h5::space_handle(H5Screate_simple(2, dims, nullptr));
    Handle ds = h5::dataset_handle(H5Dcreate2(g, name, H5T_STD_U8LE, space.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    check(ds.valid(), field);
    if (rows * cols > 0)
      check(H5Dwrite(ds.id(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0, field);
    if (attrs_of) {
      string_attr(ds.id(), "rule", rule);
      string_attr(ds.id(), "budget", budget);
      string_attr(ds.id(), "mode", attrs_of->mode == GqaMode::kv ? "kv" : "query");
    }
  }
};

SelectionFile::SelectionFile(std::string path) : impl_(std::make_unique<Impl>()) {
  std::lock_guard lock(h5::library_mutex());
  h5::silence_errors();
  Impl& m = *impl_;
  m.path = std::move(path);
  check_output_target(m.path);
  m.partial = create_partial_file(m.path);
  Handle fapl = h5::plist_handle(h5::output_file_access(&m.status));
  m.file = h5::file_handle(H5Fcreate(m.partial.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id()));
  if (!m.file) {
    discard_partial_file(m.partial);
    fail(m.path, "", "cannot create");
  }
}

SelectionFile::~SelectionFile() {
  std::lock_guard lock(h5::library_mutex());
  impl_->file.reset();
  if (!impl_->committed) discard_partial_file(impl_->partial);
}

void SelectionFile::write(int rule_index, int budget_index, int layer, const Selection& sel,
                          const std::string& rule_spec, const std::string& budget_text, int num_kv_heads) {
  std::lock_guard lock(h5::library_mutex());
  Impl& m = *impl_;
  if (m.finished) fail(m.path, "", "write after finish()");
  const std::string gname = "/" + std::to_string(rule_index) + "/" + std::to_string(budget_index) + "/layers/" +
                            std::to_string(layer);
  Handle g = m.group(gname);
  m.dataset(g.id(), gname + "/kept", "kept", static_cast<hsize_t>(sel.units), static_cast<hsize_t>(sel.n_c),
            sel.kept.data(), &sel, rule_spec, budget_text);
  if (!sel.key_channels.empty() && num_kv_heads > 0)  // ThinK: the key channels each KV head keeps
    m.dataset(g.id(), gname + "/key_channels", "key_channels", static_cast<hsize_t>(num_kv_heads),
              sel.key_channels.size() / num_kv_heads, sel.key_channels.data(), nullptr, "", "");
}

void SelectionFile::finish() {
  std::lock_guard lock(h5::library_mutex());
  Impl& m = *impl_;
  if (m.finished) return;
  m.check(H5Fflush(m.file.id(), H5F_SCOPE_GLOBAL) >= 0, "");
  const bool closed = H5Fclose(m.file.release()) >= 0;
  m.check(closed, "");
  m.finished = true;
}

void SelectionFile::commit() {
  finish();
  commit_partial_file(impl_->partial, impl_->path);
  impl_->committed = true;
}

}  // namespace kvsim
