// kvsim report --figures / --tables: every figure a standalone SVG file named after its section,
// every table as markdown, LaTeX (booktabs) and CSV with the rows the page shows.
#include <doctest/doctest.h>

#include <filesystem>
#include <sstream>

#include "report/report_exports.h"
#include "report/svg_plot.h"
#include "testutil/testutil.h"

using namespace kvsim;
using namespace kvsim::report;

namespace {
std::size_t count(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + what.size())) ++n;
  return n;
}
}  // namespace

TEST_CASE("report exports: digits, escaping, labels in md/tex, full values in csv") {
  ExportedTable t{"t1", "a_b & c", {"rule", "x", "n"}, {}};
  t.rows.push_back({HtmlCell::abbrev("snapkv", "snapkv(window=32)"), HtmlCell::num(6092.4), HtmlCell::integer(12)});
  t.rows.push_back({HtmlCell::str("50%_{x}"), HtmlCell::num(0.000123456), HtmlCell::integer(-1)});
  const std::string tex = table_latex(t, 3);
  CHECK(tex.find("\\caption{a\\_b \\& c}") != std::string::npos);
  CHECK(tex.find("\\begin{tabular}{lrr}") != std::string::npos);
  CHECK(tex.find("snapkv & 6090 & 12 \\\\") != std::string::npos);
  CHECK(tex.find("50\\%\\_\\{x\\} & 0.000123 & -1 \\\\") != std::string::npos);
  const std::string md = table_markdown(t, 3);
  CHECK(md.find("| snapkv | 6090 | 12 |") != std::string::npos);
  const std::string csv = table_csv(t);
  CHECK(csv.find("snapkv(window=32),6092.4,12") != std::string::npos);
}

TEST_CASE("kvsim report --figures --tables writes every figure and table of the page") {
  const std::string trace = test::source_dir() + "/traces/niah_stories260k.h5";
  if (!std::filesystem::exists(trace)) return;
  test::TempDir tmp("report-exports");
  auto r = test::run_kvsim("replay " + trace + " --rules 'snapkv;critical(snapkv);ada(snapkv)' --budgets 0.1,0.2 --out " +
                           tmp.file("run") + " --nu-cache " + test::test_nu_cache_dir());
  REQUIRE(r.exit_code == 0);
  r = test::run_kvsim("report " + tmp.file("run") + " --out " + tmp.file("r.html") + " --figures " + tmp.file("fig") +
                      " --tables " + tmp.file("tab") + " --digits 3");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const std::string html = test::slurp(tmp.file("r.html"));
  std::size_t svgs = 0, tables = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp.file("fig"))) {
    const std::string s = test::slurp(e.path().string());
    CHECK(s.rfind("<?xml", 0) == 0);
    CHECK(count(s, "<svg") == 1);
    CHECK(s.find("</svg>") != std::string::npos);
    CHECK(e.path().filename().string().rfind("run1-", 0) == 0);  // named after its section
    ++svgs;
  }
  CHECK(svgs == count(html, "<svg"));  // every figure of the page
  for (const auto& e : std::filesystem::directory_iterator(tmp.file("tab"))) {
    if (e.path().extension() != ".tex") continue;
    ++tables;
    const std::string tex = test::slurp(e.path().string());
    const std::string stem = e.path().stem().string();
    const std::string md = test::slurp(tmp.file("tab/" + stem + ".md"));
    CHECK(std::filesystem::exists(tmp.file("tab/" + stem + ".csv")));
    // Every tabular row has as many cells as the header (LaTeX parses it as a table).
    const auto spec_at = tex.find("\\begin{tabular}{") + 16;
    const std::size_t cols = tex.find('}', spec_at) - spec_at;
    std::istringstream lines(tex.substr(tex.find("\\toprule")));
    for (std::string line; std::getline(lines, line);)
      if (line.size() > 2 && line.substr(line.size() - 2) == "\\\\") CHECK(count(line, " & ") == cols - 1);
    CHECK(count(tex, "\\begin{tabular}") == 1);
    CHECK(count(tex, "\\end{tabular}") == 1);
    CHECK(count(md, "\n|") >= 2);
  }
  CHECK(tables == count(html, "<table"));
  r = test::run_kvsim("report " + tmp.file("run") + " --out " + tmp.file("r2.html") + " --figures " + tmp.file("f2") +
                      " --format png");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("--format png: not available") != std::string::npos);
}

TEST_CASE("layer axes get whole-number ticks only") {
  svg::Plot p(400, 300);
  p.integer_x().line("a", {0, 1, 2, 3}, {10, 20, 30, 40});  // y ticks without halves
  const std::string s = p.render();
  CHECK(s.find(">0.5<") == std::string::npos);
  CHECK(s.find(">1.5<") == std::string::npos);
  for (const char* t : {">0<", ">1<", ">2<", ">3<"}) CHECK(s.find(t) != std::string::npos);
}
