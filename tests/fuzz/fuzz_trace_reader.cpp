// Fuzz target over the trace reader and validator: the input bytes are a trace file. libFuzzer
// (clang -fsanitize=fuzzer, KVSIM_FUZZ=ON) drives it; without libFuzzer the same entry point is
// linked with fuzz_driver.cpp into fuzz_trace_reader_replay, which runs it over corpus files
// (tests/fuzz/README.md). Every input must end in a result or a kvsim::Error: never a crash, a
// hang or an unbounded allocation.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <hdf5.h>

#include "core/error.h"
#include "trace/trace_reader.h"
#include "trace/trace_validator.h"

namespace {

const std::string& scratch_path() {
  static const std::string path = [] {
    const char* dir = std::getenv("TMPDIR");
    std::string p = std::string(dir && *dir ? dir : "/tmp") + "/kvsim-fuzz-" + std::to_string(getpid()) + ".h5";
    return p;
  }();
  return path;
}

// HDF5 identifiers of the kinds the reader opens that are alive now. Every input must leave
// none behind: a leaked identifier of a corrupt file is what HDF5's atexit teardown once
// crashed on after 315K inputs (tests/fuzz/README.md).
std::string open_identifiers() {
  static const std::pair<H5I_type_t, const char*> kinds[] = {
      {H5I_FILE, "file"},         {H5I_GROUP, "group"}, {H5I_DATASET, "dataset"},
      {H5I_ATTR, "attribute"},    {H5I_DATASPACE, "dataspace"}, {H5I_DATATYPE, "datatype"}};
  std::string out;
  for (const auto& [type, name] : kinds) {
    hsize_t n = 0;
    if (H5Inmembers(type, &n) >= 0 && n > 0) out += " " + std::to_string(n) + " " + name;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& path = scratch_path();
  if (std::FILE* f = std::fopen(path.c_str(), "wb")) {
    if (size) std::fwrite(data, 1, size, f);
    std::fclose(f);
  } else {
    return 0;
  }
  kvsim::ValidateOptions opt;
  (void)kvsim::validate_trace(path, opt);
  try {
    kvsim::TraceReader reader(path);
    kvsim::LayerRequest all;
    all.o = true;
    for (int l = 0; l < reader.meta().num_layers; ++l) (void)reader.read_layer(l, all);
  } catch (const kvsim::Error&) {
  } catch (const std::bad_alloc&) {
  }
  unlink(path.c_str());
  // The baseline is taken after the first input: HDF5 keeps a few datatypes of its own (and
  // kvsim its float16 type) alive for the whole process.
  static const std::string baseline = open_identifiers();
  if (const std::string now = open_identifiers(); now != baseline) {
    std::fprintf(stderr, "kvsim fuzz: HDF5 identifiers left open by this input:%s (baseline:%s)\n", now.c_str(),
                 baseline.c_str());
    std::abort();
  }
  return 0;
}
