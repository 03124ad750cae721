// external(...): selections stored in HDF5 (trace/stored_selection.h) replayed as a rule.
#include <doctest/doctest.h>
#include <hdf5.h>

#include <filesystem>

#include "core/error.h"
#include "rules/factory.h"
#include "rules/scored_rule.h"
#include "rules_reference.h"
#include "testutil/testutil.h"
#include "trace/stored_selection.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

void attr_str(hid_t obj, const char* name, const std::string& v) {
  const hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  const hid_t sp = H5Screate(H5S_SCALAR);
  const hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
  const char* p = v.c_str();
  H5Awrite(a, t, &p);
  H5Aclose(a);
  H5Sclose(sp);
  H5Tclose(t);
}

void dataset(hid_t loc, const std::string& path, hid_t ftype, hid_t mtype, std::vector<hsize_t> dims, const void* data) {
  const hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  const hid_t sp = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t d = H5Dcreate2(loc, path.c_str(), ftype, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  H5Dclose(d);
  H5Sclose(sp);
  H5Pclose(lcpl);
}

// /selections/<name> with kind, mode, n_c attributes.
hid_t selection_group(hid_t f, const std::string& name, const char* kind, i64 n_c) {
  const hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  const hid_t g = H5Gcreate2(f, ("/selections/" + name).c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT);
  H5Pclose(lcpl);
  attr_str(g, "kind", kind);
  attr_str(g, "mode", "kv");
  attr_str(g, "source", "test");
  const hid_t sp = H5Screate(H5S_SCALAR);
  const hid_t a = H5Acreate2(g, "n_c", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_INT64, &n_c);
  H5Aclose(a);
  H5Sclose(sp);
  return g;
}

}  // namespace

TEST_CASE("external: stored kept masks and stored scores replay like the rules that made them") {
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";
  auto L = trace_test_layer(trace, 2);
  const RuleInput in = L->input();
  const int U = L->data.num_kv_heads;
  const std::vector<Budget> bs = {Budget::parse("cr=0.5"), Budget::parse("0.2")};
  // What kvsim's snapkv keeps, and its scores, written the way any other tool would.
  const auto snap = make_rule("snapkv(window=16,kernel=5,pool=avg)");
  const auto want = snap->select(in, bs);
  const auto scores = dynamic_cast<const ScoredRule&>(*snap).scores(in);
  TempDir tmp("external");
  const std::string file = tmp.file("sel.h5");
  const hid_t f = H5Fcreate(file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  const hid_t g = selection_group(f, "mine", "kept", L->n_c);
  for (std::size_t b = 0; b < bs.size(); ++b)
    dataset(g, bs[b].text + "/layers/2/kept", H5T_STD_U8LE, H5T_NATIVE_UINT8, {hsize_t(U), hsize_t(L->n_c)},
            want[b].kept.data());
  H5Gclose(g);
  const hid_t s = selection_group(f, "myscores", "scores", L->n_c);
  dataset(s, "layers/2/scores", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {hsize_t(U), hsize_t(L->n_c)}, scores.score.data());
  dataset(s, "layers/2/protect", H5T_STD_U8LE, H5T_NATIVE_UINT8, {hsize_t(L->n_c)}, scores.protect.data());
  H5Gclose(s);
  H5Fclose(f);

  CHECK(stored_selection_names(file) == std::vector<std::string>{"mine", "myscores"});
  const auto kept = make_rule("external(name=mine,file=" + file + ")")->select(in, bs);
  const auto ranked = make_rule("external(name=myscores,file=" + file + ",kind=scores)")->select(in, bs);
  for (std::size_t b = 0; b < bs.size(); ++b) {
    CHECK(kept[b].kept == want[b].kept);
    CHECK(ranked[b].kept == want[b].kept);
  }
  // Stored scores can be wrapped like kvsim's own (Ada-KV over them equals Ada-KV over snapkv).
  CHECK(make_rule("ada(external(name=myscores,file=" + file + ",kind=scores))")->select(in, bs)[0].kept ==
        make_rule("ada(snapkv(window=16,kernel=5,pool=avg))")->select(in, bs)[0].kept);

  auto err = [&](const std::string& spec, const std::vector<Budget>& b) {
    try {
      make_rule(spec)->select(in, b);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(err("external(name=mine,file=" + file + ")", {Budget::parse("0.3")}).find(
            "no stored selection for budget '0.3' (stored: 0.2, cr=0.5)") != std::string::npos);
  CHECK(err("external(name=other,file=" + file + ")", bs).find("no such stored selection (stored: mine, myscores)") !=
        std::string::npos);
  CHECK(err("external(name=mine,file=" + tmp.file("missing.h5") + ")", bs).find("no such file") != std::string::npos);
  CHECK_THROWS_AS(make_rule("external"), Error);  // name is required
  RuleInput other = in;
  other.n_c = in.n_c - 1;
  CHECK(err("external(name=mine,file=" + file + ")", bs).empty());
  try {
    make_rule("external(name=mine,file=" + file + ")")->select(other, bs);
    CHECK(false);
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("use the same --compression-point") != std::string::npos);
  }
}
