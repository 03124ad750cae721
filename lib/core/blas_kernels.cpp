#include "core/blas_kernels.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

extern "C" {
char* openblas_get_corename(void);
char* openblas_get_config(void);
int openblas_get_parallel(void);
}

namespace kvsim {

namespace {

// Set for the re-executed process only: the core OpenBLAS had picked before kvsim corrected it.
// Read once and removed (with OPENBLAS_CORETYPE), so programs kvsim starts decide for themselves.
constexpr const char* kCorrectedFrom = "KVSIM_BLAS_CORRECTED_FROM";
std::string g_corrected_from;
std::string g_noted_chooser;  // note_blas_choice

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

int blas_core_level(const std::string& core) {
  const std::string c = lower(core);
  for (const char* k : {"skylakex", "cooperlake", "sapphirerapids"})
    if (c == k) return 3;
  for (const char* k : {"haswell", "zen", "skylake"})  // skylake (client) has AVX2 kernels
    if (c == k) return 2;
  for (const char* k : {"sandybridge", "bulldozer", "piledriver", "steamroller", "excavator"})
    if (c == k) return 1;
  return 0;  // prescott, core2, penryn, dunnington, nehalem, atom, generic, unknown names
}

std::string cpu_blas_coretype() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return "";
}

BlasInfo blas_info() {
  BlasInfo b;
  b.config = openblas_get_config();
  b.core = openblas_get_corename();
  const int p = openblas_get_parallel();
  b.threading = p == 0 ? "sequential" : p == 1 ? "pthreads" : "openmp";
  const std::string forced = env("KVSIM_BLAS_CORETYPE");
  if (!g_noted_chooser.empty()) {
    b.chosen_by = g_noted_chooser;
  } else if (!forced.empty() && lower(forced) != "native") {
    b.chosen_by = "KVSIM_BLAS_CORETYPE";
    b.corrected_from = g_corrected_from;
  } else if (!g_corrected_from.empty()) {
    b.chosen_by = "kvsim";
    b.corrected_from = g_corrected_from;
  } else if (!env("OPENBLAS_CORETYPE").empty()) {
    b.chosen_by = "OPENBLAS_CORETYPE";
  } else {
    b.chosen_by = "OpenBLAS";
  }
  return b;
}

void note_blas_choice(const std::string& chosen_by) { g_noted_chooser = chosen_by; }

Json blas_json(const BlasInfo& b) {
  // openblas_get_config() starts "OpenBLAS 0.3.21 ...": the version is its second word.
  std::string version;
  if (b.config.rfind("OpenBLAS ", 0) == 0) version = b.config.substr(9, b.config.find(' ', 9) - 9);
  Json j{{"name", b.name}, {"version", version}, {"config", b.config}, {"core", b.core}, {"threading", b.threading},
         {"chosen_by", b.chosen_by}};
  if (!b.corrected_from.empty()) j["corrected_from"] = b.corrected_from;
  return j;
}

void use_cpu_blas_kernels(char** argv) {
  if (!env(kCorrectedFrom).empty()) {  // this is the re-executed process
    g_corrected_from = env(kCorrectedFrom);
    unsetenv(kCorrectedFrom);
    unsetenv("OPENBLAS_CORETYPE");  // read by OpenBLAS at load time already
    return;
  }
  const std::string forced = env("KVSIM_BLAS_CORETYPE");
  if (lower(forced) == "native") return;
  std::string want;
  if (!forced.empty()) {
    if (lower(forced) == lower(openblas_get_corename())) return;
    want = forced;
  } else {
    if (!env("OPENBLAS_CORETYPE").empty()) return;  // the user's choice
    want = cpu_blas_coretype();
    if (want.empty() || blas_core_level(openblas_get_corename()) >= blas_core_level(want)) return;
  }
  setenv("OPENBLAS_CORETYPE", want.c_str(), 1);
  setenv(kCorrectedFrom, openblas_get_corename(), 1);
  // The binary's own path, not /proc/self/exe: exec'ing the link would rename the process
  // "exe" in ps, top and /proc/PID/comm.
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    execv(self, argv);
  }
  // exec failed (no /proc): run on with the kernels OpenBLAS chose; blas_info() says which.
  unsetenv(kCorrectedFrom);
}

}  // namespace kvsim
