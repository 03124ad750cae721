#include "trace/stored_selection.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "trace/h5_handles.h"

namespace kvsim {

using h5::Handle;

struct StoredSelection::Impl {
  Handle file, group;
};

namespace {

Handle open_file(const std::string& path) {
  h5::silence_errors();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail(path, "", "no such file (stored selections)");
  Handle f = h5::open_untrusted_file(path);
  if (!f) fail(path, "", "cannot open as HDF5 (truncated or corrupt file)");
  return f;
}

std::string string_attr(hid_t obj, const char* name, const std::string& path, const std::string& field,
                        bool required) {
  if (H5Aexists(obj, name) <= 0) {
    if (required) fail(path, field + "@" + name, "missing required attribute");
    return "";
  }
  Handle a = h5::attr_handle(H5Aopen(obj, name, H5P_DEFAULT));
  auto s = a ? h5::read_string_attr(a.id()) : std::nullopt;
  if (!s) fail(path, field + "@" + name, "must be a string");
  return *s;
}

// A 1-D or 2-D dataset of the expected shape, read into out with the given memory type.
template <typename T>
void read_dataset(hid_t group, const std::string& rel, const std::vector<i64>& want, hid_t mem_type,
                  const std::string& path, const std::string& field, std::vector<T>& out) {
  if (!h5::path_exists(group, rel)) fail(path, field, "missing dataset");
  Handle d = h5::dataset_handle(H5Dopen2(group, rel.c_str(), H5P_DEFAULT));
  auto dims = d ? h5::dataset_dims(d.id()) : std::nullopt;
  if (!dims || *dims != want) {
    std::string w = "[";
    for (std::size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + std::to_string(want[i]);
    fail(path, field, "shape must be " + w + "]");
  }
  i64 n = 1;
  for (i64 x : want) n *= x;
  out.resize(static_cast<std::size_t>(n));
  if (n > 0 && H5Dread(d.id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    fail(path, field, "cannot be read (corrupt data)");
}

}  // namespace

StoredSelection::StoredSelection(const std::string& path, const std::string& name)
    : impl_(std::make_unique<Impl>()) {
  std::lock_guard lock(h5::library_mutex());
  info_.path = path;
  info_.name = name;
  impl_->file = open_file(path);
  const std::string field = "/selections/" + name;
  if (name.empty() || name.find('/') != std::string::npos || !h5::path_exists(impl_->file.id(), field.substr(1))) {
    const auto names = stored_selection_names(path);
    std::string have;
    for (const auto& n : names) have += (have.empty() ? "" : ", ") + n;
    fail(path, field, "no such stored selection (stored: " + (have.empty() ? std::string("none") : have) + ")");
  }
  impl_->group = h5::group_handle(H5Gopen2(impl_->file.id(), field.c_str(), H5P_DEFAULT));
  if (!impl_->group) fail(path, field, "must be a group");
  const hid_t g = impl_->group.id();
  info_.kind = string_attr(g, "kind", path, field, true);
  info_.mode = string_attr(g, "mode", path, field, true);
  info_.source = string_attr(g, "source", path, field, false);
  if (info_.kind != "kept" && info_.kind != "scores") fail(path, field + "@kind", "must be \"kept\" or \"scores\"");
  if (info_.mode != "kv" && info_.mode != "query") fail(path, field + "@mode", "must be \"kv\" or \"query\"");
  if (H5Aexists(g, "n_c") <= 0) fail(path, field + "@n_c", "missing required attribute");
  Handle a = h5::attr_handle(H5Aopen(g, "n_c", H5P_DEFAULT));
  std::int64_t nc = -1;
  if (!a || H5Aread(a.id(), H5T_NATIVE_INT64, &nc) < 0 || nc < 1) fail(path, field + "@n_c", "must be a positive integer");
  info_.n_c = nc;
  if (info_.kind == "kept")
    for (const auto& b : h5::member_names(g))
      if (b != "layers") info_.budgets.push_back(b);
}

StoredSelection::~StoredSelection() {
  std::lock_guard lock(h5::library_mutex());
  impl_.reset();
}

std::vector<std::uint8_t> StoredSelection::kept(const std::string& budget, int layer, int units) const {
  std::lock_guard lock(h5::library_mutex());
  const std::string rel = budget + "/layers/" + std::to_string(layer) + "/kept";
  const std::string field = "/selections/" + info_.name + "/" + rel;
  if (std::find(info_.budgets.begin(), info_.budgets.end(), budget) == info_.budgets.end()) {
    std::string have;
    for (const auto& b : info_.budgets) have += (have.empty() ? "" : ", ") + b;
    fail(info_.path, "/selections/" + info_.name,
         "no stored selection for budget '" + budget + "' (stored: " + (have.empty() ? "none" : have) + ")");
  }
  std::vector<std::uint8_t> m;
  read_dataset(impl_->group.id(), rel, {units, info_.n_c}, H5T_NATIVE_UINT8, info_.path, field, m);
  for (std::size_t i = 0; i < m.size(); ++i)
    if (m[i] > 1) fail(info_.path, field, "values must be 0 or 1, found " + std::to_string(m[i]));
  return m;
}

std::vector<std::uint8_t> StoredSelection::key_channels(const std::string& budget, int layer, int num_kv_heads,
                                                        int head_dim) const {
  std::lock_guard lock(h5::library_mutex());
  const std::string rel = budget + "/layers/" + std::to_string(layer) + "/key_channels";
  std::vector<std::uint8_t> m;
  if (!h5::path_exists(impl_->group.id(), rel)) return m;
  const std::string field = "/selections/" + info_.name + "/" + rel;
  read_dataset(impl_->group.id(), rel, {num_kv_heads, head_dim}, H5T_NATIVE_UINT8, info_.path, field, m);
  for (auto v : m)
    if (v > 1) fail(info_.path, field, "values must be 0 or 1");
  return m;
}

std::vector<float> StoredSelection::scores(int layer, int units) const {
  std::lock_guard lock(h5::library_mutex());
  const std::string rel = "layers/" + std::to_string(layer) + "/scores";
  const std::string field = "/selections/" + info_.name + "/" + rel;
  std::vector<float> s;
  read_dataset(impl_->group.id(), rel, {units, info_.n_c}, H5T_NATIVE_FLOAT, info_.path, field, s);
  const auto bad = std::find_if(s.begin(), s.end(), [](float x) { return std::isnan(x); });
  if (bad != s.end())
    fail(info_.path, field, "NaN score at flat index " + std::to_string(bad - s.begin()) + " (use -inf to evict)");
  return s;
}

std::vector<std::uint8_t> StoredSelection::protect(int layer) const {
  std::lock_guard lock(h5::library_mutex());
  const std::string rel = "layers/" + std::to_string(layer) + "/protect";
  std::vector<std::uint8_t> p(static_cast<std::size_t>(info_.n_c), 0);
  if (h5::path_exists(impl_->group.id(), rel))
    read_dataset(impl_->group.id(), rel, {info_.n_c}, H5T_NATIVE_UINT8, info_.path,
                 "/selections/" + info_.name + "/" + rel, p);
  return p;
}

std::vector<std::string> stored_selection_names(const std::string& path) {
  std::lock_guard lock(h5::library_mutex());
  Handle f = open_file(path);
  if (!h5::path_exists(f.id(), "selections")) return {};
  Handle g = h5::group_handle(H5Gopen2(f.id(), "selections", H5P_DEFAULT));
  return g ? h5::member_names(g.id()) : std::vector<std::string>{};
}

}  // namespace kvsim
