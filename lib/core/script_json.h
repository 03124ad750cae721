#pragma once
// Runs a helper script through the shell and reads its result: the bench scripts
// (tools/bench_numpy.py, tools/bench_torch.py) print one JSON object as their last line.
#include <string>

#include "core/json.h"

namespace kvsim {

struct ScriptJson {
  Json json;          // the last line's object; null when the script failed
  std::string error;  // non-empty when it failed: what it printed (first 300 characters)
};
// `cmd` runs with stderr merged into stdout; `required_key` must be in the object.
ScriptJson run_json_script(const std::string& cmd, const std::string& name, const std::string& required_key);

}  // namespace kvsim
