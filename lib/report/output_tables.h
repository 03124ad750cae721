#pragma once
// Every declared output table (kvsim columns, docs/outputs.md, the Python API's DataFrames).
#include <vector>

#include "core/columns.h"

namespace kvsim::report {

std::vector<const TableSchema*> output_tables();

}  // namespace kvsim::report
