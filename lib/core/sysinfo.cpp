#include "core/sysinfo.h"

#include <cstdio>
#include <ctime>

#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

namespace kvsim {

std::int64_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<std::int64_t>(ru.ru_maxrss) * 1024;
}

std::int64_t current_rss_bytes() {
  long pages_total = 0, pages_resident = 0;
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  const int n = std::fscanf(f, "%ld %ld", &pages_total, &pages_resident);
  std::fclose(f);
  return n == 2 ? static_cast<std::int64_t>(pages_resident) * sysconf(_SC_PAGESIZE) : 0;
}

int max_threads() { return omp_get_max_threads(); }

std::string iso_timestamp() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

}  // namespace kvsim
