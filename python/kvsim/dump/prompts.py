"""Prompt builders: plain text, needle-in-a-haystack and LongBench records.

A prompt is assembled from separately tokenized pieces, each tagged with a segment (0 context,
1 question), so that spans such as the needle are exact token ranges. Tokenizers only need
encode(text, continuation=False) -> ids (no BOS; continuation: the text follows earlier text, so
no sentencepiece dummy-prefix space), decode(ids) and bos_id (None if none).
"""
import glob
import json
import os
from dataclasses import dataclass, field

from kvsim.dump.errors import DumpError

CONTEXT, QUESTION, GENERATED = 0, 1, 2

DEFAULT_NEEDLE = ("\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores "
                  "Park on a sunny day.\n")
DEFAULT_QUESTION = "What is the best thing to do in San Francisco?"
NIAH_QUESTION_TEMPLATE = "\n\nQuestion: {question}\nAnswer:"

# LongBench's dataset2prompt (THUDM/LongBench config/dataset2prompt.json), split at the end of
# {context}: what follows {context} is the question segment.
LONGBENCH_TEMPLATES = {
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}


@dataclass
class Prompt:
    ids: list = field(default_factory=list)
    segment: list = field(default_factory=list)
    spans: dict = field(default_factory=dict)
    text: str = ""

    def add_text(self, tok, text, seg, span=None):
        """Tokenizes text as the next piece (the first text piece gets the dummy prefix)."""
        first = not any(t != tok.bos_id for t in self.ids)
        self.add(tok.encode(text, continuation=not first), seg, text, span)

    def add(self, ids, seg, text, span=None):
        if span:
            self.spans[span] = (len(self.ids), len(self.ids) + len(ids))
        self.ids.extend(ids)
        self.segment.extend([seg] * len(ids))
        self.text += text

    @property
    def context_end(self):
        return next((i for i, s in enumerate(self.segment) if s != CONTEXT), len(self.segment))


def _start(tok):
    p = Prompt()
    if tok.bos_id is not None:
        p.add([tok.bos_id], CONTEXT, "")
    return p


def _read_text(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise DumpError(path, f"cannot read {what}: {e.strerror}")
    except UnicodeDecodeError as e:
        raise DumpError(path, f"{what} is not UTF-8 ({e.reason} at byte {e.start})")


def parse_token_ids(text, option, vocab_size=None):
    """'3,4,5' (commas and/or whitespace) or '@FILE' holding such a list -> [3, 4, 5]."""
    if text.startswith("@"):
        text = _read_text(text[1:], option)
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise DumpError(option, "no token ids given")
    ids = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise DumpError(option, f"'{p}' is not an integer token id")
        if v < 0 or (vocab_size is not None and v >= vocab_size):
            raise DumpError(option, f"token id {v} is outside the vocabulary 0..{vocab_size - 1}"
                            if vocab_size else f"token id {v} is negative")
        ids.append(v)
    return ids


def build_ids(context_ids, question_ids=None):
    """A prompt given as token ids, exactly as listed (no BOS is added)."""
    p = Prompt()
    p.add(list(context_ids), CONTEXT, "")
    if question_ids:
        p.add(list(question_ids), QUESTION, "")
    return p


def build_plain(tok, prompt_file, question=None):
    """The file's text is the context; an optional question becomes the question segment."""
    text = _read_text(prompt_file, "prompt")
    if not text.strip():
        raise DumpError(prompt_file, "prompt is empty")
    p = _start(tok)
    p.add_text(tok, text, CONTEXT)
    if question:
        p.add_text(tok, question, QUESTION)
    return p


def build_niah(tok, haystack_dir, length, depth, needle=DEFAULT_NEEDLE, question=DEFAULT_QUESTION, needles=None):
    """Needle in a haystack: essays truncated to fit `length` prompt tokens, the needle inserted
    at the sentence boundary at or before `depth` (0 = start, 1 = end) of the haystack, then the
    question. /spans/needle is the needle's token range. needles (kvsim-dump --needles): several
    needles instead, the i-th of k at depth (i + 1) / (k + 1), spans needle_1 .. needle_k."""
    if not 0.0 <= depth <= 1.0:
        raise DumpError("--niah-depth", f"must be within 0..1, got {depth}")
    placed = [(needle, depth, "needle")] if not needles else [
        (n, (i + 1) / (len(needles) + 1), f"needle_{i + 1}") for i, n in enumerate(needles)]
    files = sorted(glob.glob(os.path.join(haystack_dir, "*.txt")))
    files = [f for f in files if not os.path.basename(f).startswith("LICENSE")]
    if not files:
        raise DumpError(haystack_dir, "--niah-dir: no *.txt essays found")
    needle_ids = [tok.encode(n, continuation=True) for n, _, _ in placed]
    q_text = NIAH_QUESTION_TEMPLATE.format(question=question)
    q_ids = tok.encode(q_text, continuation=True)
    n_needle = sum(len(x) for x in needle_ids)
    budget = length - n_needle - len(q_ids) - (1 if tok.bos_id is not None else 0)
    if budget < 1:
        raise DumpError("--niah-length", f"{length} tokens leave no room for the haystack "
                                         f"(needles {n_needle}, question {len(q_ids)})")
    hay = []
    for i, path in enumerate(files):  # one essay at a time: a short haystack tokenizes little
        essay = _read_text(path, "essay")
        hay.extend(tok.encode(essay, continuation=False) if i == 0
                   else tok.encode("\n\n" + essay, continuation=True))
        if len(hay) >= budget:
            break
    if len(hay) < budget:
        raise DumpError(haystack_dir, f"essays hold only {len(hay)} tokens, {budget} needed")
    hay = hay[:budget]
    p = _start(tok)
    start = 0
    for (text, d, span), ids in zip(placed, needle_ids):
        cut = int(round(d * len(hay)))
        # Back off to just after a sentence end, as the needle-in-a-haystack harness does.
        while start < cut < len(hay) and not tok.decode(hay[cut - 1:cut]).rstrip().endswith((".", "?", "!")):
            cut -= 1
        cut = max(cut, start)
        p.add(hay[start:cut], CONTEXT, tok.decode(hay[start:cut]))
        p.add(ids, CONTEXT, text, span=span)
        start = cut
    p.add(hay[start:], CONTEXT, tok.decode(hay[start:]))
    p.add(q_ids, QUESTION, q_text)
    return p


def read_longbench_record(path, record):
    if record < 0:
        raise DumpError("--record", f"must be >= 0, got {record}")
    count = 0
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                count = i + 1
                if i == record:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DumpError(f"{path}:{i + 1}", f"not JSON: {e.msg}")
                    if not isinstance(rec, dict):
                        raise DumpError(f"{path}:{i + 1}", "record is not a JSON object")
                    return rec
    except OSError as e:
        raise DumpError(path, f"cannot read: {e.strerror}")
    raise DumpError(path, f"--record {record}: the file has only {count} records")


def build_longbench(tok, path, record, max_context=None, template=None, question=None):
    """A LongBench record through its dataset's prompt template. The context segment (template
    head + context) is truncated in the middle to max_context tokens, keeping the first and last
    halves as LongBench's pred.py does; the text after {context} is the question segment
    (question: replaces the record's input there, kvsim-dump --questions)."""
    rec = read_longbench_record(path, record)
    for key in ("context", "input"):
        if not isinstance(rec.get(key), str):
            raise DumpError(f"{path}:{record + 1}", f"field '{key}' missing or not a string")
    dataset = rec.get("dataset") or os.path.splitext(os.path.basename(path))[0]
    if template is None:
        template = LONGBENCH_TEMPLATES.get(dataset)
        if template is None:
            raise DumpError(f"{path}:{record + 1}", f"dataset '{dataset}' has no built-in LongBench "
                                                    "template; pass --longbench-template")
    if "{context}" not in template:
        raise DumpError("--longbench-template", "must contain {context}")
    head, tail = template.split("{context}", 1)
    context_text = head.format(input=rec["input"]) + rec["context"]
    question_text = tail.format(input=rec["input"] if question is None else question)
    ctx = tok.encode(context_text, continuation=False)
    text = context_text
    p = _start(tok)
    if max_context is not None:
        keep = max_context - len(p.ids)  # the context segment includes BOS
        if keep < 2:
            raise DumpError("--max-context", f"{max_context} tokens leave no room for the context")
        if len(ctx) > keep:
            head_n = keep // 2
            head_ids, tail_ids = ctx[:head_n], ctx[len(ctx) - (keep - head_n):]
            text = tok.decode(head_ids) + tok.decode(tail_ids)
            ctx = head_ids + tail_ids
    p.add(ctx, CONTEXT, text)
    p.add(tok.encode(question_text, continuation=True), QUESTION, question_text)
    answers = rec.get("answers")
    p.question_template = tail
    return p, dataset, answers


def truncate_context(p, max_tokens):
    """Cuts the context segment in the middle (first and last halves kept, as LongBench does) so
    that the whole prompt holds at most max_tokens tokens; the question is kept whole. Spans that
    the cut touches are dropped, the others move with their tokens. Returns the number cut."""
    excess = len(p.ids) - max_tokens
    if excess <= 0:
        return 0
    n_c = p.context_end
    keep = n_c - excess
    if keep < 2:
        raise DumpError("--max-tokens", f"{max_tokens} tokens leave no room for the context (the "
                                        f"question and chat template take {len(p.ids) - n_c})")
    cut_lo, cut_hi = keep // 2, n_c - (keep - keep // 2)
    spans = {}
    for name, (a, b) in p.spans.items():
        if b <= cut_lo:
            spans[name] = (a, b)
        elif a >= cut_hi:
            spans[name] = (a - excess, b - excess)
    p.ids = p.ids[:cut_lo] + p.ids[cut_hi:]
    p.segment = p.segment[:cut_lo] + p.segment[cut_hi:]
    p.spans = spans
    return excess


def apply_chat(p, head_ids, tail_ids, head_text, tail_text, bos_id=None):
    """The prompt as the user's message of a chat template: head (the system turn and the start
    of the user turn) joins the context segment, tail (the end of the user turn and the start of
    the assistant's) the question segment; what the model generates is the assistant's answer.
    A BOS the prompt starts with is kept only if the template does not render one itself."""
    body_ids, body_seg = list(p.ids), list(p.segment)
    skip = 1 if (bos_id is not None and body_ids and body_ids[0] == bos_id) else 0
    out = Prompt()
    if skip and not (head_ids and head_ids[0] == bos_id):
        out.add([bos_id], CONTEXT, "")
    out.add(list(head_ids), CONTEXT, head_text)
    shift = len(out.ids) - skip
    out.ids.extend(body_ids[skip:])
    out.segment.extend(body_seg[skip:])
    out.text += p.text
    out.spans = {name: (a + shift, b + shift) for name, (a, b) in p.spans.items()}
    out.add(list(tail_ids), QUESTION, tail_text)
    return out
