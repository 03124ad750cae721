// CoreShare: the thread count offered to OpenMP while other processes keep cores busy.
#include <doctest/doctest.h>
#include <omp.h>

#include "core/core_share.h"

using kvsim::CoreShare;

TEST_CASE("CoreShare::threads_for: busy cores (rounded) are not offered; at least 1, at most the ceiling") {
  CHECK(CoreShare::threads_for(0.0, 2, 2) == 2);
  CHECK(CoreShare::threads_for(0.3, 2, 2) == 2);   // background noise: under half a core
  CHECK(CoreShare::threads_for(0.67, 2, 2) == 1);  // a hog sharing the cores with our 2 threads
  CHECK(CoreShare::threads_for(1.0, 2, 2) == 1);
  CHECK(CoreShare::threads_for(5.0, 2, 2) == 1);
  CHECK(CoreShare::threads_for(-0.1, 2, 2) == 2);  // tick rounding can make "others" slightly negative
  CHECK(CoreShare::threads_for(1.0, 8, 4) == 4);
  CHECK(CoreShare::threads_for(1.0, 8, 0) == 1);
}

TEST_CASE("CoreShare: fixed keeps the ceiling; adaptive stays within [1, ceiling] and restore() resets OpenMP") {
  CoreShare fixed(3, false);
  for (int i = 0; i < 3; ++i) CHECK(fixed.apply() == 3);
  CHECK(omp_get_max_threads() == 3);
  CHECK(fixed.min_used() == 3);
  CHECK(fixed.max_used() == 3);
  CoreShare adaptive(2, true);
  for (int i = 0; i < 3; ++i) {
    const int n = adaptive.apply();
    CHECK(n >= 1);
    CHECK(n <= 2);
    CHECK(omp_get_max_threads() == n);
  }
  CHECK(adaptive.min_used() >= 1);
  CHECK(adaptive.max_used() <= 2);
  adaptive.restore();
  CHECK(omp_get_max_threads() == 2);
}
