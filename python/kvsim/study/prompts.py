"""The prompt set of a study (kvsim-study): a default set built from the corpora, or a JSONL file.

One JSON object per line:
  {"id": "niah-2k-d50", "kind": "niah", "length": 2048, "depth": 0.5,
   "needle": "...", "question": "..."}                       needle in a haystack; answered when
                                                             the greedy answer holds the needle
  {"id": "mn-0", "kind": "longbench", "file": "multi_news.jsonl", "record": 0, "max_tokens": 2048}
                                                             perturbation claims only (no answer)
  {"id": "t", "kind": "text", "text": "..." or "file": "...", "question": "...", "answer": "..."}
                                                             answered when the answer string is in
                                                             the greedy answer (case-insensitive)
Relative "file" paths are relative to the prompt file. Every prompt goes into the model's chat
template (kvsim-dump --chat) when the tokenizer has one.
"""
import json
import os
from dataclasses import dataclass, field

from kvsim.dump.errors import DumpError
from kvsim.dump.prompts import DEFAULT_NEEDLE, DEFAULT_QUESTION

# Needles of the default set, one per depth in turn. Chosen as short facts stated once, with a
# question whose words do not give the answer away; whether the model retrieves each at full cache
# is measured by the study itself (prompts it fails are kept and counted in the `full` row).
NEEDLES = (
    (DEFAULT_NEEDLE, DEFAULT_QUESTION),
    ("\nThe secret ingredient in Grandma Rosa's famous soup is a spoonful of smoked paprika.\n",
     "What is the secret ingredient in Grandma Rosa's famous soup?"),
    ("\nThe annual kite festival in the town of Brindlewood is always held on the second Sunday "
     "of May.\n", "When is the annual kite festival in Brindlewood held?"),
)
DEFAULT_LENGTHS = (1024, 2048, 3072, 4096)
DEFAULT_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_LONGBENCH_RECORDS = (0, 1, 2, 3)


@dataclass
class StudyPrompt:
    id: str
    kind: str
    dump_args: list = field(default_factory=list)  # kvsim-dump prompt options
    answer: str = None      # text prompts: the expected answer
    length: int = 0         # planned prompt tokens (for ordering and the ETA)

    @property
    def answerable(self):
        return self.kind == "niah" or self.answer is not None


def niah_prompt(pid, length, depth, needle, question, essays):
    return StudyPrompt(pid, "niah", ["--niah", "--niah-dir", essays, "--niah-length", str(length),
                                     "--niah-depth", str(depth), "--needle", needle,
                                     "--question", question], length=length)


def longbench_prompt(pid, path, record, max_tokens):
    return StudyPrompt(pid, "longbench", ["--longbench", path, "--record", str(record),
                                          "--max-tokens", str(max_tokens)], length=max_tokens)


def default_prompts(essays, longbench, lengths=DEFAULT_LENGTHS, depths=DEFAULT_DEPTHS,
                    records=DEFAULT_LONGBENCH_RECORDS, longbench_tokens=2048):
    out = []
    for length in lengths:
        for i, depth in enumerate(depths):
            needle, question = NEEDLES[i % len(NEEDLES)]
            out.append(niah_prompt(f"niah-{length}-d{int(round(depth * 100)):02d}", length, depth,
                                   needle, question, essays))
    if longbench:
        for r in records:
            out.append(longbench_prompt(f"{os.path.splitext(os.path.basename(longbench))[0]}-{r}",
                                        longbench, r, longbench_tokens))
    return out


def read_prompt_file(path, essays, scratch):
    """StudyPrompts from a JSONL file (format above); text prompts are written to scratch/."""
    base = os.path.dirname(os.path.abspath(path))
    out, ids = [], set()
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        raise DumpError(path, f"--prompts: cannot read: {e.strerror}")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise DumpError(where, f"not JSON: {e.msg}")
        if not isinstance(d, dict) or not isinstance(d.get("id"), str) or not d["id"]:
            raise DumpError(where, "each line is an object with a non-empty string 'id'")
        pid, kind = d["id"], d.get("kind")
        if pid in ids or "/" in pid or pid.startswith("."):
            raise DumpError(where, f"id '{pid}': ids are unique plain names")
        ids.add(pid)

        def rel(p):
            return p if os.path.isabs(p) else os.path.join(base, p)
        try:
            if kind == "niah":
                out.append(niah_prompt(pid, int(d["length"]), float(d.get("depth", 0.5)),
                                       d.get("needle", DEFAULT_NEEDLE), d.get("question", DEFAULT_QUESTION),
                                       rel(d["essays"]) if "essays" in d else essays))
            elif kind == "longbench":
                out.append(longbench_prompt(pid, rel(d["file"]), int(d.get("record", 0)),
                                            int(d.get("max_tokens", 2048))))
            elif kind == "text":
                text_file = rel(d["file"]) if "file" in d else os.path.join(scratch, f"{pid}.txt")
                if "file" not in d:
                    os.makedirs(scratch, exist_ok=True)
                    with open(text_file, "w", encoding="utf-8") as f:
                        f.write(d["text"])
                args = ["--prompt", text_file] + (["--question", d["question"]] if d.get("question") else [])
                if d.get("max_tokens"):
                    args += ["--max-tokens", str(int(d["max_tokens"]))]
                out.append(StudyPrompt(pid, "text", args, answer=d.get("answer"),
                                       length=int(d.get("max_tokens", 0))))
            else:
                raise DumpError(where, f"kind '{kind}': expected niah, longbench or text")
        except KeyError as e:
            raise DumpError(where, f"kind '{kind}' needs the field {e}")
        except (TypeError, ValueError) as e:
            raise DumpError(where, f"bad field value: {e}")
    if not out:
        raise DumpError(path, "--prompts: no prompt in the file")
    return out
