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
  return 0;
}
