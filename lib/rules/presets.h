#pragma once
// kvpress presets: NAME@kvpress is the kvsim spec that keeps exactly what kvpress's press of that
// name keeps with its default arguments (tools/kvpress-parity checks every one against kvpress's
// own code). Declared once here; the spec parser, kvsim rules and the parity tool use the table.
#include <string>
#include <string_view>
#include <vector>

namespace kvsim {

struct Preset {
  std::string_view name;     // "snapkv@kvpress"
  std::string_view spec;     // the kvsim spec it stands for
  std::string_view kvpress;  // the press, as kvpress spells it with its defaults
};
const std::vector<Preset>& kvpress_presets();

// `text` with every NAME@kvpress replaced by its spec ("ada(snapkv@kvpress)" works too). Throws
// kvsim::Error naming an unknown preset and listing the known ones.
std::string expand_presets(const std::string& text);

}  // namespace kvsim
