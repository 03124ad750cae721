// A full disk while selection.h5 and a trace are written, inside one process: the writer throws
// one kvsim::Error, removes its partial file and leaves no HDF5 identifier open (an identifier
// whose close failed used to stay registered and crash the library's teardown at exit).
#include <doctest/doctest.h>

#include <hdf5.h>
#include <sys/resource.h>

#include <csignal>
#include <filesystem>

#include "core/error.h"
#include "replay/selection_file.h"
#include "testutil/testutil.h"
#include "trace/synthetic.h"
#include "trace/trace_writer.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

// RLIMIT_FSIZE for the scope, SIGXFSZ ignored: writes past the limit fail with EFBIG.
struct FileSizeLimit {
  rlimit old{};
  void (*old_handler)(int) = nullptr;
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &old);
    old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit lim = old;
    lim.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &lim);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
  }
};

ssize_t open_hdf5_objects() { return H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL); }

Selection big_selection(i64 n_c) {
  Selection s;
  s.units = 8;
  s.n_c = n_c;
  s.kept.assign(static_cast<std::size_t>(s.units * n_c), 1);
  for (std::size_t i = 0; i < s.kept.size(); i += 3) s.kept[i] = 0;
  return s;
}

}  // namespace

TEST_CASE("selection.h5 on a full disk: one error, no partial file, no open HDF5 identifier") {
  TempDir dir("selection-full");
  const std::string path = dir.file("selection.h5");
  const Selection sel = big_selection(1 << 14);
  for (rlim_t limit : {4096ul, 65536ul, 400000ul}) {
    CAPTURE(limit);
    const ssize_t before = open_hdf5_objects();
    bool threw = false;
    {
      FileSizeLimit full(limit);
      try {
        SelectionFile f(path);
        for (int layer = 0; layer < 8; ++layer) f.write(0, 0, layer, sel, "random(seed=0)", "0.5", 8);
        f.finish();
        f.commit();
      } catch (const Error& e) {
        threw = true;
        CHECK(std::string(e.what()).find("write failed") != std::string::npos);
      }
    }
    CHECK(threw);
    CHECK(open_hdf5_objects() == before);
    CHECK(partial_files(path).empty());
    CHECK(!std::filesystem::exists(path));
  }
  SelectionFile ok(path);  // the library is usable afterwards
  ok.write(0, 0, 0, big_selection(64), "random(seed=0)", "0.5", 8);
  ok.finish();
  ok.commit();
  CHECK(std::filesystem::exists(path));
}

TEST_CASE("a trace on a full disk: one error, no partial file, no open HDF5 identifier") {
  TempDir dir("trace-full");
  const SynthOptions o = small_shape(4, 1024);
  const std::string path = dir.file("t.h5");
  const ssize_t before = open_hdf5_objects();
  {
    FileSizeLimit full(100000);
    CHECK_THROWS_AS(write_synthetic_trace(path, o, WriteOptions{}), Error);
  }
  CHECK(open_hdf5_objects() == before);
  CHECK(partial_files(path).empty());
  CHECK(!std::filesystem::exists(path));
}
