#include "report/questions_section.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "replay/metric_columns.h"
#include "report/csv_reader.h"

namespace kvsim::report {

std::string questions_section(const ReplayOutput& out, const std::string& id, const Labels& L) {
  const std::string path = out.dir + "/metrics_per_question.csv";
  if (!std::filesystem::exists(path)) return "";
  const CsvTable t = CsvTable::read(path);
  const auto column = [&](std::string_view name) { return declared_column(t, per_question_schema(), name); };
  const auto c_rule = column("rule"), c_budget = column("budget"), c_q = column("question"), c_p1 = column("pert_l1");
  // (rule, budget) -> question -> (sum over layers, layers)
  std::map<std::pair<std::string, std::string>, std::map<long long, std::pair<double, int>>> sums;
  std::set<long long> questions;
  for (std::size_t i = 0; i < t.rows(); ++i) {
    auto& s = sums[{t.cell(i, c_rule), t.cell(i, c_budget)}][t.integer(i, c_q)];
    s.first += t.number(i, c_p1);
    ++s.second;
    questions.insert(t.integer(i, c_q));
  }
  std::string o = h(3, "One context, several questions", id + "-questions");
  o += p("The context was compressed once (question-agnostic) and asked " + std::to_string(questions.size()) +
         " questions in turn (rules doc 1.8). Per question: its evaluation queries' layer pert_l1 (its tokens and its "
         "answer's), mean over layers. Worst: the question the cache serves least; spread: worst over best (1: every "
         "question served alike).");
  std::vector<std::string> cols = {"rule", "budget"};
  for (long long q : questions) cols.push_back("question " + std::to_string(q));
  cols.push_back("worst");
  cols.push_back("spread");
  HtmlTable table(id + "-per-question", "pert_l1 per question (mean over layers)", cols);
  for (const auto& budget : out.budgets)
    for (const auto& rule : out.rules) {
      const auto it = sums.find({rule, budget});
      if (it == sums.end()) continue;
      std::vector<HtmlCell> row = {L.cell(rule), HtmlCell::str(budget)};
      double worst = -INFINITY, best = INFINITY;
      for (long long q : questions) {
        const auto qi = it->second.find(q);
        const double m = qi == it->second.end() ? NAN : qi->second.first / qi->second.second;
        row.push_back(HtmlCell::num(m));
        if (std::isfinite(m)) worst = std::max(worst, m), best = std::min(best, m);
      }
      row.push_back(HtmlCell::num(worst));
      row.push_back(HtmlCell::num(best > 0 ? worst / best : NAN));
      table.add_row(std::move(row));
    }
  o += table.render();
  return o;
}

}  // namespace kvsim::report
