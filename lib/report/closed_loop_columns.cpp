#include "report/closed_loop_columns.h"

#include <deque>
#include <string>

#include "replay/metric_columns.h"

namespace kvsim::report {

namespace {

const Column kRule{"rule", ColumnType::text, "", "canonical spec of the rule"};
const Column kBudget{"budget", ColumnType::text, "", "the budget as written"};
const Column kMode{"mode", ColumnType::text, "",
                   "oneshot (the replay's kept set at the compression point) | blockwise (KeyDiff's real block-wise "
                   "prefill) | decode (re-selected every --evict-every tokens)"};

// The replay metrics offline_vs_closed.csv puts beside the closed-loop numbers, as offline_<name>.
constexpr std::string_view kOffline[] = {"pert_l1", "rel_pert_l1", "pert_l2", "bound_ada", "bound_critical",
                                         "retained_mass"};

}  // namespace

const TableSchema& closed_loop_schema() {
  static const TableSchema s{
      "closed_loop.csv",
      "one (rule, budget, mode, decoding, step, layer) of the closed loop; layer -1 rows hold the next-token metrics",
      {kRule, kBudget, kMode,
       {"decoding", ColumnType::text, "", "teacher_forced (the recorded continuation fed) | free (greedy)"},
       {"step", ColumnType::integer, "", "generated or fed token index after the compression point"},
       {"position", ColumnType::integer, "", "the token's position"},
       {"layer", ColumnType::integer, "", "layer index; -1: the next-token metrics"},
       {"kl_next_token", ColumnType::real, "nats", "KL(full ‖ evicted) of the next-token distributions (layer -1)"},
       {"token_agreement", ColumnType::real, "", "1 when both runs' greedy next tokens agree (layer -1)"},
       {"logprob", ColumnType::real, "nats", "log-probability of the recorded next token, evicted cache (layer -1)"},
       {"logprob_full", ColumnType::real, "nats", "the same with the full cache (layer -1)"},
       {"hidden_drift", ColumnType::real, "",
        "‖h_evicted − h_full‖₂ / ‖h_full‖₂ of the layer's output hidden state (layers >= 0)"},
       {"attn_out_l1", ColumnType::real, "output units",
        "‖(o_evicted − o_full) W_o‖₁ of the layer's attention (the replay's layer pert_l1, in the loop)"}}};
  return s;
}

const TableSchema& offline_vs_closed_schema() {
  static const TableSchema s = [] {
    static std::deque<std::string> texts;  // generated names and meanings outlive the views
    TableSchema t{"offline_vs_closed.csv", "one (rule, budget, mode): offline layer means beside closed-loop means",
                  {kRule, kBudget, kMode,
                   {"kept_tokens", ColumnType::real, "tokens",
                    "tokens kept per selection unit (KV head), mean over layers and units: the replay's kept_tokens"},
                   {"kept_tokens_total", ColumnType::integer, "tokens",
                    "tokens kept, summed over layers and selection units"}}};
    for (std::string_view name : kOffline) {
      const Column& m = metric_column(name).column;
      texts.push_back("offline_" + std::string(name));
      const std::string_view col = texts.back();
      texts.push_back("the replay's " + std::string(name) + ", mean over layers of the layer rows (eval queries)");
      t.columns.push_back({col, ColumnType::real, m.unit, texts.back()});
    }
    const std::vector<Column> closed = {
        {"kl_mean", ColumnType::real, "nats", "kl_next_token, mean over the teacher-forced steps"},
        {"kl_first", ColumnType::real, "nats", "kl_next_token at the first teacher-forced step"},
        {"kl_max", ColumnType::real, "nats", "kl_next_token, maximum over the teacher-forced steps"},
        {"token_agreement", ColumnType::real, "", "greedy agreement, mean over the teacher-forced steps"},
        {"delta_logprob", ColumnType::real, "nats", "logprob_full − logprob, mean over teacher-forced steps"},
        {"hidden_drift_last", ColumnType::real, "", "hidden_drift of the last layer, mean over steps"},
        {"hidden_drift_mean", ColumnType::real, "", "hidden_drift, mean over layers and steps"},
        {"attn_out_l1", ColumnType::real, "output units", "attn_out_l1, mean over layers and steps"},
        {"attn_out_l1_layer0", ColumnType::real, "output units", "attn_out_l1 of layer 0, mean over steps"},
        {"free_agreement", ColumnType::real, "", "greedy agreement of the free-running continuation, mean"},
        {"free_kl_mean", ColumnType::real, "nats", "kl_next_token of the free-running continuation, mean"},
        {"free_first_divergence", ColumnType::real, "",
         "first free-running step whose greedy token differs from the full cache's"},
        {"needle_recall", ColumnType::real, "", "1 when the needle was recalled (needle prompts; nan otherwise)"}};
    t.columns.insert(t.columns.end(), closed.begin(), closed.end());
    return t;
  }();
  return s;
}

}  // namespace kvsim::report
