// Per-trace folder names of a sweep: unique by construction, never one of the sweep's own outputs.
#include <doctest/doctest.h>

#include <set>

#include "sweep/sweep_plan.h"

using kvsim::sweep_labels;

TEST_CASE("sweep labels: duplicates get -2, -3 past every other trace's own stem") {
  CHECK(sweep_labels({"a/niah.h5", "b/niah-2.h5", "c/niah.h5"}) ==
        std::vector<std::string>{"niah", "niah-2", "niah-3"});
  CHECK(sweep_labels({"a/niah.h5", "c/niah.h5", "b/niah-2.h5"}) ==
        std::vector<std::string>{"niah", "niah-3", "niah-2"});
  CHECK(sweep_labels({"x/t.h5", "y/t.h5", "z/t.h5", "t-2.h5", "t-3.h5"}) ==
        std::vector<std::string>{"t", "t-4", "t-5", "t-2", "t-3"});
  CHECK(sweep_labels({"a b/my trace.h5"}) == std::vector<std::string>{"my_trace"});
}

TEST_CASE("sweep labels: the sweep's own names, hidden and partial names are never labels") {
  const auto labels = sweep_labels({"sweep_metrics.csv.h5", "sweep.json.h5", "nu-cache.h5", "units.h5", ".h5",
                                    ".hidden.h5", "x.partial.h5", "trace_units.h5"});
  CHECK(labels == std::vector<std::string>{"trace_sweep_metrics.csv", "trace_sweep.json", "trace_nu-cache",
                                           "trace_units", "trace_.h5", "trace_.hidden", "trace", "trace_units-2"});
  for (const auto& l : labels) CHECK(!kvsim::is_reserved_label(l));
  CHECK(std::set<std::string>(labels.begin(), labels.end()).size() == labels.size());
}
