"""KV quantization (rules doc 2.33) against a float64 numpy reference written here from the
stated semantics: integer codes, stored scales and zero points, the rows the cache gives back
and the bytes, equal bit for bit, for every scheme, axis, bit width, group and residual, on
synthetic rows with ties and on real keys and values (both stories260K traces), under
every kernel set this CPU runs (KVSIM_FORCE_ISA); then quant(...) replayed end to end: its
perturbation 0 for quant(full, k=16, v=16), bounds above the measurement on every row.
"""
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

import dump_testutil as tu

try:
    import kvsim
except ImportError as e:  # pragma: no cover
    raise unittest.SkipTest(f"needs the kvsim module in the project .venv ({e.name} missing; bash tools/build.sh)")

NIAH = os.path.join(tu.TRACES_DIR, "niah_stories260k.h5")
FP8 = {"fp8e4m3": (3, -6, 7, 448.0), "fp8e5m2": (2, -14, 15, 57344.0)}


def f16(x):
    """float64 -> the nearest float16 value (half to even) as float64; inf beyond its range."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float64).astype(np.float16).astype(np.float64)


def fp8_round(x, scheme):
    mant, min_exp, _, fmax = FP8[scheme]
    x = x.astype(np.float64)
    _, e = np.frexp(x)  # x = m 2^e, m in [0.5, 1): the leading bit is 2^(e - 1)
    step = np.ldexp(1.0, np.maximum(e - 1, min_exp) - mant)
    return np.clip(np.rint(x / step) * step, -fmax, fmax)


def fp8_code(r, scheme):
    mant, min_exp, bias, _ = FP8[scheme]
    a = np.abs(r)
    sign = np.where(np.signbit(r), 0x80, 0)
    _, e = np.frexp(a)
    lead = e - 1
    sub = a < 2.0 ** min_exp
    code_sub = np.ldexp(a, mant - min_exp).astype(np.int64)
    code_norm = ((lead + bias) << mant) | (np.ldexp(a, mant - lead).astype(np.int64) - (1 << mant))
    return np.where(a == 0, 0, np.where(sub, code_sub, code_norm)) | sign


def reference(rows, bits, axis, scheme, group, residual):
    """dict(xhat, codes, scale, zero, quantized_rows, bytes) from the semantics alone."""
    x = np.asarray(rows, dtype=np.float32)
    m, d = x.shape
    G = group
    body = max(0, m - residual)
    if bits >= 16:
        mq = 0
    elif scheme in FP8 or axis == "token":
        mq = body
    else:
        mq = body // G * G
    xhat = x.copy()
    out = dict(codes=np.zeros((mq, d), np.int16), scale=np.zeros(0), zero=np.zeros(0), quantized_rows=mq,
               bytes=2.0 * (m - mq) * d)
    if mq == 0:
        return dict(out, xhat=xhat)
    if scheme in FP8:
        r = fp8_round(x[:mq], scheme)
        xhat[:mq] = r.astype(np.float32)
        out["codes"] = fp8_code(xhat[:mq].astype(np.float64), scheme).astype(np.int16)
        out["bytes"] += mq * d
        return dict(out, xhat=xhat)
    # Groups as rows of a [groups, G] array, and the permutation back to [mq, d].
    if axis == "channel":  # G tokens of one channel, block by block
        idx = np.arange(mq * d).reshape(mq // G, G, d).transpose(0, 2, 1).reshape(-1, G)
    else:  # G channels of one token
        idx = np.arange(mq * d).reshape(-1, G)
    g = x.reshape(-1)[idx].astype(np.float64)
    lo, hi = g.min(axis=1), g.max(axis=1)
    sym = scheme == "sym"
    levels = (1 << (bits - 1)) - 1 if sym else (1 << bits) - 1
    s16 = f16(np.maximum(np.abs(lo), np.abs(hi)) / levels if sym else (hi - lo) / levels)
    z16 = np.zeros_like(lo) if sym else f16(lo)
    assert np.all(np.isfinite(s16)) and np.all(np.isfinite(z16))
    degenerate = s16 == 0
    scale = np.where(degenerate, 1.0, s16)
    zero = np.where(degenerate, 0.0 if sym else lo, z16)
    q = np.clip(np.rint((g - zero[:, None]) / scale[:, None]), -levels if sym else 0, levels)
    yhat = (q * scale[:, None] + zero[:, None]).astype(np.float32)
    flat, codes = xhat.reshape(-1), np.zeros(mq * d, np.int16)
    flat[idx] = yhat
    codes[idx] = q.astype(np.int16)
    out.update(codes=codes.reshape(mq, d), scale=np.where(degenerate, 0.0, s16),
               zero=np.where(degenerate, 0.0 if sym else lo, z16))
    out["bytes"] += mq * d * bits / 8.0 + len(lo) * (2.0 if sym else 4.0)
    return dict(out, xhat=xhat)


CASES = [(b, axis, "asym", G, R) for b in (1, 2, 3, 4, 8) for axis in ("channel", "token") for G, R in ((8, 0), (32, 5))] \
    + [(b, axis, "sym", 8, 3) for b in (2, 4, 8) for axis in ("channel", "token")] \
    + [(8, "channel", s, 8, 2) for s in FP8] + [(16, "channel", "asym", 8, 0)]


def synthetic_rows():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(70, 16)).astype(np.float32)
    x[3] = 0.0                      # a zero row: degenerate token groups
    x[:, 5] = 1.5                   # a constant channel: degenerate channel groups
    x[10:20, 2] = np.float32(2.0 ** -20) * np.arange(10)  # a range below float16's resolution
    x[30] = np.arange(16) * 0.25    # exact ties on coarse grids
    x[40, :4] = [-0.0, 0.0, 448.0, 6e4]
    return x


def real_rows():
    """Keys and values of a layer of each bundled trace (stories260K, real weights)."""
    out = []
    for name in ("niah_stories260k.h5", "longbench_stories260k.h5"):
        layer = kvsim.open_trace(os.path.join(tu.TRACES_DIR, name)).layer(1)
        out += [np.array(layer.k[0, :300]), np.array(layer.v[1, :300])]
    return out


def check_case(test, rows, case):
    bits, axis, scheme, G, R = case
    if axis == "token" and rows.shape[1] % G:
        return
    got = kvsim.quantize(rows, bits, axis=axis, scheme=scheme, group=G, residual=R)
    want = reference(rows, bits, axis, scheme, G, R)
    msg = f"{case} on {rows.shape}"
    test.assertEqual(got["quantized_rows"], want["quantized_rows"], msg)
    np.testing.assert_array_equal(got["codes"], want["codes"], msg)
    np.testing.assert_array_equal(got["scale"], want["scale"], msg)
    np.testing.assert_array_equal(got["zero"], want["zero"], msg)
    np.testing.assert_array_equal(got["xhat"].view(np.uint32), want["xhat"].view(np.uint32), msg)
    test.assertEqual(got["bytes"], want["bytes"], msg)


class QuantTest(unittest.TestCase):
    def test_codes_equal_the_numpy_reference(self):
        data = [synthetic_rows()] + real_rows()
        self.assertGreaterEqual(len(data), 3)  # synthetic + the stories260K keys and values at least
        for rows in data:
            for case in CASES:
                check_case(self, rows, case)

    def test_every_kernel_set_gives_the_same_codes(self):
        """The same comparison in a process per kernel set this CPU runs (KVSIM_FORCE_ISA)."""
        isas = ["scalar", "avx2", "avx512"]
        for isa in isas:
            env = dict(os.environ, KVSIM_FORCE_ISA=isa)
            code = ("import sys, unittest; sys.path.insert(0, %r); import test_quant as t; "
                    "r = unittest.TextTestRunner().run(unittest.defaultTestLoader.loadTestsFromName("
                    "'test_quant.QuantTest.test_codes_equal_the_numpy_reference')); sys.exit(not r.wasSuccessful())"
                    % os.path.dirname(os.path.abspath(__file__)))
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            if r.returncode != 0 and "does not support" in r.stderr and isa != "scalar":
                continue  # this CPU lacks the set (check-avx512-emulated.sh covers AVX-512 elsewhere)
            self.assertEqual(r.returncode, 0, f"KVSIM_FORCE_ISA={isa}: {r.stderr[-3000:]}")

    def test_refusals_name_the_field(self):
        with self.assertRaisesRegex(kvsim.KvsimError, "group"):
            kvsim.quantize(np.zeros((40, 16), np.float32), 2, axis="token", group=5)
        with self.assertRaisesRegex(kvsim.KvsimError, "float16"):
            kvsim.quantize(np.array([[0.0] * 8, [1e6] * 8], np.float32), 2, axis="channel", group=2)
        with self.assertRaisesRegex(kvsim.KvsimError, "quant"):
            kvsim._kvsim.canonical_spec("quant(snapkv,scheme=fp8e4m3,k=4)")
        with self.assertRaisesRegex(kvsim.KvsimError, "sym needs at least 2 bits"):
            kvsim._kvsim.canonical_spec("quant(full,scheme=sym,k=1)")


class QuantReplayTest(unittest.TestCase):
    def test_quant_replays_with_bounds_on_every_row(self):
        # stories260K's head_dim is 8: token-axis groups of at most 8 channels.
        rules = ["quant(full,k=16,v=16)", "quant(full,group=8)", "quant(snapkv,k=4,v=4,group=8,residual=32)",
                 "quant(full,scheme=sym,k=4,v=4,kaxis=token,group=4)", "quant(full,scheme=fp8e4m3)",
                 "quant(snapkv,k=2,v=2,group=8)", "quant(critical(ada(snapkv)),k=4,v=4,group=8,residual=16)", "snapkv"]
        m = kvsim.replay(NIAH, rules=";".join(rules), budgets=["0.25", "0.5", "mem=0.25"])
        full16 = m[m.rule.str.startswith("quant(full,scheme=asym,k=16,v=16")]
        self.assertGreater(len(full16), 0)
        self.assertEqual(float(full16.pert_l1.abs().max()), 0.0)  # nothing quantized, nothing evicted
        q = m[m.rule.str.startswith("quant(")]
        for col in ("pert_l1", "bound_ada", "bound_critical"):
            self.assertTrue(np.isfinite(q[col]).all(), col)
        self.assertTrue((q.pert_l1 <= q.bound_ada * (1 + 1e-5) + 1e-6).all())
        self.assertTrue((q.pert_l1 <= q.bound_critical * (1 + 1e-5) + 1e-6).all())
        two_bit = m[(m.label == "quant(full,group=8)") & (m["head"] == -1)]
        self.assertGreater(float(two_bit.pert_l1.mean()), 0.0)
        # Bytes: a float16 kept token costs 4 head_dim bytes (snapkv's cache_ratio is its kept share);
        # 2-bit codes with a 4-byte scale per group of 8 and 128 residual tokens: well below half.
        d = kvsim.open_trace(NIAH).meta["head_dim"]
        snap = m[(m.rule.str.startswith("snapkv")) & (m["head"] == -1)]
        np.testing.assert_allclose(snap.cache_bytes, snap.kept_tokens * 4 * d)
        np.testing.assert_allclose(snap.cache_ratio, snap.kept_tokens / m.attrs["summary"]["protocol"]["n_c"])
        self.assertTrue((two_bit.cache_ratio < 0.45).all())
        # mem=0.25: quant(snapkv) keeps the most tokens whose bytes fit, eviction alone 25% of them.
        mem = m[(m.budget == "mem=0.25") & (m["head"] == -1)]
        q2 = mem[mem.label == "quant(snapkv,group=8)"]
        self.assertTrue((q2.cache_ratio <= 0.25 + 1e-12).all())
        self.assertTrue((q2.cache_ratio > 0.24).all())
        self.assertTrue((q2.kept_tokens > 2 * mem[mem.label == "snapkv"].kept_tokens.max()).all())
        # A base whose counts vary by head fits the bytes on every layer (re-selected when needed).
        ada = mem[mem.rule.str.startswith("quant(critical(ada(")]
        self.assertGreater(len(ada), 0)
        self.assertTrue((ada.cache_ratio <= 0.25 + 1e-12).all())

    def test_report_pareto_front_matches_metrics(self):
        """The report's memory section: its Pareto front and best-per-kind table recomputed from metrics.csv."""
        import pandas as pd
        from test_report_render import read_tables, run_kvsim
        rules = "snapkv;tova;quant(full,group=8);quant(full,k=4,v=4,group=8);quant(full,scheme=fp8e4m3);" \
                "quant(snapkv,group=8);quant(snapkv,k=4,v=4,group=8)"
        with tempfile.TemporaryDirectory() as t:
            out, html = os.path.join(t, "r"), os.path.join(t, "report.html")
            run_kvsim("replay", NIAH, "--rules", rules, "--budgets", "0.125,0.25,mem=0.125,mem=0.25", "--out", out)
            run_kvsim("report", out, "--out", html)
            tables = read_tables(html)
            m = pd.read_csv(os.path.join(out, "metrics.csv"), keep_default_na=False, na_values=["nan"])
        lay = m[(m["head"] == -1) & (m["eval"] == "queries")].groupby(["rule", "budget"])[
            ["cache_ratio", "pert_l2", "pert_l1"]].mean()
        pts = lay.reset_index()
        front = [(r.rule, r.budget) for r in pts.itertuples()
                 if not any((q.cache_ratio <= r.cache_ratio and q.pert_l2 <= r.pert_l2
                             and (q.cache_ratio < r.cache_ratio or q.pert_l2 < r.pert_l2)) for q in pts.itertuples())]
        got = [(r["rule"], str(r["budget"])) for r in tables["run1-pareto-front"]]
        self.assertEqual(sorted(got), sorted(front))
        for r in tables["run1-pareto-front"]:
            self.assertAlmostEqual(r["cache_ratio"], lay.loc[(r["rule"], str(r["budget"])), "cache_ratio"], places=12)
        best = tables["run1-memory-best"]
        self.assertEqual({r["memory"] for r in best}, {"mem=0.125", "mem=0.25"})
        for r in best:
            F = float(r["memory"][4:])
            kind = pts.rule.map(lambda x: "eviction" if not x.startswith("quant(") else
                                ("quantization" if x.startswith("quant(full,") else "both"))
            cand = pts[(kind == r["kind"]) & (pts.cache_ratio <= F + 1e-9)]
            self.assertAlmostEqual(r["pert_l2"], cand.pert_l2.min(), places=12)


if __name__ == "__main__":
    unittest.main()
