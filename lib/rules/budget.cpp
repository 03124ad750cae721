// Budget parsing (budget.h). Convention (kvpress, rules doc 1.4 item 1): a budget counts every kept
// token of a selection unit inside [0, n_c), protected tokens (observation window, sinks)
// included, so rules are compared at matched kept-token counts.
#include "rules/budget.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace kvsim {

namespace {
// "layers=F0/F1/..." or "layers=cr:R0/R1/...": one plain budget per layer, all of one kind.
Budget parse_per_layer(const std::string& s) {
  const std::string where = "budget '" + s + "'";
  std::string list = s.substr(7);
  const bool ratio = list.rfind("cr:", 0) == 0;
  if (ratio) list = list.substr(3);
  Budget b;
  b.text = s;
  b.kind = ratio ? Budget::Kind::compression_ratio : Budget::Kind::fraction;
  std::size_t begin = 0;
  for (;;) {
    const std::size_t end = list.find('/', begin);
    const std::string part = list.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    Budget one;
    try {
      one = Budget::parse(ratio ? "cr=" + part : part);
    } catch (const Error&) {
      one.kind = Budget::Kind::tokens;
    }
    if (one.kind != b.kind)
      fail(where, "layer " + std::to_string(b.per_layer.size()),
           "'" + part + "' is not a " + (ratio ? "compression ratio in [0, 1)" : "kept fraction in (0, 1]") +
               " (per-layer budgets: layers=0.3/0.2/... kept fractions or layers=cr:0.5/0.7/... ratios, one per layer)");
    b.per_layer.push_back(one.value);
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  double sum = 0;
  for (double x : b.per_layer) sum += x;
  b.value = sum / static_cast<double>(b.per_layer.size());
  return b;
}
}  // namespace

Budget Budget::for_layer(int layer) const {
  if (per_layer.empty()) return *this;
  if (layer < 0 || layer >= static_cast<int>(per_layer.size()))
    fail("budget '" + text + "'", "", "lists " + std::to_string(per_layer.size()) + " layers, no layer " +
                                          std::to_string(layer));
  Budget b = *this;
  b.per_layer.clear();
  b.value = per_layer[static_cast<std::size_t>(layer)];
  return b;
}

void Budget::check_layers(int num_layers) const {
  if (!per_layer.empty() && static_cast<int>(per_layer.size()) != num_layers)
    fail("budget '" + text + "'", "", "lists " + std::to_string(per_layer.size()) + " layers; the trace has " +
                                          std::to_string(num_layers));
}

Budget Budget::parse(const std::string& s) {
  const std::string where = "budget '" + s + "'";
  if (s.empty()) fail("budget ''", "", "empty budget");
  if (s.rfind("layers=", 0) == 0) return parse_per_layer(s);
  if (s.rfind("mem=", 0) == 0) {  // a share of the float16 full cache's bytes (rules doc 1.4)
    Budget b = parse(s.substr(4));
    if (b.kind != Kind::fraction)
      fail(where, "", "a memory budget is mem=F with F in (0, 1]: the share of the float16 full cache's bytes");
    b.text = s;
    b.kind = Kind::memory;
    return b;
  }
  if (s.rfind("thr=", 0) == 0) {
    Budget b;
    b.text = s;
    b.kind = Kind::threshold;
    errno = 0;
    char* end = nullptr;
    const std::string num = s.substr(4);
    b.value = std::strtod(num.c_str(), &end);
    if (num.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(b.value))
      fail(where, "", "a threshold budget is thr=X with X a finite number on the rule's score scale");
    return b;
  }
  Budget b;
  b.text = s;
  const bool ratio = s.rfind("cr=", 0) == 0;
  const bool percent = !ratio && s.back() == '%';
  const std::string num = ratio ? s.substr(3) : percent ? s.substr(0, s.size() - 1) : s;
  const bool integer = !ratio && !percent && !num.empty() && num.find_first_not_of("0123456789") == std::string::npos;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(num.c_str(), &end);
  if (num.empty() || end == num.c_str() || *end != '\0' || errno == ERANGE || !std::isfinite(v))
    fail(where, "", "expected a fraction (0.2), a percentage (20%), a compression ratio (cr=0.8) or a token count (512)");
  if (integer) {
    if (v < 1) fail(where, "", "a token count must be at least 1");
    // Exactly representable and far beyond any context: larger counts are typos, not budgets.
    if (v > 9007199254740992.0) fail(where, "", "a token count must be at most 2^53");
    b.kind = Kind::tokens;
    b.value = v;
  } else if (ratio) {
    b.kind = Kind::compression_ratio;
    b.value = v;
    if (!(v >= 0.0 && v < 1.0)) fail(where, "", "a compression ratio must be in [0, 1) (the share of tokens evicted)");
  } else {
    b.kind = Kind::fraction;
    b.value = percent ? v / 100.0 : v;
    if (!(b.value > 0.0 && b.value <= 1.0))
      fail(where, "", "a kept fraction must be in (0, 1] (write token counts without a decimal point)");
  }
  return b;
}

namespace {
[[noreturn]] void no_count(const Budget& b) {
  fail("budget '" + b.text + "'", "",
       "a threshold keeps what a scorer rates at or above it: it applies to plain scorers and dms(...), not to rules "
       "that choose a number of tokens");
}
}  // namespace

double Budget::kept_fraction(i64 n_c) const {
  switch (kind) {
    case Kind::threshold: no_count(*this);
    case Kind::fraction:
    case Kind::memory: return value;
    case Kind::compression_ratio: return 1.0 - value;
    case Kind::tokens: return n_c > 0 ? value / static_cast<double>(n_c) : 1.0;
  }
  return value;
}

double Budget::exact_tokens(i64 n_c) const {
  switch (kind) {
    case Kind::threshold: no_count(*this);
    case Kind::fraction:
    case Kind::memory: return value * static_cast<double>(n_c);
    case Kind::compression_ratio: return static_cast<double>(n_c) * (1.0 - value);  // kvpress's operand order
    case Kind::tokens: return value;
  }
  return value;
}

i64 Budget::tokens_for(i64 n_c) const {
  if (kind == Kind::threshold) no_count(*this);
  if (kind == Kind::tokens) {
    if (value > static_cast<double>(n_c))
      fail("budget '" + text + "'", "", std::to_string(static_cast<long long>(value)) + " tokens exceed the " +
                                            std::to_string(n_c) + " compressible tokens before the compression point");
    return static_cast<i64>(value);
  }
  if (kind == Kind::compression_ratio)  // kvpress compute_n_kept: max(1, int(k_len * (1 - cr)))
    return std::max<i64>(1, std::min<i64>(n_c, static_cast<i64>(exact_tokens(n_c))));
  // floor(f * n_c) like kvpress's int(n_c * (1 - cr)); the tiny relative tolerance keeps
  // 0.29 * 100 at 29 instead of 28.999999999999996 -> 28. At least one token.
  const i64 t = static_cast<i64>(std::floor(value * static_cast<double>(n_c) * (1.0 + 1e-12)));
  return std::max<i64>(1, std::min<i64>(t, n_c));
}

i64 Budget::share_of(i64 n, i64 n_c) const {
  if (kind == Kind::threshold) no_count(*this);
  const double x = kind == Kind::compression_ratio ? static_cast<double>(n) * (1.0 - value)
                                                   : static_cast<double>(n) * kept_fraction(n_c) * (1.0 + 1e-12);
  return std::max<i64>(1, static_cast<i64>(std::floor(x)));
}

i64 Budget::share_across(const std::vector<int>& layers, i64 items, i64 n_c) const {
  if (per_layer.empty()) return share_of(static_cast<i64>(layers.size()) * items, n_c);
  i64 total = 0;
  for (int l : layers) total += for_layer(l).share_of(items, n_c);
  return total;
}

std::vector<Budget> parse_budgets(const std::string& list, std::vector<std::string>* merged) {
  std::vector<Budget> out;
  std::size_t begin = 0;
  for (;;) {
    std::size_t end = list.find(',', begin);
    std::string part = list.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    std::size_t a = part.find_first_not_of(" \t"), b = part.find_last_not_of(" \t");
    part = a == std::string::npos ? "" : part.substr(a, b - a + 1);
    if (part.empty()) fail("budgets '" + list + "'", "", "empty budget in the comma-separated list");
    const Budget budget = Budget::parse(part);
    const bool repeated = std::any_of(out.begin(), out.end(), [&](const Budget& o) {
      return o.kind == budget.kind && o.value == budget.value && o.per_layer == budget.per_layer;
    });
    if (!repeated) out.push_back(budget);
    else if (merged) merged->push_back(budget.text);
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return out;
}

std::string repeated_budgets_note(const std::string& list) {
  std::vector<std::string> merged;
  try {
    parse_budgets(list, &merged);
  } catch (const Error&) {
    return "";  // the command reports the bad list itself
  }
  if (merged.empty()) return "";
  std::string which;
  for (const auto& m : merged) which += (which.empty() ? "" : ", ") + m;
  return "--budgets: " + which + (merged.size() == 1 ? " repeats an earlier budget" : " repeat earlier budgets") +
         "; each budget is replayed once";
}

}  // namespace kvsim
