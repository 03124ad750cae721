"""Hostile input: no hang, no blow-up, no file clobbered, no NaN with exit 0.

- every file in ../shared/fuzz-regressions (HDF5 files that made HDF5 1.10 loop, allocate
  gigabytes or crash) gives a one-line error naming the file, exit 1, within 5 s and 1 GiB, through
  `kvsim validate`, `kvsim info` and `kvsim replay`; the fuzz target's file driver survives them all;
- the bad-input tour: one table row per input class -> exit code -> message, each a single stderr
  line, and no output folder left looking complete (no summary.json);
- --threads and OMP_NUM_THREADS are bounded; deep spec nesting and non-ASCII specs give short,
  valid UTF-8 messages; finite values near the float32 maximum are refused, not turned into NaN;
- outputs are never renamed over devices, fifos, folders or links; SIGTERM leaves no .partial;
- kvsim prefill gives byte-identical files with 1 and 2 threads.
"""
import concurrent.futures
import csv
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import unittest

import numpy as np

import dump_testutil as tu

try:
    import h5py
except ImportError as e:  # pragma: no cover
    raise unittest.SkipTest(f"needs h5py ({e.name} missing)")

KVSIM = os.environ.get("KVSIM_CLI", os.path.join(os.environ.get("KVSIM_BINARY_DIR", ""), "tools", "kvsim"))
FUZZ_REPLAY = os.environ.get("KVSIM_FUZZ_REPLAY", "")
REGRESSIONS = os.path.join(tu.SHARED_DIR, "fuzz-regressions")
FOUND_HERE = os.path.join(tu.SOURCE_DIR, "tests", "fuzz", "regressions")  # what our own fuzzing found
NIAH = os.path.join(tu.TRACES_DIR, "niah_stories260k.h5")
GiB = 1 << 30


def run_measured(args, timeout, env=None):
    """(returncode, stdout, stderr, seconds)."""
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="strict",
                         env=dict(os.environ, KVSIM_PROGRESS="0", **(env or {})))
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError(f"{' '.join(args)} did not finish in {timeout} s")
    seconds = time.monotonic() - t0
    return p.returncode, out, err, seconds


def kvsim(*args, env=None):
    r = subprocess.run([KVSIM, *map(str, args)], capture_output=True, text=True,
                       env=dict(os.environ, KVSIM_PROGRESS="0", **(env or {})))
    return r.returncode, r.stdout, r.stderr


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.strip()]


class FuzzRegressionsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.isdir(REGRESSIONS):
            raise unittest.SkipTest(f"{REGRESSIONS} is not there")
        cls.files = sorted(os.path.join(d, f) for d in (REGRESSIONS, FOUND_HERE) for f in os.listdir(d)
                           if f != "README.md")
        cls.tmp = tu.TempDir()
        cls.dir = cls.tmp.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def check_clean_error(self, args, path, env=None, limit_s=5.0):
        rc, out, err, seconds = run_measured(args, timeout=30, env=env)
        name = os.path.basename(path)
        self.assertEqual(rc, 1, f"{args[1]} {name}: rc {rc}\n{err}")
        self.assertLess(seconds, limit_s, f"{args[1]} {name}: {seconds:.1f} s")
        lines = error_lines(err)
        self.assertEqual(len(lines), 1, f"{args[1]} {name}: {err}")
        self.assertIn(name, lines[0] + out)
        return seconds

    def test_validate_each_file_in_bounded_time_and_memory(self):
        """Default limits: each file ends in a clear error within 5 s; the process tree stays under
        1 GiB (each file in its own process, its peak read from wait4)."""
        def one(path):
            t0 = time.monotonic()
            p = subprocess.Popen([KVSIM, "validate", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
            out, err = p.communicate(timeout=30)
            return path, p.returncode, out, err, time.monotonic() - t0

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(one, self.files))
        worst = 0
        for path, rc, out, err, seconds in results:
            name = os.path.basename(path)
            self.assertEqual(rc, 1, f"{name}: rc {rc}\n{err}")
            self.assertLess(seconds, 5.0, name)
            self.assertEqual(len(error_lines(err)), 1, f"{name}: {err}")
            self.assertIn(name, out + err)
            worst = max(worst, seconds)
        print(f"\n{len(results)} regression files, slowest validate {worst:.2f} s")

    def test_memory_of_each_file(self):
        for path in self.files:
            pid = os.fork()
            if pid == 0:  # a fresh process per file, so ru_maxrss is this file's peak
                r = subprocess.run([KVSIM, "validate", path], capture_output=True,
                                   env=dict(os.environ, KVSIM_PREFLIGHT_SECONDS="1"))
                os._exit(0 if r.returncode == 1 else 3)
            _, status, usage = os.wait4(pid, 0)
            self.assertEqual(os.waitstatus_to_exitcode(status), 0, path)
            # ru_maxrss of a child includes its waited-for descendants (the preflight child too).
            self.assertLess(usage.ru_maxrss * 1024, GiB, f"{os.path.basename(path)}: {usage.ru_maxrss} KiB")

    def test_info_and_replay(self):
        env = {"KVSIM_PREFLIGHT_SECONDS": "0.5"}  # the limit is a setting; 3 s by default
        out = os.path.join(self.dir, "out")
        for path in self.files:
            self.check_clean_error([KVSIM, "info", path], path, env)
            self.check_clean_error([KVSIM, "replay", path, "--rules", "snapkv", "--budgets", "0.1", "--out", out],
                                   path, env)
            self.assertFalse(os.path.exists(os.path.join(out, "summary.json")))

    def test_fuzz_target_driver(self):
        if not FUZZ_REPLAY:
            self.skipTest("KVSIM_FUZZ_REPLAY not set (run through ctest)")
        r = subprocess.run([FUZZ_REPLAY, REGRESSIONS, FOUND_HERE, tu.TRACES_DIR], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, KVSIM_PREFLIGHT_SECONDS="0.5"))
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertIn(f"{len(self.files) + 2} inputs", r.stdout)


class BadInputTourTest(unittest.TestCase):
    """Input class -> command -> exit code -> what the single error line says."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tu.TempDir()
        d = cls.dir = cls.tmp.__enter__()
        cls.text = os.path.join(d, "notes.txt")
        with open(cls.text, "w") as fh:
            fh.write("not a trace\n")
        with open(NIAH, "rb") as fh:
            head = fh.read(20000)
        cls.truncated = os.path.join(d, "truncated.h5")
        with open(cls.truncated, "wb") as fh:
            fh.write(head)
        # Small float32 traces to edit: one untouched, one per defect.
        cls.small = os.path.join(d, "small.h5")
        r = subprocess.run([KVSIM, "synth", "--out", cls.small, "--layers", "2", "--heads", "4", "--kv-heads", "2",
                            "--head-dim", "16", "--hidden", "64", "--seq-len", "256", "--question-len", "8",
                            "--gen-len", "8", "--window", "32"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        cls.edited = {}
        for name, edit in (("nan", cls.put_nan), ("huge_k", cls.huge("k")), ("huge_o_proj", cls.huge("o_proj")),
                           ("no_q_pos", cls.drop_q_pos), ("bad_shape", cls.bad_shape)):
            p = os.path.join(d, f"{name}.h5")
            shutil.copy(cls.small, p)
            with h5py.File(p, "r+") as f:
                edit(f)
            cls.edited[name] = p
        cls.good = os.path.join(d, "good")  # a finished replay for the report rows
        r = subprocess.run([KVSIM, "replay", cls.small, "--rules", "snapkv", "--budgets", "0.2", "--out", cls.good],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        cls.fifo = os.path.join(d, "fifo")
        os.mkfifo(cls.fifo)
        cls.make_foreign_traces(d)
        cls.link = os.path.join(d, "link.html")
        os.symlink(cls.text, cls.link)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    @classmethod
    def make_foreign_traces(cls, d):
        """Traces whose data would come from elsewhere: refused, naming the object (soft links stay fine)."""
        def edited(name, edit, **create):
            p = os.path.join(d, f"{name}.h5")
            if create:  # a new file with creation properties, the small trace's content copied in
                with h5py.File(cls.small, "r") as src, h5py.File(p, "w", **create) as dst:
                    for key in src:
                        src.copy(src[key], dst, name=key)
                    dst.attrs.update(src.attrs)
            else:
                shutil.copy(cls.small, p)
            with h5py.File(p, "r+") as f:
                edit(f)
            cls.edited[name] = p

        def relink(target):
            def edit(f):
                del f["layers/1"]
                f["layers/1"] = h5py.ExternalLink(target, "/layers/0")
            return edit

        def external_raw(f):
            k = f["layers/1/k"][()]
            k.tofile(os.path.join(d, "raw_k.bin"))
            del f["layers/1/k"]
            f.create_dataset("layers/1/k", shape=k.shape, dtype=k.dtype,
                             external=[("raw_k.bin", 0, h5py.h5f.UNLIMITED)])

        def soft(f):
            f["alias_of_layer_0"] = h5py.SoftLink("/layers/0")

        edited("external_link", relink("small.h5"))
        edited("external_fifo", relink("fifo"))
        edited("external_raw", external_raw)
        edited("soft_link", soft)
        edited("user_block", lambda f: None, userblock_size=512)

    @staticmethod
    def put_nan(f):
        k = f["layers/1/k"][()]
        k[1, 5, 3] = np.nan
        f["layers/1/k"][...] = k

    @staticmethod
    def huge(tensor):
        def edit(f):
            x = f[f"layers/1/{tensor}"][()].astype(np.float64)
            f[f"layers/1/{tensor}"][...] = (x / np.abs(x).max() * 3e38).astype(np.float32)  # finite float32
        return edit

    @staticmethod
    def drop_q_pos(f):
        del f["q_pos"]

    @staticmethod
    def bad_shape(f):
        k = f["layers/0/k"][()]
        del f["layers/0/k"]
        f["layers/0/k"] = k[:, :-1]

    def table(self):
        out = os.path.join(self.dir, "out")
        replay = ["replay", self.small, "--out", out, "--budgets", "0.2", "--rules"]
        deep = "ada(" * 20000 + "snapkv" + ")" * 20000

        def rep(trace):
            return ["replay", trace, "--rules", "snapkv", "--budgets", "0.2", "--out", out]
        e = self.edited
        return [
            # (input class, args, env, exit code, message substring)
            ("missing trace", ["validate", "/nonexistent/x.h5"], None, 1, "no such file"),
            ("folder as trace", ["info", self.dir], None, 1, "is a directory"),
            ("text file as trace", rep(self.text), None, 1,
             "not an HDF5 file"),
            ("truncated trace", rep(self.truncated), None, 1, "truncated.h5"),
            ("missing dataset", rep(e["no_q_pos"]), None, 1,
             "/q_pos: missing required dataset"),
            ("wrong shape", rep(e["bad_shape"]), None, 1,
             "/layers/0/k: shape"),
            ("NaN in a tensor", rep(e["nan"]), None, 1,
             "/layers/1/k: 1 non-finite value"),
            ("finite values near 3e38 (k)", replay + ["snapkv"], None, 0, ""),  # the clean trace: sanity row
            ("finite values near 3e38 (k)", rep(e["huge_k"]), None, 1,
             "/layers/1/k: values up to 3e+38"),
            ("finite values near 3e38 (o_proj)", rep(e["huge_o_proj"]),
             None, 1, "/layers/1/o_proj: values up to 3e+38"),
            ("finite values near 3e38, validate", ["validate", e["huge_k"]], None, 1, ""),
            ("external link", rep(e["external_link"]), None, 1,
             "/layers/1: an external link to small.h5:/layers/0 (a trace must be self-contained)"),
            ("external link, validate", ["validate", e["external_link"]], None, 1, "/layers/1: an external link"),
            ("external link to a fifo", rep(e["external_fifo"]), None, 1, "/layers/1: an external link to fifo"),
            ("external raw storage", rep(e["external_raw"]), None, 1,
             "/layers/1/k: its raw data is stored in an external file"),
            ("user block", rep(e["user_block"]), None, 1, "@userblock: 512 bytes"),
            ("soft link inside the file", rep(e["soft_link"]), None, 0, ""),
            ("unknown rule", replay + ["snapkw"], None, 1, "snapkw"),
            ("unknown parameter", replay + ["snapkv(windw=3)"], None, 1, "unknown parameter 'windw'"),
            ("non-ASCII in a spec", replay + ["snapkv(wíndow=3)"], None, 1, "found 'í'"),
            ("spec nested 20000 deep", replay + [deep], None, 1, "nested more than 32 deep"),
            ("budget above 1", ["replay", self.small, "--rules", "snapkv", "--budgets", "1.5", "--out", out], None, 1,
             "must be in (0, 1]"),
            ("budget overflow", ["replay", self.small, "--rules", "snapkv", "--budgets", "99999999999999999999",
                                 "--out", out], None, 1, "at most 2^53"),
            ("budget below the window", ["replay", self.small, "--rules", "snapkv", "--budgets", "2", "--out", out],
             None, 1, "protected"),
            ("--threads 100000", replay + ["snapkv", "--threads", "100000"], None, 1, "at most"),
            ("--threads 20000", replay + ["snapkv", "--threads", "20000"], None, 1, "at most"),
            ("--threads -1", replay + ["snapkv", "--threads", "-1"], None, 2, "must be >= 0"),
            ("OMP_NUM_THREADS=20000", ["prefill", self.small, "--out", out], {"OMP_NUM_THREADS": "20000"}, 1,
             "OMP_NUM_THREADS"),
            ("KVSIM_TILE_MIB=abc", replay + ["snapkv"], {"KVSIM_TILE_MIB": "abc"}, 1,
             "KVSIM_TILE_MIB: value: 'abc' is not a whole number of MiB"),
            ("KVSIM_TILE_MIB=0", replay + ["snapkv"], {"KVSIM_TILE_MIB": "0"}, 1, "KVSIM_TILE_MIB"),
            ("report onto a device", ["report", self.good, "--out", "/dev/full"], None, 1, "is a device"),
            ("report onto a fifo", ["report", self.good, "--out", self.fifo], None, 1, "is a fifo"),
            ("report onto a symlink", ["report", self.good, "--out", self.link], None, 1, "is a symbolic link"),
            ("report onto a folder", ["report", self.good, "--out", self.dir], None, 1, "is a folder"),
            ("unknown command", ["frobnicate"], None, 2, "unknown command"),
            ("missing option", ["replay", self.small, "--rules", "snapkv"], None, 2, "missing --budgets"),
            ("unknown option", ["replay", self.small, "--rulez", "snapkv"], None, 2, "rulez"),
        ]

    def test_tour(self):
        out = os.path.join(self.dir, "out")
        for what, args, env, code, msg in self.table():
            with self.subTest(what):
                if code:
                    shutil.rmtree(out, ignore_errors=True)
                rc, stdout, stderr = kvsim(*args, env=env)
                self.assertEqual(rc, code, f"{what}: {stderr}")
                if code:
                    lines = error_lines(stderr)
                    self.assertEqual(len(lines), 1, f"{what}: {stderr}")
                    self.assertLess(len(lines[0]), 600, what)
                    self.assertIn(msg, lines[0] + stdout, what)
                    self.assertFalse(os.path.exists(os.path.join(out, "summary.json")), what)
        self.assertTrue(os.path.exists("/dev/full") and not os.path.isfile("/dev/full"))
        self.assertTrue(os.path.islink(self.link))

    def test_info_escapes_control_characters(self):
        p = os.path.join(self.dir, "escapes.h5")
        shutil.copy(self.small, p)
        with h5py.File(p, "r+") as f:
            f.attrs["model"] = "model\x1b]0;retitled\x07\x1b[2J\nsecond line"
        rc, out, err = kvsim("info", p)
        self.assertEqual(rc, 0, err)
        self.assertNotIn("\x1b", out)
        self.assertNotIn("\x07", out)
        self.assertIn("model       model\\x1b]0;retitled\\x07\\x1b[2J\\x0asecond line", out)

    def test_repeated_budgets_are_replayed_once(self):
        out = os.path.join(self.dir, "repeated")
        rc, _, err = kvsim("replay", self.small, "--rules", "snapkv", "--budgets", "0.2,20%,0.3,0.2", "--out", out)
        self.assertEqual(rc, 0, err)
        self.assertIn("note: --budgets: 20%, 0.2 repeat earlier budgets; each budget is replayed once", err)
        with open(os.path.join(out, "metrics.csv"), newline="") as fh:
            budgets = {row["budget"] for row in csv.DictReader(fh)}
        self.assertEqual(budgets, {"0.2", "0.3"})

    def test_replacing_results_is_announced(self):
        out = os.path.join(self.dir, "again")
        for i in range(2):
            rc, _, err = kvsim("replay", self.small, "--rules", "snapkv", "--budgets", "0.2", "--out", out)
            self.assertEqual(rc, 0, err)
            self.assertEqual("held the results of an earlier run" in err, i == 1)

    def test_prefill_identical_for_1_and_2_threads(self):
        outs = []
        for t in ("1", "2"):
            d = os.path.join(self.dir, f"prefill{t}")
            rc, _, err = kvsim("prefill", NIAH, "--out", d, "--segment", "128", "--block", "16", "--budget", "256",
                               "--threshold", "256", env={"OMP_NUM_THREADS": t})
            self.assertEqual(rc, 0, err)
            outs.append(d)
        for name in ("metrics.csv", "locality.csv"):
            with open(os.path.join(outs[0], name), "rb") as a, open(os.path.join(outs[1], name), "rb") as b:
                self.assertEqual(a.read(), b.read(), name)


class SignalsTest(unittest.TestCase):
    def test_sigterm_leaves_no_partial(self):
        with tu.TempDir() as d:
            out = os.path.join(d, "out")
            p = subprocess.Popen([KVSIM, "replay", NIAH, "--rules", "all", "--budgets", "0.05,0.1,0.2,0.3",
                                  "--per-query", "--save-selection", "--out", out],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(
                    f.endswith(".partial") for f in (os.listdir(out) if os.path.isdir(out) else [])):
                time.sleep(0.05)
            self.assertIsNone(p.poll(), "the replay ended before it could be interrupted")
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=30)
            self.assertEqual(p.returncode, -signal.SIGTERM)
            self.assertIn("partial outputs removed", err)
            self.assertFalse(os.path.exists(out), "the folder this run created is removed with its partial files")

    def interrupt_at(self, phase, cmd, out):
        """Runs cmd with the dumper paused at `phase` (KVSIM_DUMP_PAUSE_AT), sends SIGTERM once it
        says it is there, and returns (exit code, stderr)."""
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, KVSIM_DUMP_PAUSE_AT=phase))
        seen = []
        for line in p.stderr:  # the state, not a sleep: the writer says where it waits
            seen.append(line)
            if f"paused at {phase}" in line:
                break
        self.assertIn(f"kvsim-dump: paused at {phase}\n", seen, f"{phase}: never reached: {''.join(seen)}")
        p.send_signal(signal.SIGTERM)
        err = p.stderr.read()
        p.stderr.close()
        p.wait(timeout=60)
        return p.returncode, err

    def test_sigterm_of_the_dumper_at_every_phase(self):
        for phase in ("created", "writing", "finish", "committed"):
            with self.subTest(phase), tu.TempDir() as d:
                out = os.path.join(d, "t.h5")
                rc, err = self.interrupt_at(phase, [tu.DUMP_SCRIPT, "--model", tu.CHECKPOINT, "--niah", "--niah-dir",
                                                    tu.ESSAYS_DIR, "--niah-length", "400", "--generate", "8",
                                                    "--out", out], out)
                self.assertEqual(rc, 130, err)
                self.assertEqual(tu.partial_files(out), [])
                self.assertEqual(sorted(os.listdir(d)), ["t.h5"] if phase == "committed" else [])
                if phase == "committed":  # renamed into place: complete, kept, and said so
                    self.assertIn(f"interrupted after {out} was written completely (kept)", err)
                    ran, code, text = tu.kvsim_validate(out)
                    self.assertTrue(ran and code == 0, text)
                else:
                    self.assertIn("interrupted; no trace written", err)

    def test_sigterm_during_the_float16_repack(self):
        """A float16 trace that overflowed is repacked as float32 in finish(): the repack's own
        temporary file goes with the partial file."""
        script = textwrap.dedent("""
            import sys
            import numpy as np
            from kvsim.dump import cli
            from kvsim.dump.trace_file import TraceFileWriter

            def run(out):
                meta = dict(num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4, hidden_size=8, model="m")
                w = TraceFileWriter(out, meta, 4, [3], dtype="float16", warn=lambda msg: None)
                k = np.ones((1, 4, 4), np.float32)
                w.write_kv(0, 0, k * 1e6, k)  # overflows float16: the whole trace becomes float32
                w.write_queries(0, 0, np.ones((2, 1, 4), np.float32))
                w.finish([1, 2, 3, 4], [0, 0, 0, 2])
                return 0

            sys.exit(cli.run_command("kvsim-dump", run, sys.argv[1], "no trace written", one_trace=True))
        """)
        with tu.TempDir() as d:
            out = os.path.join(d, "t.h5")
            rc, err = self.interrupt_at("repack", [sys.executable, "-c", script, out, tu.TOOLS_DIR], out)
            self.assertEqual(rc, 130, err)
            self.assertIn("interrupted; no trace written", err)
            self.assertEqual(os.listdir(d), [])  # neither the partial file nor its .repack


if __name__ == "__main__":
    unittest.main()
