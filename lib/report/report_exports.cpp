#include "report/report_exports.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <map>

#include "core/table_io.h"

namespace kvsim::report {

namespace {

thread_local ReportExports* g_active = nullptr;

// File-name words of a title; a decimal point between digits stays as 'p' ("budget 0.05" ->
// budget_0p05), so figures of different budgets keep different names.
std::string slug(const std::string& text, std::size_t max_words = 8) {
  std::string out, word;
  std::size_t words = 0;
  const auto digit = [&](std::size_t i) { return i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); };
  for (std::size_t i = 0; i <= text.size() && words < max_words; ++i) {
    const char c = i < text.size() ? text[i] : ' ';
    if (c == '.' && i > 0 && digit(i - 1) && digit(i + 1)) {
      word += 'p';
    } else if (std::isalnum(static_cast<unsigned char>(c))) {
      word += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (!word.empty()) {
      out += (out.empty() ? "" : "_") + word;
      word.clear();
      ++words;
    }
  }
  return out;
}

std::string cell_text(const HtmlCell& c, int digits) {
  if (!c.numeric) return c.text;  // the short label the page shows (csv keeps the full text)
  if (!c.text.empty()) return c.text;  // integers keep their own text
  if (!std::isfinite(c.value)) return format_double(c.value);
  // `digits` significant digits in plain notation (6092 -> 6090 with 3), exponents only for very
  // large or small magnitudes.
  char buf[64];
  const double a = std::fabs(c.value);
  if (a == 0 || (a >= 1e-4 && a < 1e7)) {
    const int magnitude = a == 0 ? 0 : static_cast<int>(std::floor(std::log10(a)));
    const double step = std::pow(10.0, magnitude - digits + 1);
    const double rounded = std::round(c.value / step) * step;
    std::snprintf(buf, sizeof buf, "%.*f", std::max(0, digits - 1 - magnitude), rounded);
  } else {
    std::snprintf(buf, sizeof buf, "%.*g", digits, c.value);
  }
  return buf;
}

// The non-ASCII symbols of kvsim's headers and captions as pdflatex-safe LaTeX (the table then
// compiles without inputenc/unicode set-up); any other UTF-8 sequence passes through unchanged.
const std::map<std::string, std::string>& latex_symbols() {
  static const std::map<std::string, std::string> m = {
      {"Σ", "\\ensuremath{\\Sigma}"}, {"Δ", "\\ensuremath{\\Delta}"}, {"θ", "\\ensuremath{\\theta}"},
      {"ρ", "\\ensuremath{\\rho}"}, {"μ", "\\ensuremath{\\mu}"}, {"ν", "\\ensuremath{\\nu}"},
      {"ε", "\\ensuremath{\\varepsilon}"}, {"α", "\\ensuremath{\\alpha}"}, {"β", "\\ensuremath{\\beta}"},
      {"λ", "\\ensuremath{\\lambda}"}, {"τ", "\\ensuremath{\\tau}"}, {"−", "\\ensuremath{-}"},
      {"‖", "\\ensuremath{\\|}"}, {"·", "\\ensuremath{\\cdot}"}, {"×", "\\ensuremath{\\times}"},
      {"∩", "\\ensuremath{\\cap}"}, {"≤", "\\ensuremath{\\leq}"}, {"≥", "\\ensuremath{\\geq}"},
      {"≈", "\\ensuremath{\\approx}"}, {"…", "\\ldots{}"}, {"—", "---"}, {"–", "--"}, {"₀", "\\ensuremath{_0}"},
      {"₁", "\\ensuremath{_1}"}, {"₂", "\\ensuremath{_2}"}, {"⁻", "\\ensuremath{^{-}}"},
      {"⁰", "\\ensuremath{^0}"}, {"¹", "\\ensuremath{^1}"}, {"²", "\\ensuremath{^2}"},
      {"³", "\\ensuremath{^3}"}, {"⁴", "\\ensuremath{^4}"}, {"⁵", "\\ensuremath{^5}"},
      {"⁶", "\\ensuremath{^6}"}, {"⁷", "\\ensuremath{^7}"}, {"⁸", "\\ensuremath{^8}"},
      {"⁹", "\\ensuremath{^9}"}};
  return m;
}

std::string latex_escape(const std::string& s) {
  std::string o;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (static_cast<unsigned char>(c) >= 0x80) {  // one UTF-8 sequence: lead byte + continuation bytes
      std::size_t e = i + 1;
      while (e < s.size() && (static_cast<unsigned char>(s[e]) & 0xC0) == 0x80) ++e;
      const std::string symbol = s.substr(i, e - i);
      const auto it = latex_symbols().find(symbol);
      o += it == latex_symbols().end() ? symbol : it->second;
      i = e - 1;
      continue;
    }
    switch (c) {
      case '&': case '%': case '$': case '#': case '_': case '{': case '}': o += std::string("\\") + c; break;
      case '~': o += "\\textasciitilde{}"; break;
      case '^': o += "\\textasciicircum{}"; break;
      case '\\': o += "\\textbackslash{}"; break;
      default: o += c;
    }
  }
  return o;
}

std::string md_escape(const std::string& s) {
  std::string o;
  for (char c : s) o += c == '|' ? std::string("\\|") : std::string(1, c);
  return o;
}

}  // namespace

void ReportExports::section(const std::string& id) {
  if (!id.empty()) section_ = id;
}

void ReportExports::table(ExportedTable t) {
  const int n = ++count_["table:" + t.name];  // a repeated id (one per section) gets a suffix
  if (n > 1) t.name += "-" + std::to_string(n);
  tables.push_back(std::move(t));
}

void ReportExports::figure(const std::string& svg, const std::string& title) {
  const int n = ++count_[section_];
  const std::string words = slug(title);
  figures.push_back({section_ + "-" + std::to_string(n) + (words.empty() ? "" : "-" + words), svg});
}

ReportExports* active_exports() { return g_active; }

ExportScope::ExportScope(ReportExports* e) : previous_(g_active) { g_active = e; }
ExportScope::~ExportScope() { g_active = previous_; }

std::string table_markdown(const ExportedTable& t, int digits) {
  std::string o = t.caption.empty() ? "" : "Table: " + md_escape(t.caption) + "\n\n";
  o += "|";
  for (const auto& h : t.headers) o += " " + md_escape(h) + " |";
  o += "\n|";
  for (std::size_t i = 0; i < t.headers.size(); ++i) o += " --- |";
  o += "\n";
  for (const auto& row : t.rows) {
    o += "|";
    for (const auto& c : row) o += " " + md_escape(cell_text(c, digits)) + " |";
    o += "\n";
  }
  return o;
}

std::string table_latex(const ExportedTable& t, int digits) {
  std::string spec;
  for (std::size_t i = 0; i < t.headers.size(); ++i) {
    bool numeric = !t.rows.empty();
    for (const auto& row : t.rows) numeric = numeric && i < row.size() && row[i].numeric;
    spec += numeric ? "r" : "l";
  }
  std::string o = "% kvsim report: " + latex_escape(t.name) + " (needs \\usepackage{booktabs})\n";
  o += "\\begin{table}\n\\centering\n";
  if (!t.caption.empty()) o += "\\caption{" + latex_escape(t.caption) + "}\n";
  o += "\\label{tab:" + t.name + "}\n\\begin{tabular}{" + spec + "}\n\\toprule\n";
  for (std::size_t i = 0; i < t.headers.size(); ++i) o += (i ? " & " : "") + latex_escape(t.headers[i]);
  o += " \\\\\n\\midrule\n";
  for (const auto& row : t.rows) {
    for (std::size_t i = 0; i < row.size(); ++i) o += (i ? " & " : "") + latex_escape(cell_text(row[i], digits));
    o += " \\\\\n";
  }
  return o + "\\bottomrule\n\\end{tabular}\n\\end{table}\n";
}

std::string table_csv(const ExportedTable& t) {
  std::string o;
  for (std::size_t i = 0; i < t.headers.size(); ++i) o += (i ? "," : "") + csv_field(t.headers[i]);
  o += "\n";
  for (const auto& row : t.rows) {
    for (std::size_t i = 0; i < row.size(); ++i) {
      const HtmlCell& c = row[i];
      o += (i ? "," : "") + (c.numeric ? (c.text.empty() ? format_double(c.value) : c.text)
                                        : csv_field(c.full.empty() ? c.text : c.full));
    }
    o += "\n";
  }
  return o;
}

}  // namespace kvsim::report
