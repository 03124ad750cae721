"""The Python API at its edges (issue: no silent loss):

- Ctrl-C during kvsim.replay raises KeyboardInterrupt within about a second (the engine polls
  Python's signals from its progress path) and leaves no partial file or created folder;
- KeyboardInterrupt and SystemExit raised inside a rule propagate as themselves;
- a rule's registration belongs to its object: unregister() removes only its own, replacing a
  name warns;
- only real (float, integer, bool) arrays are scores or masks; a mask over its budget is an error;
- Trace.meta decodes a non-UTF-8 model string like kvsim info (\\xNN), never UnicodeDecodeError;
- a full disk during selection.h5 is a KvsimError, later calls work, and the interpreter exits 0.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import unittest
import warnings

import numpy as np

import dump_testutil as tu

try:
    import h5py

    import kvsim
except ImportError as e:  # pragma: no cover
    raise unittest.SkipTest(f"needs the kvsim module in the project .venv ({e.name} missing; bash tools/build.sh)")

NIAH = os.path.join(tu.TRACES_DIR, "niah_stories260k.h5")


def knorm(layer):
    return -np.linalg.norm(layer.k, axis=-1)


class RuleEdgesTest(unittest.TestCase):
    def test_keyboard_interrupt_and_system_exit_propagate_as_themselves(self):
        for exc in (KeyboardInterrupt, SystemExit):
            def fn(layer, exc=exc):
                raise exc()
            r = kvsim.ScoreRule("edges_raises", fn)
            try:
                with self.assertRaises(exc):
                    kvsim.replay(NIAH, rules=[r], budgets=[0.2], layers=[0])
            finally:
                r.unregister()
        with self.assertRaises(kvsim.RuleError):  # an ordinary exception is still a RuleError
            r = kvsim.ScoreRule("edges_raises", lambda layer: 1 / 0)
            try:
                kvsim.replay(NIAH, rules=[r], budgets=[0.2], layers=[0])
            finally:
                r.unregister()

    def test_registration_is_owned_by_the_rule_object(self):
        a = kvsim.ScoreRule("edges_owned", knorm)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            b = kvsim.ScoreRule("edges_owned", lambda layer: -knorm(layer))
        self.assertEqual(len(caught), 1)
        self.assertIn("replaces an earlier rule of that name", str(caught[0].message))
        self.assertFalse(a.unregister(), "a no longer owns the name")
        df = kvsim.replay(NIAH, rules=["edges_owned"], budgets=[0.2], layers=[0])  # still b's
        self.assertGreater(len(df), 0)
        self.assertTrue(b.unregister())
        with self.assertRaises(kvsim.KvsimError):
            kvsim.replay(NIAH, rules=["edges_owned"], budgets=[0.2], layers=[0])

    def test_only_real_arrays_are_scores(self):
        cases = {"complex": lambda layer: knorm(layer).astype(np.complex64),
                 "string": lambda layer: knorm(layer).astype(str),
                 "object": lambda layer: knorm(layer).astype(object)}
        for what, fn in cases.items():
            with self.subTest(what):
                r = kvsim.ScoreRule("edges_dtype", fn)
                try:
                    with self.assertRaisesRegex(kvsim.KvsimError, "must be a real .float, integer or bool. array"):
                        kvsim.replay(NIAH, rules=[r], budgets=[0.2], layers=[0])
                finally:
                    r.unregister()
        r = kvsim.ScoreRule("edges_dtype", lambda layer: knorm(layer).astype(np.int32))  # integers are fine
        try:
            self.assertGreater(len(kvsim.replay(NIAH, rules=[r], budgets=[0.2], layers=[0])), 0)
        finally:
            r.unregister()

    def test_a_mask_over_its_budget_is_an_error(self):
        def keep_all(layer, budget):
            return np.ones((layer.num_kv_heads, layer.n_c), dtype=bool)
        r = kvsim.MaskRule("edges_over", keep_all)
        try:
            with self.assertRaisesRegex(kvsim.KvsimError, r"row 0 keeps \d+ tokens, more than the \d+ of the budget"):
                kvsim.replay(NIAH, rules=[r], budgets=[0.2], layers=[0])
        finally:
            r.unregister()

    def test_meta_decodes_invalid_utf8_like_the_cli(self):
        with tu.TempDir() as d:
            p = os.path.join(d, "t.h5")
            shutil.copy(NIAH, p)
            with h5py.File(p, "r+") as f:
                f.attrs["model"] = np.bytes_(b"model \xff\xfe end")
            meta = kvsim.open_trace(p).meta
            self.assertEqual(meta["model"], "model \\xff\\xfe end")


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys, kvsim
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))  # writes past 20 kB fail
    try:
        kvsim.replay(sys.argv[1], rules="snapkv;tova", budgets=[0.2, 0.3], out=sys.argv[2] + "/a",
                     return_selection=True)
        print("no error")
    except kvsim.KvsimError as e:
        print("KvsimError", "selection.h5" in str(e) and "write failed" in str(e))
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    df = kvsim.replay(sys.argv[1], rules="snapkv", budgets=[0.2], out=sys.argv[2] + "/b", return_selection=True)
    print("later call", len(df.metrics) > 0 and len(df.selection) > 0)
""")


class BlasTest(unittest.TestCase):
    def test_the_engine_runs_the_cpus_blas_kernels_unless_asked_otherwise(self):
        code = "import kvsim, json; print(json.dumps(kvsim.blas()))"
        levels = {"SkylakeX": 3, "Cooperlake": 3, "SapphireRapids": 3, "Haswell": 2, "Zen": 2}
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "KVSIM_BLAS_CORETYPE")}

        def blas(**extra):
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(env, **extra))
            self.assertEqual(r.returncode, 0, r.stderr)
            return json.loads(r.stdout)
        from kvsim import _blas
        chosen = blas()
        self.assertGreaterEqual(levels.get(chosen["core"], 0), levels.get(_blas.cpu_coretype(), 0), chosen)
        self.assertIn("OpenBLAS 0.", chosen["config"])
        user = blas(OPENBLAS_CORETYPE="Prescott")
        self.assertEqual((user["core"], user["chosen_by"]), ("Prescott", "OPENBLAS_CORETYPE"))
        native = blas(KVSIM_BLAS_CORETYPE="native")
        self.assertEqual(native["chosen_by"], "OpenBLAS")
        # The module keeps what OpenBLAS picks unless it is below the CPU, as the CLI does: both run
        # the same kernels, so their rows agree bit for bit (test_module compares them).
        cli = subprocess.run([os.environ.get("KVSIM_CLI", "kvsim"), "--version"], capture_output=True, text=True,
                             env=env)
        self.assertEqual(cli.returncode, 0, cli.stderr)
        self.assertIn(f"core {chosen['core']} (", cli.stdout)
        if _blas.core_level(native["core"]) >= _blas.core_level(_blas.cpu_coretype()):
            self.assertEqual((chosen["core"], chosen["chosen_by"]), (native["core"], "OpenBLAS"))
        # The mirror of blas_core_level agrees with the engine's.
        import kvsim._kvsim as engine
        for core in ["Prescott", "Core2", "Nehalem", "Atom", "SandyBridge", "Haswell", "Zen", "SkylakeX",
                     "Cooperlake", "SapphireRapids", "skylake", "EXCAVATOR", "unknown"]:
            self.assertEqual(_blas.core_level(core), engine._blas_core_level(core), core)


class FullDiskTest(unittest.TestCase):
    def test_a_failed_write_is_an_error_and_the_interpreter_exits_cleanly(self):
        with tu.TempDir() as d:
            r = subprocess.run([sys.executable, "-c", FULL_DISK, NIAH, d], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)  # was 139: HDF5's teardown crashed at exit
            self.assertEqual(r.stdout.split("\n")[:2], ["KvsimError True", "later call True"], r.stdout + r.stderr)
            self.assertFalse(os.path.exists(os.path.join(d, "a")))
            self.assertEqual(tu.partial_files(d), [])


CHILD = textwrap.dedent("""
    import sys, time, kvsim
    out = sys.argv[1]
    print("started", flush=True)
    t0 = time.monotonic()
    try:
        kvsim.replay(sys.argv[2], rules="all", budgets=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5], per_query=True,
                     out=out, progress=True)
        print("finished", time.monotonic() - t0, flush=True)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
""")


class InterruptTest(unittest.TestCase):
    def test_ctrl_c_stops_a_replay_within_a_second_and_leaves_nothing(self):
        with tu.TempDir() as d:
            out = os.path.join(d, "out")
            p = subprocess.Popen([sys.executable, "-c", CHILD, out, NIAH], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=dict(os.environ, KVSIM_PROGRESS="1"))
            self.assertEqual(p.stdout.readline().strip(), "started")
            # Wait for the state "the engine is replaying": its first progress line on stderr.
            line = p.stderr.readline()
            while line and "replay:" not in line:
                line = p.stderr.readline()
            self.assertIn("replay:", line, "the replay never started")
            t0 = time.monotonic()
            p.send_signal(signal.SIGINT)
            rest, _ = p.communicate(timeout=60)
            seconds = time.monotonic() - t0
            self.assertEqual(rest.strip(), "KeyboardInterrupt", rest)
            self.assertEqual(p.returncode, 0)
            self.assertLess(seconds, 3.0, f"KeyboardInterrupt came {seconds:.2f} s after the signal")
            self.assertFalse(os.path.exists(out), "the folder the run created is removed")
            self.assertEqual(tu.partial_files(d), [])


if __name__ == "__main__":
    unittest.main()
