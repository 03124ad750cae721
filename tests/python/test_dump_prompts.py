"""Prompt builders: needle-in-a-haystack spans and depth, LongBench template and truncation."""
import json
import os
import unittest

import dump_testutil as tu
from kvsim.dump.errors import DumpError
from kvsim.dump.llama2c_tokenizer import Llama2cTokenizer
from kvsim.dump.prompts import (CONTEXT, DEFAULT_NEEDLE, LONGBENCH_TEMPLATES, QUESTION,
                                build_longbench, build_niah)


class NiahTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tok = Llama2cTokenizer(tu.TOKENIZER)

    def test_length_span_and_segments(self):
        for depth in (0.0, 0.3, 1.0):
            with self.subTest(depth=depth):
                p = build_niah(self.tok, tu.ESSAYS_DIR, 700, depth)
                self.assertEqual(len(p.ids), 700)
                self.assertEqual(p.ids[0], 1)
                a, b = p.spans["needle"]
                self.assertEqual(p.ids[a:b], self.tok.encode(DEFAULT_NEEDLE, continuation=True))
                self.assertEqual(self.tok.decode(p.ids[a:b]), DEFAULT_NEEDLE)
                self.assertTrue(all(s == CONTEXT for s in p.segment[:p.context_end]))
                self.assertTrue(all(s == QUESTION for s in p.segment[p.context_end:]))
                self.assertIn("San Francisco", self.tok.decode(p.ids[p.context_end:]))
                hay = p.context_end - 1 - (b - a)
                # Inserted at a sentence end at or before the requested depth.
                self.assertLessEqual(a - 1, round(depth * hay))
                if 0 < a - 1 < hay:
                    self.assertTrue(self.tok.decode(p.ids[a - 1:a]).rstrip().endswith((".", "?", "!")))
                if depth == 0.0:
                    self.assertEqual(a, 1)
                if depth == 1.0:
                    self.assertEqual(b, p.context_end)
                self.assertIn("Dolores Park", p.text)

    def test_custom_needle_and_errors(self):
        p = build_niah(self.tok, tu.ESSAYS_DIR, 300, 0.5, needle=" The code is 7421.",
                       question="What is the code?")
        a, b = p.spans["needle"]
        self.assertEqual(self.tok.decode(p.ids[a:b]), " The code is 7421.")
        with self.assertRaises(DumpError):
            build_niah(self.tok, tu.ESSAYS_DIR, 300, 1.5)
        with self.assertRaises(DumpError):
            build_niah(self.tok, tu.ESSAYS_DIR, 10, 0.5)
        with tu.TempDir() as d, self.assertRaises(DumpError):
            build_niah(self.tok, d, 300, 0.5)


class LongBenchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tok = Llama2cTokenizer(tu.TOKENIZER)
        with open(tu.LONGBENCH) as f:
            cls.rec = json.loads(f.readline())

    def test_template_and_middle_truncation(self):
        full, dataset, answers = build_longbench(self.tok, tu.LONGBENCH, 0)
        self.assertEqual(dataset, "multi_news")
        self.assertEqual(answers, self.rec["answers"])
        head, tail = LONGBENCH_TEMPLATES["multi_news"].split("{context}")
        self.assertEqual(full.text, head + self.rec["context"] + tail)
        self.assertEqual(self.tok.decode(full.ids[full.context_end:]), tail)
        cut, _, _ = build_longbench(self.tok, tu.LONGBENCH, 0, max_context=600)
        self.assertEqual(cut.context_end, 600)
        ctx = full.ids[1:full.context_end]
        kept = cut.ids[1:cut.context_end]
        self.assertEqual(kept[:299], ctx[:299])      # first half
        self.assertEqual(kept[299:], ctx[-300:])     # last half
        self.assertEqual(cut.ids[cut.context_end:], full.ids[full.context_end:])
        self.assertTrue(cut.text.startswith(" You are given several news passages."))

    def test_bad_records(self):
        with self.assertRaises(DumpError) as e:
            build_longbench(self.tok, tu.LONGBENCH, 100000)
        self.assertIn("--record", str(e.exception))
        with tu.TempDir() as d:
            path = os.path.join(d, "x.jsonl")
            with open(path, "w") as f:
                f.write('{"context": "a", "input": "b", "dataset": "unknown_set"}\n{oops\n')
            with self.assertRaises(DumpError) as e:
                build_longbench(self.tok, path, 0)
            self.assertIn("--longbench-template", str(e.exception))
            p, _, _ = build_longbench(self.tok, path, 0, template="C: {context} Q: {input}")
            self.assertEqual(p.text, "C: a Q: b")
            with self.assertRaises(DumpError) as e:
                build_longbench(self.tok, path, 1)
            self.assertIn(":2", str(e.exception))


if __name__ == "__main__":
    unittest.main()
