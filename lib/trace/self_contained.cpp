#include "trace/self_contained.h"

#include "trace/h5_handles.h"

namespace kvsim {

using h5::Handle;

namespace {

constexpr const char* kSelfContained = " (a trace must be self-contained)";

std::string external_target(hid_t group, const char* name, const H5L_info_t* info) {
  std::string buf(info->u.val_size, '\0');
  const char* file = nullptr;
  const char* object = nullptr;
  unsigned flags = 0;
  if (H5Lget_val(group, name, buf.data(), buf.size(), H5P_DEFAULT) < 0 ||
      H5Lunpack_elink_val(buf.data(), buf.size(), &flags, &file, &object) < 0 || !file || !object)
    return "another file";
  return std::string(file) + ":" + object;
}

std::string dataset_storage(hid_t group, const char* name) {
  Handle d = h5::dataset_handle(H5Dopen2(group, name, H5P_DEFAULT));
  if (!d) return "";  // unreadable datasets are reported by the schema checks, with their field
  Handle dcpl = h5::plist_handle(H5Dget_create_plist(d.id()));
  if (!dcpl) return "";
  if (H5Pget_external_count(dcpl.id()) > 0) return "its raw data is stored in an external file";
  if (H5Pget_layout(dcpl.id()) == H5D_VIRTUAL) return "a virtual dataset (its data comes from other files)";
  return "";
}

herr_t visit(hid_t group, const char* name, const H5L_info_t* info, void* data) {
  auto& found = *static_cast<ForeignStorage*>(data);
  const std::string where = std::string("/") + name;
  if (info->type == H5L_TYPE_EXTERNAL) {
    found = {where, "an external link to " + external_target(group, name, info) + kSelfContained};
    return 1;
  }
  if (info->type != H5L_TYPE_HARD && info->type != H5L_TYPE_SOFT) {
    found = {where, std::string("a user-defined link") + kSelfContained};
    return 1;
  }
  if (info->type == H5L_TYPE_HARD && h5::object_type(group, name) == H5O_TYPE_DATASET) {
    const std::string what = dataset_storage(group, name);
    if (!what.empty()) {
      found = {where, what + kSelfContained};
      return 1;
    }
  }
  return 0;
}

}  // namespace

ForeignStorage foreign_storage(hid_t file) {
  Handle fcpl = h5::plist_handle(H5Fget_create_plist(file));
  hsize_t user_block = 0;
  if (fcpl && H5Pget_userblock(fcpl.id(), &user_block) >= 0 && user_block > 0)
    return {"@userblock", std::to_string(user_block) +
                              " bytes before the HDF5 data (a user block; kvsim and h5py never write one)"};
  ForeignStorage found;
  H5Lvisit(file, H5_INDEX_NAME, H5_ITER_NATIVE, visit, &found);  // hard links only: never leaves the file
  return found;
}

}  // namespace kvsim
