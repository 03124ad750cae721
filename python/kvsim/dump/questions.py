"""Several questions on one context (kvsim-dump --questions FILE): the context is followed by
question 1 (the question segment) and its answer, then every further question and its answer, each
fed after the previous answer, as a conversation on one compressed context (kvpress #262:
compress once, ask many). The trace format keeps one question segment (segments never go back),
so later questions and all answers are segment 2; /spans/question_K and /spans/answer_K mark
every question's tokens and its generated answer (K from 1), and the replay evaluates each
question's queries apart (metrics_per_question.csv)."""
from kvsim.dump.errors import DumpError
from kvsim.dump.prompts import NIAH_QUESTION_TEMPLATE


def read_lines(path, option):
    """The non-empty lines of FILE (questions, needles), stripped; at least one."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise DumpError(path, f"{option}: cannot read: {e.strerror}")
    if not lines:
        raise DumpError(path, f"{option}: empty (one entry per non-empty line)")
    return lines


def read_questions(path):
    """The questions of FILE, one per non-empty line."""
    return read_lines(path, "--questions")


def follow_up_template(args, extra):
    """How a later question is written after an answer, as the first one was (with {input})."""
    if args.niah:
        return NIAH_QUESTION_TEMPLATE.replace("{question}", "{input}")
    if args.longbench:
        return extra["question_template"]
    return "\n\n{input}"


def plan_continuation(tok, questions, template, answer_tokens):
    """(forced, spans): after the prompt (which holds question 1), per position either a forced
    token id (a later question) or None (greedy); spans relative to the first generated position."""
    forced, spans = [], {}
    for k, q in enumerate(questions, start=1):
        if k > 1:
            ids = tok.encode(template.format(input=q), continuation=True)
            spans[f"question_{k}"] = (len(forced), len(forced) + len(ids))
            forced += ids
        spans[f"answer_{k}"] = (len(forced), len(forced) + answer_tokens)
        forced += [None] * answer_tokens
    return forced, spans


def check_question_options(args):
    if not args.questions:
        return
    if args.question or args.question_ids:
        raise DumpError("--questions", "replaces --question: the file's first line is the first question")
    if args.token_ids:
        raise DumpError("--questions", "needs a text prompt (--prompt, --niah, --longbench)")
    if args.chat:
        raise DumpError("--questions", "is not supported with --chat (later questions would need the "
                                       "template's turns)")
    if args.generate is not None:
        raise DumpError("--generate", "with --questions every answer gets --answer-tokens tokens")
    if args.answer_tokens < 1:
        raise DumpError("--answer-tokens", "must be >= 1")
