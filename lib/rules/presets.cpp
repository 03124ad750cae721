#include "rules/presets.h"

#include <cctype>

#include "core/error.h"

namespace kvsim {

const std::vector<Preset>& kvpress_presets() {
  // kvpress 0.5.5's defaults: SnapKVPress(window_size=64, kernel_size=5) pools with avg_pool1d;
  // AdaKVPress(alpha_safeguard=0.2) counts the window inside the floor; PyramidKVPress keeps the
  // float schedule; StreamingLLMPress(n_sink=4); ChunkKVPress(chunk_length=20).
  static const std::vector<Preset> p = {
      {"snapkv@kvpress", "snapkv(window=64,kernel=5,pool=avg)", "SnapKVPress()"},
      {"tova@kvpress", "tova", "TOVAPress()"},
      {"knorm@kvpress", "knorm", "KnormPress()"},
      {"keydiff@kvpress", "keydiff(block=0)", "KeyDiffPress()"},
      {"streaming@kvpress", "streaming(sink=4)", "StreamingLLMPress()"},
      {"h2o@kvpress", "h2o(variant=kvpress)", "ObservedAttentionPress()"},
      {"pyramid@kvpress", "pyramid(snapkv(window=64,kernel=5,pool=avg),variant=float)", "PyramidKVPress()"},
      {"ada@kvpress", "ada(snapkv(window=64,kernel=5,pool=avg),window_in_floor=true)",
       "AdaKVPress(press=SnapKVPress())"},
      {"critical@kvpress", "critical(snapkv(window=64,kernel=5,pool=avg))", "CriticalKVPress(press=SnapKVPress())"},
      {"criticalada@kvpress", "critical(ada(snapkv(window=64,kernel=5,pool=avg),window_in_floor=true))",
       "CriticalAdaKVPress(press=SnapKVPress())"},
      {"chunkkv@kvpress", "chunkkv(snapkv(window=64,kernel=5,pool=avg),len=20)", "ChunkKVPress(press=SnapKVPress())"},
      {"expected@kvpress", "expected(space=linear)", "ExpectedAttentionPress()"},
  };
  return p;
}

std::string expand_presets(const std::string& text) {
  std::string out;
  std::size_t i = 0;
  while (i < text.size()) {
    const std::size_t at = text.find('@', i);
    if (at == std::string::npos) break;
    std::size_t a = at, b = at + 1;  // the word before and after '@'
    while (a > i && (std::isalnum(static_cast<unsigned char>(text[a - 1])) || text[a - 1] == '_')) --a;
    while (b < text.size() && (std::isalnum(static_cast<unsigned char>(text[b])) || text[b] == '_')) ++b;
    const std::string word = text.substr(a, b - a);
    const Preset* found = nullptr;
    for (const Preset& p : kvpress_presets())
      if (p.name == word) found = &p;
    if (!found) {
      std::string known;
      for (const Preset& p : kvpress_presets()) known += (known.empty() ? "" : ", ") + std::string(p.name);
      throw Error("rule spec '" + text + "': unknown preset '" + word + "' (presets: " + known + ")");
    }
    out += text.substr(i, a - i) + std::string(found->spec);
    i = b;
  }
  return out + text.substr(i);
}

}  // namespace kvsim
