#include "rules/rope.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <map>

#include "core/error.h"

namespace kvsim {
namespace {

// Flat JSON object -> key -> raw scalar text (strings unquoted). Nested values are kept as
// their raw text; the scaling types kvsim supports only use scalars.
std::map<std::string, std::string> parse_flat_json(const std::string& s, const std::string& where) {
  auto bad = [&](const std::string& what) -> void { fail(where, "rope_scaling", what + " in '" + s + "'"); };
  std::map<std::string, std::string> out;
  std::size_t i = 0;
  auto ws = [&] { while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i; };
  auto str = [&]() -> std::string {
    if (i >= s.size() || s[i] != '"') bad("expected a string");
    std::string v;
    for (++i; i < s.size() && s[i] != '"'; ++i) {
      if (s[i] == '\\' && i + 1 < s.size()) ++i;
      v += s[i];
    }
    if (i >= s.size()) bad("unterminated string");
    ++i;
    return v;
  };
  ws();
  if (i >= s.size() || s[i] != '{') bad("expected a JSON object");
  ++i;
  ws();
  if (i < s.size() && s[i] == '}') return out;
  while (true) {
    ws();
    std::string key = str();
    ws();
    if (i >= s.size() || s[i] != ':') bad("expected ':'");
    ++i;
    ws();
    std::string value;
    if (i < s.size() && s[i] == '"') {
      value = str();
    } else {
      int depth = 0;
      const std::size_t start = i;
      for (; i < s.size(); ++i) {
        const char c = s[i];
        if (c == '[' || c == '{') ++depth;
        else if ((c == ']' || c == '}') && depth > 0) --depth;
        else if ((c == ',' || c == '}') && depth == 0) break;
      }
      value = s.substr(start, i - start);
      while (!value.empty() && std::isspace(static_cast<unsigned char>(value.back()))) value.pop_back();
    }
    out[key] = value;
    ws();
    if (i < s.size() && s[i] == ',') { ++i; continue; }
    if (i < s.size() && s[i] == '}') break;
    bad("expected ',' or '}'");
  }
  return out;
}

double number(const std::map<std::string, std::string>& j, const std::string& key, const std::string& where,
              const std::string& type) {
  auto it = j.find(key);
  if (it == j.end()) fail(where, "rope_scaling", type + " scaling needs '" + key + "'");
  char* end = nullptr;
  const double v = std::strtod(it->second.c_str(), &end);
  if (end == it->second.c_str() || *end != '\0' || !std::isfinite(v))
    fail(where, "rope_scaling", "'" + key + "' is not a number: '" + it->second + "'");
  return v;
}

}  // namespace

Rope::Rope(int head_dim, RopeStyle style, double theta, const std::string& rope_scaling, const std::string& where,
           int rotary_dim)
    : d_(head_dim), r_(rotary_dim > 0 ? rotary_dim : head_dim), style_(style) {
  if (head_dim <= 0 || head_dim % 2 != 0) fail(where, "head_dim", "RoPE needs an even head_dim, got " + std::to_string(head_dim));
  if (r_ % 2 != 0 || r_ > d_) fail(where, "rotary_dim", "must be even and at most head_dim, got " + std::to_string(r_));
  if (!(theta > 0)) fail(where, "rope_theta", "must be positive");
  std::vector<double> inv(static_cast<std::size_t>(r_ / 2));
  for (int i = 0; i < r_ / 2; ++i) inv[i] = 1.0 / std::pow(theta, (2.0 * i) / r_);

  std::string text = rope_scaling;
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  if (!text.empty() && text != "null" && text != "None") {
    const auto j = parse_flat_json(text, where);
    std::string type = "default";
    if (j.count("rope_type")) type = j.at("rope_type");
    else if (j.count("type")) type = j.at("type");
    if (type == "default") {
    } else if (type == "linear") {
      const double factor = number(j, "factor", where, type);
      for (double& f : inv) f /= factor;
    } else if (type == "llama3") {
      // Llama-3.1 frequency smoothing (HF _compute_llama3_parameters).
      const double factor = number(j, "factor", where, type);
      const double low = number(j, "low_freq_factor", where, type);
      const double high = number(j, "high_freq_factor", where, type);
      const double old_len = number(j, "original_max_position_embeddings", where, type);
      if (!(high > low)) fail(where, "rope_scaling", "llama3 needs high_freq_factor > low_freq_factor");
      const double low_wavelen = old_len / low, high_wavelen = old_len / high;
      for (double& f : inv) {
        const double wavelen = 2 * M_PI / f;
        double g = wavelen > low_wavelen ? f / factor : f;
        if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
          const double smooth = (old_len / wavelen - low) / (high - low);
          g = (1 - smooth) * g / factor + smooth * g;
        }
        f = g;
      }
    } else {
      fail(where, "rope_scaling",
           "scaling type '" + type + "' is not supported (kvsim supports default, linear, llama3)");
    }
  }
  inv_freq_.resize(inv.size());
  for (std::size_t i = 0; i < inv.size(); ++i) inv_freq_[i] = static_cast<float>(inv[i]);
}

Rope Rope::from_meta(const TraceMeta& meta, int layer) {
  return Rope(meta.head_dim, meta.rope_style, meta.layer_rope_theta(layer), meta.layer_rope_scaling(layer),
              meta.path.empty() ? std::string("trace") : meta.path, meta.rotated_dims());
}

void Rope::rotate(const float* x, i64 pos, float* out) const {
  std::copy(x + r_, x + d_, out + r_);  // partial rotary: the tail passes through
  for (int i = 0; i < r_ / 2; ++i) {
    const double th = angle(i, pos), c = std::cos(th), s = std::sin(th);
    const double xa = x[a(i)], xb = x[b(i)];
    out[a(i)] = static_cast<float>(xa * c - xb * s);
    out[b(i)] = static_cast<float>(xa * s + xb * c);
  }
}

void Rope::derotate(const float* x, i64 pos, float* out) const {
  std::copy(x + r_, x + d_, out + r_);
  for (int i = 0; i < r_ / 2; ++i) {
    const double th = angle(i, pos), c = std::cos(th), s = std::sin(th);
    const double xa = x[a(i)], xb = x[b(i)];
    out[a(i)] = static_cast<float>(xa * c + xb * s);
    out[b(i)] = static_cast<float>(-xa * s + xb * c);
  }
}

void Rope::mean_rotation(i64 first, i64 count, std::vector<double>& c, std::vector<double>& s) const {
  c.assign(static_cast<std::size_t>(r_ / 2), 0.0);
  s.assign(static_cast<std::size_t>(r_ / 2), 0.0);
  if (count <= 0) return;
  for (int i = 0; i < r_ / 2; ++i) {
    double sc = 0, ss = 0;
    for (i64 p = first; p < first + count; ++p) {
      const double th = angle(i, p);
      sc += std::cos(th);
      ss += std::sin(th);
    }
    c[i] = sc / count;
    s[i] = ss / count;
  }
}

}  // namespace kvsim
