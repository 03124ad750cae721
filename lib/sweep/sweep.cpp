#include "sweep/sweep.h"

#include <omp.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <optional>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/output_folder.h"
#include "core/progress.h"
#include "core/sysinfo.h"
#include "sweep/sweep_merge.h"
#include "sweep/sweep_plan.h"
#include "sweep/sweep_unit.h"

namespace kvsim {

using json = nlohmann::json;

std::string SweepComm::host() const {
  char name[256] = {};
  return gethostname(name, sizeof name - 1) == 0 ? name : "?";
}

namespace {

class LocalComm : public SweepComm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  long long next_unit() override { return next_++; }
  void barrier() override {}
  void broadcast(std::string&) override {}
  std::vector<std::string> gather(const std::string& text) override { return {text}; }

 private:
  long long next_ = 0;
};

// The units folder: the sweep's working state. --force discards it; otherwise each unit is
// recomputed (and rewritten atomically) unless --resume finds it finished with the same key.
void prepare_units_folder(const SweepOptions& opt) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (opt.force) fs::remove_all(opt.out_dir + "/units", ec);
  if (!opt.resume && fs::is_directory(opt.out_dir + "/units", ec)) {
    int finished = 0;
    for (const auto& e : fs::directory_iterator(opt.out_dir + "/units", ec))
      finished += fs::exists(e.path() / "unit.json", ec);
    if (finished > 0)
      std::cerr << "kvsim sweep: note: " << opt.out_dir << "/units holds " << finished
                << " finished units of an earlier run; they are recomputed (--resume reuses them)\n";
  }
  fs::create_directories(opt.out_dir + "/units", ec);
  if (ec) fail(opt.out_dir, "--out", "cannot create the units folder: " + ec.message());
}

}  // namespace

std::unique_ptr<SweepComm> make_local_comm() { return std::make_unique<LocalComm>(); }

int run_sweep(const SweepOptions& opt, SweepComm& comm, std::ostream& table) {
  Stopwatch wall;
  if (opt.traces.empty()) fail("--traces", "", "no trace to sweep");
  if (opt.replay.save_selection) fail("--save-selection", "", "not available in a sweep (use kvsim replay on one trace)");
  set_thread_count(opt.replay.threads);

  // Rank 0 holds the folder (locked until it returns) and plans; everyone gets the same plan.
  std::optional<OutputFolder> folder;
  std::string plan_text, setup_error;
  if (comm.rank() == 0) {
    try {
      folder.emplace("kvsim sweep", opt.out_dir, "sweep.json");
      const std::string repeated = repeated_budgets_note(opt.replay.budgets);
      if (!repeated.empty()) std::cerr << "kvsim sweep: note: " << repeated << "\n";
      prepare_units_folder(opt);
      plan_text = plan_to_json(plan_traces(opt));
    } catch (const Error& e) {
      setup_error = e.what();
    }
  }
  std::string packed = json{{"plan", plan_text}, {"error", setup_error}}.dump();
  comm.broadcast(packed);
  const json got = json::parse(packed);
  if (!got.at("error").get<std::string>().empty()) throw Error(got.at("error").get<std::string>());
  const std::vector<TracePlan> plan = plan_from_json(got.at("plan").get<std::string>());
  const std::vector<SweepUnit> units = plan_units(opt, plan);

  // Units from a shared counter; each process reads only the layers of its units.
  std::optional<Progress> progress;  // rank 0 speaks for the sweep
  if (comm.rank() == 0) progress.emplace("sweep", static_cast<std::int64_t>(units.size()));
  json mine = json::array();
  double busy = 0;
  int done = 0;
  for (long long i = comm.next_unit(); i < static_cast<long long>(units.size()); i = comm.next_unit()) {
    const SweepUnit& u = units[static_cast<std::size_t>(i)];
    if (opt.resume) {
      auto old = load_unit(opt.out_dir, u);
      if (old && old->status == "ok") {
        mine.push_back({{"index", i}, {"resumed", true}});
        if (progress) progress->advance();
        continue;
      }
    }
    if (progress) progress->set_note(u.id);
    const UnitRecord r = run_unit(opt, plan[static_cast<std::size_t>(u.trace)], u, comm.rank(), comm.host());
    busy += r.seconds;
    ++done;
    mine.push_back({{"index", i}, {"resumed", false}});
    if (progress) progress->advance();
  }
  const json stats = {{"rank", comm.rank()}, {"host", comm.host()}, {"units", done}, {"busy", busy},
                      {"wall", wall.seconds()}, {"done", mine}};
  const std::vector<std::string> all = comm.gather(stats.dump());
  comm.barrier();  // every unit file is on disk
  if (comm.rank() != 0) return 0;

  std::vector<RankStats> ranks;
  std::vector<bool> resumed(units.size(), false);
  for (const auto& text : all) {
    const json s = json::parse(text);
    ranks.push_back({s.at("rank"), s.at("host"), s.at("units"), s.at("busy"), s.at("wall")});
    for (const auto& d : s.at("done")) resumed[d.at("index").get<std::size_t>()] = d.at("resumed");
  }
  std::vector<UnitRecord> records;
  for (std::size_t i = 0; i < units.size(); ++i) {
    auto r = load_unit(opt.out_dir, units[i]);
    if (!r) {
      UnitRecord missing;
      missing.status = "failed";
      missing.error = unit_dir(opt.out_dir, units[i]) + ": no unit record (a process stopped before finishing it)";
      r = missing;
    }
    r->resumed = resumed[i];
    records.push_back(*r);
  }
  const int failed = merge_sweep(opt, *folder, plan, units, records, ranks, wall.seconds(), table);
  return failed == 0 ? 0 : 1;
}

}  // namespace kvsim
