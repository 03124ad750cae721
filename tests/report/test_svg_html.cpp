// SVG plotting module, HTML tables and the assembled report on a hand-made replay output.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "report/html_report.h"
#include "report/html_table.h"
#include "report/svg_heatmap.h"
#include "report/svg_plot.h"
#include "testutil/testutil.h"

using namespace kvsim;
using namespace kvsim::report;

namespace {

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (std::size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("ticks: nice linear steps and decades") {
  CHECK(svg::linear_ticks(0, 1) == std::vector<double>{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1});
  const auto lt = svg::linear_ticks(-3, 17);
  CHECK(lt.front() == 0);  // multiples of 5 within the range
  CHECK(lt.back() == 15);
  CHECK(svg::log_ticks(1e-3, 20) == std::vector<double>{1e-3, 1e-2, 1e-1, 1, 10});
  CHECK(svg::log_ticks(0.3, 8) == std::vector<double>{0.5, 1, 2, 5});
  CHECK(svg::tick_label(1e-5, svg::Scale::log) == "10⁻⁵");
  CHECK(svg::tick_label(0.01, svg::Scale::log) == "0.01");
  CHECK(svg::tick_label(2e5, svg::Scale::log) == "2×10⁵");
}

TEST_CASE("plot: one circle per drawable point, dropped points counted, legend entries") {
  svg::Plot p;
  p.title("t <&>").xscale(svg::Scale::log).yscale(svg::Scale::log).identity_line();
  p.scatter("a", {1, 2, 0, 4}, {1, 3, -1, NAN});
  p.line("b", {1, 2}, {2, 2});
  const std::string s = p.render();
  CHECK(s.rfind("<svg", 0) == 0);
  CHECK(s.find("t &lt;&amp;&gt;") != std::string::npos);
  CHECK(count(s, "<circle") == 2 + 2 + 1 + 1);  // scatter points, line markers, both legend entries' markers
  CHECK(p.dropped_points() == 2);
  CHECK(count(s, "<polyline") == 1);
  CHECK(s.find(">y = x</text>") != std::string::npos);
}

TEST_CASE("plot: pens beyond ten rules differ in dash and marker, the legend sits beside the plot") {
  svg::Plot p(600, 300);
  for (int i = 0; i < 12; ++i) p.line("rule " + std::to_string(i), {1, 2}, {1.0 + i, 2.0 + i}, svg::pen(i));
  const std::string s = p.render();
  CHECK(svg::pen(0).color == svg::pen(10).color);
  CHECK((!svg::pen(0).dashed && svg::pen(10).dashed && svg::pen(20).dotted));
  CHECK(svg::pen(10).marker == svg::Marker::square);
  CHECK(count(s, "<polyline") == 12);
  CHECK(count(s, "stroke-dasharray=\"6,3\"") == 2 * 2);  // two dashed series, each line and legend entry
  CHECK(count(s, "<rect x=") >= 2 * 2 + 2);                // their square markers (plot and legend)
  // Beside: the picture is wider than the 600 px plot, and no taller than it for 12 entries.
  CHECK(s.find("width=\"600\"") == std::string::npos);
  CHECK(s.find("height=\"300\"") != std::string::npos);
  svg::Plot narrow(290, 250);
  narrow.scatter("a", {1}, {1});
  CHECK(narrow.render().find("width=\"290\"") != std::string::npos);  // facets keep it underneath
}

TEST_CASE("histogram and heat map") {
  const auto h = svg::histogram({0, 1, 1, 2, 3, NAN}, 3, 0, 3);
  CHECK(h.count == std::vector<double>{1, 2, 2});
  svg::HeatMap hm;
  hm.row_labels = {"r0", "r1"};
  hm.col_labels = {"0", "1", "2"};
  hm.values = {1, 2, 3, 4, NAN, 6};
  const std::string s = hm.render();
  CHECK(count(s, "<rect x=") >= 6);
  CHECK(s.find("#cccccc") != std::string::npos);  // the NaN cell
  CHECK(svg::viridis(0) == "#440154");
  CHECK(svg::viridis(1) == "#fde725");
}

TEST_CASE("html table keeps the full value in data-v") {
  HtmlTable t("x", "cap", {"a", "b"});
  t.add_row({HtmlCell::str("r<1>"), HtmlCell::num(0.1234567891)});
  const std::string s = t.render();
  CHECK(s.find("id=\"x\"") != std::string::npos);
  CHECK(s.find("<td>r&lt;1&gt;</td>") != std::string::npos);
  CHECK(s.find("data-v=\"0.1234567891\">0.123457</td>") != std::string::npos);
}

TEST_CASE("report from a hand-made replay folder: sections, tables, no network references") {
  test::TempDir dir("report");
  std::ofstream(dir.file("summary.json"))
      << R"({"kvsim_version":"0.1.0","command":"kvsim replay t.h5","trace":{"model":"toy","num_layers":1},)"
         R"("protocol":{"n_c":10},"rules":[{"spec":"snapkv","budgets":[{"budget":"0.5","select_seconds":0.25}],)"
         R"("auc":{"from":0.1,"to":0.5,"points":3,"rel_pert_l1_mean":0.0625,"pert_l1_mean":0.5,"retained_mass_mean":0.9}}],)"
         R"("timings":{"total_seconds":1.5},"peak_rss_bytes":1048576})";
  std::ofstream m(dir.file("metrics.csv"));
  m << "rule,budget,budget_tokens,kept_tokens,cache_bytes,cache_ratio,layer,head,eval,n_queries,retained_mass,"
       "retained_mass_min,pert_l1,pert_l1_max,pert_l2,pert_l2_max,rel_pert_l1,rel_pert_l2,bound_ada,bound_critical\n";
  for (const char* rule : {"snapkv", "\"critical(snapkv,alpha=0.5)\"", "\"ada(snapkv,alpha=0.2)\""})
    for (int h = -1; h < 2; ++h)
      m << rule << ",0.5,5,5,160,0.5,0," << h << ",queries,3,0.9,0.8," << (h + 2) * 0.1 << ",0.5,0.1,0.2,0.01,0.02,"
        << (h + 2) * 0.4 << "," << (h + 2) * 0.2 << "\n";
  m.close();
  ReportInputs in;
  in.replays.push_back(load_replay_output(dir.path.string()));
  in.command = "kvsim report x";
  in.version = "0.1.0";
  const std::string html = render_html_report(in);
  for (const char* id : {"run1-meta", "run1-timings", "run1-tightness", "run1-rule-budget", "run1-critical-total",
                         "run1-critical-layers", "run1-ada-layers"})
    CHECK_MESSAGE(html.find(std::string("id=\"") + id + "\"") != std::string::npos, id);
  CHECK(html.find("http://") == html.find("http://www.w3.org/2000/svg"));  // only the SVG namespace
  CHECK(html.find("https://") == std::string::npos);
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("data-v=\"0.25\"") != std::string::npos);  // select_seconds from summary.json
  CHECK(html.find("id=\"run1-budget-free\"") != std::string::npos);  // rules[].auc
  CHECK(html.find("data-v=\"0.0625\"") != std::string::npos);
  // A broken metrics.csv is a one-line error naming file, line and column.
  std::ofstream(dir.file("metrics.csv")) << "rule,budget\nx,y\n";
  CHECK_THROWS_WITH_AS(load_replay_output(dir.path.string()), (dir.file("metrics.csv") + ": budget_tokens: missing column").c_str(),
                       kvsim::Error);
}
