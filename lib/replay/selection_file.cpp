#include "replay/selection_file.h"

#include <filesystem>

#include <hdf5.h>

#include "core/error.h"
#include "core/output_path.h"

namespace kvsim {

struct SelectionFile::Impl {
  std::string path, tmp;
  hid_t file = -1;
  bool committed = false;

  void check(herr_t st, const std::string& what) {
    if (st < 0) fail(path, what, "HDF5 write failed");
  }
  // Opens or creates every group along `name` ("/a/b/c").
  hid_t group(const std::string& name) {
    std::string cur;
    std::size_t start = 1;
    hid_t g = H5Gopen2(file, "/", H5P_DEFAULT);
    while (start <= name.size()) {
      std::size_t end = name.find('/', start);
      if (end == std::string::npos) end = name.size();
      const std::string part = name.substr(start, end - start);
      const hid_t next = H5Lexists(g, part.c_str(), H5P_DEFAULT) > 0 ? H5Gopen2(g, part.c_str(), H5P_DEFAULT)
                                                                   : H5Gcreate2(g, part.c_str(), H5P_DEFAULT,
                                                                                H5P_DEFAULT, H5P_DEFAULT);
      H5Gclose(g);
      if (next < 0) fail(path, name, "cannot create group");
      g = next;
      start = end + 1;
    }
    return g;
  }
  void string_attr(hid_t obj, const char* name, const std::string& value) {
    // Variable-length UTF-8, so h5py reads str, not bytes.
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    const char* ptr = value.c_str();
    const herr_t st = attr < 0 ? -1 : H5Awrite(attr, type, &ptr);
    if (attr >= 0) H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
    check(st, std::string("attribute ") + name);
  }
};

SelectionFile::SelectionFile(std::string path) : impl_(std::make_unique<Impl>()) {
  impl_->path = std::move(path);
  impl_->tmp = impl_->path + ".partial";
  check_output_target(impl_->path);
  register_partial_file(impl_->tmp);
  impl_->file = H5Fcreate(impl_->tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (impl_->file < 0) {
    unregister_partial_file(impl_->tmp);
    fail(impl_->path, "", "cannot create");
  }
}

SelectionFile::~SelectionFile() {
  if (impl_->file >= 0) H5Fclose(impl_->file);
  if (!impl_->committed) {
    std::error_code ec;
    std::filesystem::remove(impl_->tmp, ec);
  }
  unregister_partial_file(impl_->tmp);
}

void SelectionFile::write(int rule_index, int budget_index, int layer, const Selection& sel,
                          const std::string& rule_spec, const std::string& budget_text, int num_kv_heads) {
  Impl& m = *impl_;
  const std::string gname = "/" + std::to_string(rule_index) + "/" + std::to_string(budget_index) + "/layers/" +
                            std::to_string(layer);
  const hid_t g = m.group(gname);
  const hsize_t dims[2] = {static_cast<hsize_t>(sel.units), static_cast<hsize_t>(sel.n_c)};
  const hid_t space = H5Screate_simple(2, dims, nullptr);
  const hid_t ds = H5Dcreate2(g, "kept", H5T_STD_U8LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  herr_t st = ds < 0 ? -1 : 0;
  if (st == 0 && !sel.kept.empty()) st = H5Dwrite(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, sel.kept.data());
  H5Sclose(space);
  if (st >= 0) {
    m.string_attr(ds, "rule", rule_spec);
    m.string_attr(ds, "budget", budget_text);
    m.string_attr(ds, "mode", sel.mode == GqaMode::kv ? "kv" : "query");
  }
  if (ds >= 0) H5Dclose(ds);
  m.check(st, gname + "/kept");
  if (!sel.key_channels.empty() && num_kv_heads > 0) {  // ThinK: the key channels each KV head keeps
    const hsize_t cdims[2] = {static_cast<hsize_t>(num_kv_heads), sel.key_channels.size() / num_kv_heads};
    const hid_t cspace = H5Screate_simple(2, cdims, nullptr);
    const hid_t cds = H5Dcreate2(g, "key_channels", H5T_STD_U8LE, cspace, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const herr_t cst =
        cds < 0 ? -1 : H5Dwrite(cds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, sel.key_channels.data());
    H5Sclose(cspace);
    if (cds >= 0) H5Dclose(cds);
    m.check(cst, gname + "/key_channels");
  }
  H5Gclose(g);
}

void SelectionFile::commit() {
  Impl& m = *impl_;
  if (H5Fclose(m.file) < 0) {
    m.file = -1;
    fail(m.path, "", "HDF5 close failed");
  }
  m.file = -1;
  std::error_code ec;
  std::filesystem::rename(m.tmp, m.path, ec);
  if (ec) fail(m.path, "", "cannot rename from " + m.tmp + ": " + ec.message());
  m.committed = true;
}

}  // namespace kvsim
