// Budget parsing (budget.h). Convention (kvpress, spec 1.4 item 1): a budget counts every kept
// token of a selection unit inside [0, n_c), protected tokens (observation window, sinks)
// included, so rules are compared at matched kept-token counts.
#include "rules/budget.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace kvsim {

Budget Budget::parse(const std::string& s) {
  const std::string where = "budget '" + s + "'";
  if (s.empty()) fail("budget ''", "", "empty budget");
  Budget b;
  b.text = s;
  const bool percent = s.back() == '%';
  const std::string num = percent ? s.substr(0, s.size() - 1) : s;
  const bool integer = !percent && num.find_first_not_of("0123456789") == std::string::npos;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(num.c_str(), &end);
  if (num.empty() || end == num.c_str() || *end != '\0' || errno == ERANGE || !std::isfinite(v))
    fail(where, "", "expected a fraction (0.2), a percentage (20%) or a token count (512)");
  if (integer) {
    if (v < 1) fail(where, "", "a token count must be at least 1");
    b.kind = Kind::tokens;
    b.value = v;
  } else {
    b.kind = Kind::fraction;
    b.value = percent ? v / 100.0 : v;
    if (!(b.value > 0.0 && b.value <= 1.0))
      fail(where, "", "a kept fraction must be in (0, 1] (write token counts without a decimal point)");
  }
  return b;
}

i64 Budget::tokens_for(i64 n_c) const {
  if (kind == Kind::tokens) {
    const i64 t = static_cast<i64>(value);
    if (t > n_c)
      fail("budget '" + text + "'", "", std::to_string(t) + " tokens exceed the " + std::to_string(n_c) +
                                            " compressible tokens before the compression point");
    return t;
  }
  // floor(f * n_c) like kvpress's int(n_c * (1 - cr)); the tiny relative tolerance keeps
  // 0.29 * 100 at 29 instead of 28.999999999999996 -> 28. At least one token.
  const i64 t = static_cast<i64>(std::floor(value * static_cast<double>(n_c) * (1.0 + 1e-12)));
  return std::max<i64>(1, std::min<i64>(t, n_c));
}

std::vector<Budget> parse_budgets(const std::string& list) {
  std::vector<Budget> out;
  std::size_t begin = 0;
  for (;;) {
    std::size_t end = list.find(',', begin);
    std::string part = list.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    std::size_t a = part.find_first_not_of(" \t"), b = part.find_last_not_of(" \t");
    part = a == std::string::npos ? "" : part.substr(a, b - a + 1);
    if (part.empty()) fail("budgets '" + list + "'", "", "empty budget in the comma-separated list");
    out.push_back(Budget::parse(part));
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return out;
}

}  // namespace kvsim
