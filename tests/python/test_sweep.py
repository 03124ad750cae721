"""kvsim sweep on one process and on MPI ranks (kvsim-mpi under OpenMPI's mpirun):

- rows identical to a single-process `kvsim replay` of each trace, whatever the number of ranks
  (1, 2, 3), with a trace split over several ranks (layer-range units);
- resume after a killed run: finished units are reused, the result is the same;
- a corrupt or missing trace in the list is reported in sweep.json, the others finish;
- the plain binary refuses to run N copies under mpirun; kvsim report reads a sweep folder;
- per-trace folders never collide (equal file names, names of the sweep's own outputs), a sweep
  into a folder holding an earlier one replaces its results, and a folder another run holds is
  refused at once (one process, no MPI needed).
"""
import fcntl
import csv
import io
import json
import tempfile
import os
import shutil
import signal
import subprocess
import time
import unittest

import dump_testutil as tu

KVSIM = os.environ.get("KVSIM_CLI", "")
KVSIM_MPI = os.path.join(os.path.dirname(KVSIM), "kvsim-mpi")
TRACES = [os.path.join(tu.TRACES_DIR, "niah_stories260k.h5"), os.path.join(tu.TRACES_DIR, "longbench_stories260k.h5")]
# kvcompose allocates across layers: a unit of 2 layers must plan over all 5, as the replay does.
RULES = "snapkv;critical(ada(snapkv));tova(variant=stepwise);keydiff(block=128);kvcompose"
BUDGETS = "0.1,cr=0.5"
ENV = dict(os.environ, KVSIM_PROGRESS="0", OMPI_MCA_rmaps_base_oversubscribe="1")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, **kw)


def mpirun(n, *args):
    return run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(n), KVSIM_MPI, *args])


def summary_aggregates(path):
    with open(path) as fh:
        rules = json.load(fh)["rules"]
    return [[{k: v for k, v in b.items() if k != "select_seconds"} for b in r["budgets"]] for r in rules]


def children_named(parent, name):
    """Pids of the processes whose parent is `parent` and whose command is `name`."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if int(rest[1]) == parent and comm == name[:15]:
            out.append(int(pid))
    return out


def alive(pid):
    """Running (a zombie nobody has reaped yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@unittest.skipUnless(shutil.which("mpirun") and os.path.exists(KVSIM_MPI), "needs OpenMPI (mpirun) and kvsim-mpi")
class SweepTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tu.TempDir()
        cls.dir = cls.tmp.__enter__()
        cls.reference = {}
        for t in TRACES:
            out = os.path.join(cls.dir, "replay_" + os.path.basename(t))
            r = run([KVSIM, "replay", t, "--rules", RULES, "--budgets", BUDGETS, "--per-query", "--out", out])
            assert r.returncode == 0, r.stderr
            cls.reference[t] = out

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def check_same_as_replay(self, out):
        for t in TRACES:
            label = os.path.splitext(os.path.basename(t))[0]
            ref = self.reference[t]
            for f in ("metrics.csv", "metrics_per_query.csv"):
                with open(os.path.join(out, label, f), "rb") as a, open(os.path.join(ref, f), "rb") as b:
                    self.assertEqual(a.read(), b.read(), f"{label}/{f}")
            self.assertEqual(summary_aggregates(os.path.join(out, label, "summary.json")),
                             summary_aggregates(os.path.join(ref, "summary.json")))
        # The merged table: every trace's rows with the trace label in front.
        with open(os.path.join(out, "sweep_metrics.csv")) as fh:
            rows = list(csv.reader(fh))
        with open(os.path.join(self.reference[TRACES[0]], "metrics.csv")) as fh:
            header = next(csv.reader(fh))
        self.assertEqual(rows[0], ["trace"] + header)
        n = 0
        for t in TRACES:
            with open(os.path.join(self.reference[t], "metrics.csv")) as fh:
                n += sum(1 for _ in fh) - 1
        self.assertEqual(len(rows) - 1, n)

    def test_ranks_give_identical_rows(self):
        for n in (1, 2, 3):
            with self.subTest(ranks=n):
                out = os.path.join(self.dir, f"mpi{n}")
                r = mpirun(n, "sweep", "--traces", ",".join(TRACES), "--rules", RULES, "--budgets", BUDGETS,
                           "--per-query", "--layers-per-unit", "2", "--out", out)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.check_same_as_replay(out)
                with open(os.path.join(out, "sweep.json")) as fh:
                    sweep = json.load(fh)
                self.assertEqual(sweep["ranks"], n)
                self.assertEqual(len(sweep["units"]), 6)  # 2 traces x ceil(5 layers / 2)
                self.assertEqual(sum(s["units"] for s in sweep["rank_stats"]), 6)
                if n > 1:  # the counter spread the units: more than one rank worked
                    self.assertGreater(sum(1 for s in sweep["rank_stats"] if s["units"] > 0), 1)
                self.assertEqual(sweep["failures"], {"traces": 0, "units": 0})
        # The plain binary is the same sweep on one process.
        out = os.path.join(self.dir, "single")
        r = run([KVSIM, "sweep", "--traces", ",".join(TRACES), "--rules", RULES, "--budgets", BUDGETS, "--per-query",
                 "--layers-per-unit", "2", "--out", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_same_as_replay(out)
        report = os.path.join(self.dir, "sweep.html")
        r = run([KVSIM, "report", out, "--out", report])
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(report) as fh:
            html = fh.read()
        self.assertIn('id="sweep1-cross-table"', html)
        self.assertIn("Sweep 1, trace longbench_stories260k", html)

    def test_resume_after_a_killed_run(self):
        out = os.path.join(self.dir, "killed")
        args = [KVSIM, "sweep", "--traces", ",".join(TRACES), "--rules", RULES, "--budgets", BUDGETS, "--per-query",
                "--layers-per-unit", "1", "--threads", "1", "--nu-cache", "off", "--out", out]
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        done = lambda: sum(os.path.exists(os.path.join(out, "units", u, "unit.json"))  # noqa: E731
                           for u in (os.listdir(os.path.join(out, "units")) if os.path.isdir(os.path.join(out, "units")) else []))
        deadline = time.time() + 60
        while done() < 3 and p.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
        p.wait()
        finished = done()
        self.assertGreaterEqual(finished, 3)
        self.assertLess(finished, 10, "the run finished before it could be killed")
        self.assertFalse(os.path.exists(os.path.join(out, "sweep.json")))  # nothing looks complete
        for t in TRACES:
            label = os.path.splitext(os.path.basename(t))[0]
            self.assertFalse(os.path.exists(os.path.join(out, label, "metrics.csv")))
        r = run(args + ["--resume"])
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "sweep.json")) as fh:
            sweep = json.load(fh)
        self.assertEqual(sweep["resumed_units"], finished)
        self.assertEqual(sum(u["resumed"] for u in sweep["units"]), finished)
        self.check_same_as_replay(out)

    def test_ranks_end_when_mpirun_is_killed(self):
        # Units of ~20 s each (one 16K-position layer with 4K stored queries per rank), so a rank
        # that outlives mpirun is seen running long after the kill.
        trace = os.path.join(self.dir, "long_units.h5")
        r = run([KVSIM, "synth", "--out", trace, "--layers", "2", "--heads", "8", "--kv-heads", "2", "--head-dim",
                 "64", "--hidden", "512", "--seq-len", "16384", "--window", "64", "--gen-len", "4096"])
        self.assertEqual(r.returncode, 0, r.stderr)
        out = os.path.join(self.dir, "orphans")
        args = ["sweep", "--traces", trace, "--rules", "critical(ada(snapkv));tova(variant=stepwise)", "--budgets",
                "0.1,0.2", "--layers-per-unit", "1", "--threads", "1", "--nu-cache", "off", "--out", out]
        p = subprocess.Popen(["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", KVSIM_MPI, *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        try:
            deadline = time.time() + 60
            ranks = []
            while time.time() < deadline and p.poll() is None:  # the state: both ranks inside a unit
                ranks = children_named(p.pid, "kvsim-mpi")
                if len(ranks) == 2 and len(tu.partial_files(os.path.join(out, "units"))) >= 2:
                    break
                time.sleep(0.02)
            self.assertEqual(len(ranks), 2, "the ranks never started")
            self.assertGreaterEqual(len(tu.partial_files(os.path.join(out, "units"))), 2, "no rank started a unit")
            self.assertIsNone(p.poll(), "the sweep finished before mpirun could be killed")
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
        deadline = time.time() + 5  # a unit takes ~20 s: only a rank that stops on its own is gone by then
        while time.time() < deadline and any(alive(pid) for pid in ranks):
            time.sleep(0.02)
        left = [pid for pid in ranks if alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        self.assertEqual(left, [], "ranks outlived mpirun")
        self.assertEqual(tu.partial_files(out), [])  # their SIGTERM handler removed the partial files
        self.assertFalse(os.path.exists(os.path.join(out, "sweep.json")))

    def test_bad_traces_are_reported_and_the_rest_finish(self):
        corrupt = os.path.join(self.dir, "corrupt.h5")
        with open(TRACES[0], "rb") as src, open(corrupt, "wb") as dst:
            dst.write(src.read()[:100000])  # truncated
        missing = os.path.join(self.dir, "missing.h5")
        listing = os.path.join(self.dir, "traces.txt")
        with open(listing, "w") as fh:
            fh.write(f"# a study\n{TRACES[0]}\n{corrupt}\n\n{missing}\n{TRACES[1]}\n")
        out = os.path.join(self.dir, "bad")
        r = mpirun(2, "sweep", "--trace-list", listing, "--rules", RULES, "--budgets", BUDGETS, "--per-query",
                   "--out", out)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        with open(os.path.join(out, "sweep.json")) as fh:
            sweep = json.load(fh)
        status = {t["label"]: (t["status"], t.get("error", "")) for t in sweep["traces"]}
        self.assertEqual(status["niah_stories260k"][0], "ok")
        self.assertEqual(status["longbench_stories260k"][0], "ok")
        self.assertEqual(status["corrupt"][0], "failed")
        self.assertIn("corrupt.h5", status["corrupt"][1])
        self.assertIn("no such file", status["missing"][1])
        self.assertEqual(sweep["failures"]["traces"], 2)
        self.check_same_as_replay(out)

    def test_plain_binary_refuses_mpirun(self):
        r = run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", KVSIM, "sweep", "--traces", TRACES[0],
                 "--rules", "snapkv", "--budgets", "0.1", "--out", os.path.join(self.dir, "plain")])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("use kvsim-mpi sweep", r.stderr)


class SweepFolderTest(unittest.TestCase):
    """kvsim sweep on one process: labels, the overwrite policy and the folder lock."""

    def setUp(self):
        self.tmp = tu.TempDir()
        self.dir = self.tmp.__enter__()

    def tearDown(self):
        self.tmp.__exit__(None, None, None)

    def trace_copy(self, rel, src=TRACES[0]):
        path = os.path.join(self.dir, "in", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copyfile(src, path)
        return path

    def sweep(self, traces, out, *extra):
        return run([KVSIM, "sweep", "--traces", ",".join(traces), "--rules", "snapkv;tova", "--budgets", "0.1",
                    "--out", out, *extra])

    def test_colliding_names_get_their_own_folders(self):
        traces = [self.trace_copy("a/niah.h5"), self.trace_copy("b/niah-2.h5", TRACES[1]),
                  self.trace_copy("c/niah.h5", TRACES[1]), self.trace_copy("d/sweep_metrics.csv.h5"),
                  self.trace_copy("e/nu-cache.h5"), self.trace_copy("f/sweep.json.h5")]
        out = os.path.join(self.dir, "out")
        r = self.sweep(traces, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "sweep.json")) as fh:
            labels = [t["label"] for t in json.load(fh)["traces"]]
        self.assertEqual(labels, ["niah", "niah-2", "niah-3", "trace_sweep_metrics.csv", "trace_nu-cache",
                                  "trace_sweep.json"])
        per_trace = {}
        for label, src in zip(labels, [TRACES[0], TRACES[1], TRACES[1], TRACES[0], TRACES[0], TRACES[0]]):
            with open(os.path.join(out, label, "metrics.csv")) as fh:
                per_trace[label] = fh.read()
            with open(os.path.join(out, label, "summary.json")) as fh:
                self.assertEqual(os.path.basename(json.load(fh)["trace"]["path"]),
                                 os.path.basename(traces[labels.index(label)]))
        self.assertNotEqual(per_trace["niah"], per_trace["niah-2"])  # two different traces, two folders
        with open(os.path.join(out, "sweep_metrics.csv")) as fh:
            rows = list(csv.reader(fh))[1:]
        for label in labels:
            self.assertEqual(sum(1 for row in rows if row[0] == label), per_trace[label].count("\n") - 1, label)

    def test_an_earlier_sweep_is_replaced_after_success(self):
        a, b = self.trace_copy("a/one.h5"), self.trace_copy("b/two.h5", TRACES[1])
        out = os.path.join(self.dir, "out")
        r = self.sweep([a, b], out, "--per-query")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("were replaced", r.stderr)
        self.assertTrue(os.path.exists(os.path.join(out, "one", "metrics_per_query.csv")))
        r = self.sweep([a], out)  # no --resume or --force needed: the same policy as kvsim replay
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("finished units of an earlier run; they are recomputed (--resume reuses them)", r.stderr)
        self.assertIn("held the results of an earlier run (sweep.json); they were replaced", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(out, "two")), "a trace of the earlier sweep only")
        self.assertFalse(os.path.exists(os.path.join(out, "one", "metrics_per_query.csv")))
        with open(os.path.join(out, "sweep.json")) as fh:
            units = sorted(u["id"] for u in json.load(fh)["units"])
        self.assertEqual(sorted(os.listdir(os.path.join(out, "units"))), units)
        with open(os.path.join(out, "sweep_metrics.csv")) as fh:
            self.assertEqual({row[0] for row in list(csv.reader(fh))[1:]}, {"one"})

    def test_report_never_leaves_the_sweep_folder(self):
        out = os.path.join(self.dir, "out")
        r = self.sweep([self.trace_copy("a/one.h5")], out)
        self.assertEqual(r.returncode, 0, r.stderr)
        shutil.copytree(os.path.join(out, "one"), os.path.join(self.dir, "elsewhere"))
        with open(os.path.join(out, "sweep.json")) as fh:
            sweep = json.load(fh)
        sweep["traces"][0]["label"] = "../elsewhere"  # an edited sweep.json
        with open(os.path.join(out, "sweep.json"), "w") as fh:
            json.dump(sweep, fh)
        html = os.path.join(self.dir, "r.html")
        r = run([KVSIM, "report", out, "--out", html])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("sweep.json: traces[].label: '../elsewhere' is not a folder name inside the sweep folder",
                      r.stderr)
        self.assertFalse(os.path.exists(html))

    def test_a_folder_another_run_holds_is_refused(self):
        out = os.path.join(self.dir, "out")
        os.makedirs(out)
        fd = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running kvsim holds it
            r = self.sweep([TRACES[0]], out)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("another kvsim run is writing this folder", r.stderr)
            self.assertEqual(os.listdir(out), [])
        finally:
            os.close(fd)


if __name__ == "__main__":
    unittest.main()


class StudyConfigTest(unittest.TestCase):
    def test_study_file_equals_the_command_line_and_is_recorded(self):
        """kvsim sweep --config study.toml gives the rows of the same options on the command line;
        options on the command line override the file; sweep.json records the file; a key that is
        not an option is an error naming the file and the key."""
        with tempfile.TemporaryDirectory() as d:
            study = os.path.join(d, "study.toml")
            with open(study, "w") as fh:
                fh.write(f'# study\ntraces = {json.dumps(TRACES)}\nrules = ["snapkv@kvpress", "streaming"]\n'
                         'budgets = [0.1, "cr=0.5"]\nlayers = "0-3"\nper_query = true\n')
            a = run([KVSIM, "sweep", "--config", study, "--layers", "1-2", "--out", os.path.join(d, "a")])
            self.assertEqual(a.returncode, 0, a.stderr)
            b = run([KVSIM, "sweep", "--traces", ",".join(TRACES), "--rules", "snapkv@kvpress;streaming", "--budgets",
                     "0.1,cr=0.5", "--layers", "1-2", "--per-query", "--out", os.path.join(d, "b")])
            self.assertEqual(b.returncode, 0, b.stderr)
            for f in ("sweep_metrics.csv", "niah_stories260k/metrics_per_query.csv"):
                with open(os.path.join(d, "a", f)) as x, open(os.path.join(d, "b", f)) as y:
                    self.assertEqual(x.read(), y.read(), f)
            with open(os.path.join(d, "a", "sweep.json")) as fh:
                j = json.load(fh)
            self.assertEqual(j["config"]["settings"]["budgets"], [0.1, "cr=0.5"])
            self.assertEqual(j["options"]["layers"], "1-2")
            self.assertTrue(j["source_revision"])
            with open(study, "a") as fh:
                fh.write("bogus = 1\n")
            c = run([KVSIM, "sweep", "--config", study, "--out", os.path.join(d, "c")])
            self.assertEqual(c.returncode, 1)
            self.assertIn(f"{study}: bogus: not an option of kvsim sweep", c.stderr)
            self.assertFalse(os.path.exists(os.path.join(d, "c", "sweep.json")))
