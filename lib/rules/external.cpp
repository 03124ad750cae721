// external(name=N, file=F|-, kind=kept|scores): a selection made outside kvsim, measured like any
// rule. kind=kept replays stored kept masks (e.g. a kvpress press recorded by kvsim-dump
// --kvpress-press) at the budgets they were stored for; kind=scores ranks stored per-token
// scores at any budget, so ada(...) and critical(...) can wrap it. Layout: trace/stored_selection.h.
#include <algorithm>
#include <memory>
#include <mutex>

#include "core/error.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"
#include "trace/stored_selection.h"

namespace kvsim {
namespace {

// Opens the stored selection once per trace file (the first layer), checks it against the replay.
class SelectionSource {
 public:
  SelectionSource(std::string name, std::string file) : name_(std::move(name)), file_(std::move(file)) {}
  const StoredSelection& get(const RuleInput& in, int& units, GqaMode& mode) const {
    const std::string path = file_.empty() ? in.meta->path : file_;
    std::lock_guard<std::mutex> lock(mu_);
    if (!sel_ || sel_->info().path != path) sel_ = std::make_unique<StoredSelection>(path, name_);
    const StoredSelectionInfo& i = sel_->info();
    const std::string field = "/selections/" + name_;
    if (i.n_c != in.n_c)
      fail(path, field + "@n_c",
           "the selection covers [0, " + std::to_string(i.n_c) + ") but this replay compresses at n_c = " +
               std::to_string(in.n_c) + " (use the same --compression-point)");
    mode = i.mode == "kv" ? GqaMode::kv : GqaMode::query;
    units = mode == GqaMode::kv ? in.data->num_kv_heads : in.data->num_heads;
    return *sel_;
  }

 private:
  std::string name_, file_;
  mutable std::mutex mu_;
  mutable std::unique_ptr<StoredSelection> sel_;
};

class ExternalKeptRule : public Rule {
 public:
  ExternalKeptRule(std::string spec, std::string name, std::string file)
      : spec_(std::move(spec)), src_(std::move(name), std::move(file)) {}
  std::string spec() const override { return spec_; }
  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    int units = 0;
    GqaMode mode = GqaMode::kv;
    const StoredSelection& sel = src_.get(in, units, mode);
    std::vector<Selection> out;
    for (const auto& b : budgets) {
      Selection s(mode, units, in.n_c);
      s.kept = sel.kept(b.text, in.layer, units);
      s.key_channels = sel.key_channels(b.text, in.layer, in.data->num_kv_heads, in.data->head_dim);
      out.push_back(std::move(s));
    }
    return out;
  }

 private:
  std::string spec_;
  SelectionSource src_;
};

class ExternalScoresRule : public ScoredRule {
 public:
  ExternalScoresRule(std::string spec, std::string name, std::string file, bool attention)
      : ScoredRule(std::move(spec)), src_(std::move(name), std::move(file)), attention_(attention) {}
  bool attention_like() const override { return attention_; }
  UnitScores scores(const RuleInput& in) const override {
    int units = 0;
    GqaMode mode = GqaMode::kv;
    const StoredSelection& sel = src_.get(in, units, mode);
    UnitScores s(mode, units, in.n_c);
    s.score = sel.scores(in.layer, units);
    const auto p = sel.protect(in.layer);
    for (i64 j = 0; j < in.n_c; ++j)
      if (p[j]) s.protect_range(j, j + 1);
    return s;
  }

 private:
  SelectionSource src_;
  bool attention_;
};

KVSIM_RULE((RuleInfo{"external",
                     "a selection made outside kvsim (kvsim-dump --kvpress-press, Python, any language), read from "
                     "/selections/<name> of the trace or of another HDF5 file (traces/README.md)",
                     {{"name", "string", "", "the stored selection (required)"},
                      {"file", "string", "-", "HDF5 file holding /selections/<name>; - = the trace itself"},
                      {"kind", "choice kept|scores", "kept",
                       "kept: stored kept masks, replayed at the budgets they were stored for (the budget string "
                       "must match, e.g. cr=0.5); scores: stored per-token scores ranked by kvsim at any budget "
                       "(wrappable by ada, critical, pyramid)"},
                      {"attention", "bool", "true", "kind=scores: the scores estimate attention mass (lets ada / "
                                                    "critical / pyramid wrap them)"}},
                     /*in_all=*/false,
                     /*example=*/"external(name=kvpress_SnapKV)"}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const std::string name = r.get_string("name", "", true);
             std::string file = r.get_string("file", "-");
             if (file == "-") file.clear();
             const bool scores = r.get_choice("kind", "kept", {"kept", "scores"}) == "scores";
             const bool attention = r.get_bool("attention", true);
             if (scores) return std::make_unique<ExternalScoresRule>(r.canonical(), name, file, attention);
             return std::make_unique<ExternalKeptRule>(r.canonical(), name, file);
           });

}  // namespace
}  // namespace kvsim
