#pragma once
// The closed loop's tables (written by kvsim.closed_loop, read by kvsim report), declared once:
// the Python writer takes its column order from here (kvsim._kvsim.output_tables()) and refuses
// to write a column that is not declared.
#include "core/columns.h"

namespace kvsim::report {

const TableSchema& closed_loop_schema();         // closed_loop.csv
const TableSchema& offline_vs_closed_schema();   // offline_vs_closed.csv

}  // namespace kvsim::report
