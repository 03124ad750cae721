#include "core/script_json.h"

#include <cstdio>

#include "core/error.h"

namespace kvsim {

ScriptJson run_json_script(const std::string& cmd, const std::string& name, const std::string& required_key) {
  ScriptJson r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) {
    r.error = "cannot start " + name;
    return r;
  }
  std::string out;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int status = pclose(p);
  const auto last = out.find_last_not_of('\n');
  const std::string line = last == std::string::npos ? "" : out.substr(out.rfind('\n', last) + 1);
  try {
    r.json = parse_json(line, name + " output");
  } catch (const Error&) {
    r.json = Json();
  }
  if (status != 0 || !r.json.is_object() || !r.json.contains(required_key)) {
    r.json = Json();
    r.error = name + " failed: " + out.substr(0, 300);
  }
  return r;
}

}  // namespace kvsim
