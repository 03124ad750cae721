#include "core/sysinfo.h"

#include <cstdio>
#include <cstdlib>
#include <ctime>

#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/error.h"

namespace kvsim {

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

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

int online_cores() {
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

void set_thread_count(long long requested, const std::string& option) {
  const long long limit = 4LL * online_cores();
  const auto too_many = [&](const std::string& what, long long n) {
    fail(what, "", std::to_string(n) + " threads: at most " + std::to_string(limit) + " (4 x " +
                       std::to_string(online_cores()) + " cores) are allowed");
  };
  if (requested < 0) fail(option, "", std::to_string(requested) + ": must be >= 0 (0 = all cores)");
  if (requested > limit) too_many(option, requested);
  if (requested == 0) {
    if (const char* env = std::getenv("OMP_NUM_THREADS"); env && *env) {
      const long long n = std::atoll(env);  // libgomp takes the first number of a list
      if (n > limit) too_many("OMP_NUM_THREADS", n);
    }
    return;
  }
  omp_set_num_threads(static_cast<int>(requested));
}

std::string iso_timestamp() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

}  // namespace kvsim
