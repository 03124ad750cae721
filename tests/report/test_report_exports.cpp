// kvsim report --figures / --tables: every figure a standalone SVG file named after its section,
// every table as markdown, LaTeX (booktabs) and CSV with the rows the page shows.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
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
  ExportedTable u{"t2", "ΣF over θ−1 ‖o‖₁ (é)", {"ΣF", "10⁻³"}, {}};
  const std::string utex = table_latex(u, 3);
  CHECK(utex.find("\\caption{\\ensuremath{\\Sigma}F over \\ensuremath{\\theta}\\ensuremath{-}1 "
                  "\\ensuremath{\\|}o\\ensuremath{\\|}\\ensuremath{_1} (é)}") != std::string::npos);
  CHECK(utex.find("\\ensuremath{\\Sigma}F & 10\\ensuremath{^{-}}\\ensuremath{^3} \\\\") != std::string::npos);
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
    // pdflatex-safe: kvsim's symbols (Σ, θ, −, ‖, ...) spelled as LaTeX, nothing else non-ASCII.
    CHECK(std::all_of(tex.begin(), tex.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }));
    CHECK(count(tex, "\\begin{tabular}") == 1);
    CHECK(count(tex, "\\end{tabular}") == 1);
    CHECK(count(md, "\n|") >= 2);
  }
  CHECK(tables == count(html, "<table"));
  // Every .tex table compiles (tools/install-deps.sh installs pdflatex and booktabs).
  REQUIRE(test::run_command("command -v pdflatex").exit_code == 0);
  {
    std::ofstream doc(tmp.file("tab/all.tex.doc"));
    doc << "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n";
    for (const auto& e : std::filesystem::directory_iterator(tmp.file("tab")))
      if (e.path().extension() == ".tex") doc << "\\input{" << e.path().filename().string() << "}\n\\clearpage\n";
    doc << "\\end{document}\n";
  }
  r = test::run_command("cd '" + tmp.file("tab") + "' && pdflatex -interaction=nonstopmode -halt-on-error "
                        "-jobname=all all.tex.doc");
  INFO(r.out.substr(r.out.size() > 3000 ? r.out.size() - 3000 : 0));
  CHECK(r.exit_code == 0);
  CHECK(std::filesystem::exists(tmp.file("tab/all.pdf")));
}

// PNG width from its IHDR chunk (big-endian, bytes 16..19).
std::uint32_t png_width(const std::string& png) {
  std::uint32_t w = 0;
  for (int i = 16; i < 20; ++i) w = w << 8 | static_cast<unsigned char>(png[static_cast<std::size_t>(i)]);
  return w;
}

TEST_CASE("kvsim report --format png,pdf: every figure as a 300 dpi PNG and a PDF, or a clean error") {
  const std::string trace = test::source_dir() + "/traces/niah_stories260k.h5";
  if (!std::filesystem::exists(trace)) return;
  // tools/install-deps.sh installs rsvg-convert (librsvg2-bin): the set-up must have it.
  REQUIRE(test::run_command("command -v rsvg-convert").exit_code == 0);
  test::TempDir tmp("report-png");
  auto r = test::run_kvsim("replay " + trace + " --rules 'snapkv;critical(snapkv)' --budgets 0.1 --layers 0 --out " +
                           tmp.file("run") + " --nu-cache " + test::test_nu_cache_dir());
  REQUIRE(r.exit_code == 0);
  r = test::run_kvsim("report " + tmp.file("run") + " --out " + tmp.file("r.html") + " --figures " + tmp.file("fig") +
                      " --format png,pdf");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("(png, pdf)") != std::string::npos);
  const std::string html = test::slurp(tmp.file("r.html"));
  std::size_t pngs = 0, pdfs = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp.file("fig"))) {
    const std::string name = e.path().filename().string(), data = test::slurp(e.path().string());
    INFO(name);
    CHECK(name.rfind("run1-", 0) == 0);  // the temporary SVG sources are gone
    if (e.path().extension() == ".png") {
      ++pngs;
      REQUIRE(data.size() > 24);
      CHECK(data.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0);
      CHECK(png_width(data) >= 3 * 290);  // 300 dpi: 3.125 x the SVG's CSS pixels
      CHECK(std::filesystem::exists(tmp.file("fig/" + e.path().stem().string() + ".pdf")));
    } else {
      CHECK(e.path().extension() == ".pdf");
      ++pdfs;
      CHECK(data.rfind("%PDF-", 0) == 0);
      CHECK(data.find("%%EOF") != std::string::npos);
    }
  }
  CHECK(pngs == count(html, "<svg"));
  CHECK(pdfs == pngs);

  // Without rsvg-convert: one line naming the package, exit 2, nothing written.
  r = test::run_command("PATH=/nonexistent '" + std::string(KVSIM_CLI) + "' report " + tmp.file("run") + " --out " +
                        tmp.file("r2.html") + " --figures " + tmp.file("f2") + " --format png");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("librsvg2-bin") != std::string::npos);
  CHECK(!std::filesystem::exists(tmp.file("f2")));
  CHECK(!std::filesystem::exists(tmp.file("r2.html")));

  // A converter that fails: the error names the figure file and says why; no page, no partial file.
  std::filesystem::create_directories(tmp.file("bin"));
  {
    std::ofstream fake(tmp.file("bin/rsvg-convert"));
    fake << "#!/bin/sh\necho 'Error reading SVG: simulated' >&2\nexit 1\n";
  }
  std::filesystem::permissions(tmp.file("bin/rsvg-convert"), std::filesystem::perms::owner_all);
  r = test::run_command("PATH='" + tmp.file("bin") + ":/usr/bin:/bin' '" + std::string(KVSIM_CLI) + "' report " +
                        tmp.file("run") + " --out " + tmp.file("r3.html") + " --figures " + tmp.file("f3") +
                        " --format svg,pdf");
  CHECK(r.exit_code != 0);
  CHECK(r.err.find(".pdf: rsvg-convert failed (exit status 1): Error reading SVG: simulated") != std::string::npos);
  CHECK(!std::filesystem::exists(tmp.file("r3.html")));
  CHECK(test::partial_files(tmp.file("f3")).empty());
}

TEST_CASE("layer axes get whole-number ticks only") {
  svg::Plot p(400, 300);
  p.integer_x().line("a", {0, 1, 2, 3}, {10, 20, 30, 40});  // y ticks without halves
  const std::string s = p.render();
  CHECK(s.find(">0.5<") == std::string::npos);
  CHECK(s.find(">1.5<") == std::string::npos);
  for (const char* t : {">0<", ">1<", ">2<", ">3<"}) CHECK(s.find(t) != std::string::npos);
}
