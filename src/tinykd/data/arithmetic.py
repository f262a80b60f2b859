"""Multi-digit addition generated offline, with step-by-step rationales: data for rationale distillation.

A problem is ``a+b=`` with two operands of the same number of digits n (n = 1: 0..9; otherwise no leading zero).
Its rationale adds the digits from the right, one step per digit, each step written ``a_k+b_k+c=s`` with the
incoming carry c and the two-digit sum s (whose first digit is the next step's carry); the answer follows the
marker ``#``::

    prompt     472+358=
    rationale  2+8+0=10,7+5+1=13,4+3+1=08
    response   2+8+0=10,7+5+1=13,4+3+1=08#830

Every step is one fixed-width local computation, so a small character-level model only has to find two digits and
add three numbers below 20; the answer is the steps' last digits read backwards (and the last carry when it is 1).
Without the rationale the model must carry through all n digits before writing the answer's first one.

``arithmetic`` (a bundled ``causal_lm`` dataset) makes the training problems (n drawn uniformly in 1..``digits``)
and, per length 1..``test_digits``, held-out test problems that no training problem equals (lengths above
``digits`` test generalisation to longer problems; a length whose problems are all in training has no test
problem). ``rationale`` picks what the model learns:

- ``teacher``: ``a+b=`` → rationale ``#`` answer (the teacher's data);
- ``none``: ``[answer]a+b=`` → ``#`` answer (the answer-only student);
- ``multitask``: both tasks of distilling step-by-step (Hsieh et al. 2023), every training problem twice:
  ``[answer]a+b=`` → ``#`` answer and ``[reason]a+b=`` → the response ``rationales_path`` gives for ``a+b=``
  (JSON lines of ``{"prompt", "response"}``: the teacher's own generations), or the true rationale when no file is
  given. The two task prefixes have the same length, so a problem's digits sit at the same positions in both tasks.

Test pairs are the ``teacher`` pairs for ``teacher``, the answer task otherwise. Every bundle is tokenized with one
fixed character vocabulary (``CHARS``) unless ``tokenizer`` or ``tokenizer_path`` says otherwise, so a teacher and
its students always share token ids.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tinykd.data.corpus import Corpus, _check_lm_options, read_pairs
from tinykd.data.registry import register_dataset
from tinykd.data.tokenize import SPECIAL, TextTokenizer
from tinykd.errors import DataError

MARK = "#"  # the final answer follows the last one
ANSWER_TASK = "[answer]"
RATIONALE_TASK = "[reason]"  # as long as ANSWER_TASK: the digits keep their positions across the two tasks
MODES = ("teacher", "none", "multitask")
MAX_DIGITS = 12
CHARS = TextTokenizer("char", list(SPECIAL[:3]) + sorted(set("0123456789+=," + MARK + ANSWER_TASK + RATIONALE_TASK)),
                      lowercase=False)


@dataclass(frozen=True)
class Problem:
    """``a+b=`` with operands of ``digits`` digits each."""

    a: int
    b: int

    @property
    def digits(self) -> int:
        return max(len(str(self.a)), len(str(self.b)))

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


def rationale(a: int, b: int) -> str:
    """The digit-by-digit steps of ``a + b``, least significant digit first (the shorter operand padded with 0)."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for k in range(max(len(da), len(db))):
        x, y = int(da[k]) if k < len(da) else 0, int(db[k]) if k < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return ",".join(steps)


def response(problem: Problem, with_rationale: bool = True) -> str:
    """What follows the prompt: the rationale (when asked), the marker and the answer."""
    return (rationale(problem.a, problem.b) if with_rationale else "") + MARK + problem.answer


def _operand(n: int, rng: random.Random) -> int:
    return rng.randrange(10) if n == 1 else rng.randrange(10 ** (n - 1), 10 ** n)


def _count(n: int) -> int:
    """How many problems have n-digit operands."""
    return (10 if n == 1 else 9 * 10 ** (n - 1)) ** 2


def make_problems(digits: int = 3, test_digits: int = 4, n_train: int = 10000, n_test: int = 200,
                  seed: int = 0) -> tuple[list[Problem], list[Problem]]:
    """(training problems, test problems): ``n_train`` problems of 1..``digits`` digits (repeats possible), then up
    to ``n_test`` distinct problems of each length 1..``test_digits`` that are not training problems. Equal
    arguments give equal lists."""
    rng = random.Random(seed)
    train = []
    for _ in range(n_train):
        n = rng.randint(1, digits)
        train.append(Problem(_operand(n, rng), _operand(n, rng)))
    seen = set(train)
    test: list[Problem] = []
    for n in range(1, test_digits + 1):
        if _count(n) <= 4 * (n_test + len(seen)):  # a small space: draw from what is left of it
            lo = 0 if n == 1 else 10 ** (n - 1)
            left = [p for a in range(lo, 10 ** n) for b in range(lo, 10 ** n) if (p := Problem(a, b)) not in seen]
            test += rng.sample(left, min(n_test, len(left)))
            continue
        drawn: set[Problem] = set()
        while len(drawn) < n_test:
            p = Problem(_operand(n, rng), _operand(n, rng))
            if p not in seen and p not in drawn:
                drawn.add(p)
                test.append(p)
    return train, test


def read_rationales(path: Path) -> dict[str, str]:
    """Prompt → response of a JSON-lines file of ``{"prompt", "response"}`` (the teacher's generations, an empty one
    kept as it is)."""
    return dict(read_pairs(path, example='{"prompt": "47+38=", "response": "7+8+0=15,4+3+1=08#85"}',
                           empty_responses=True, allow_none=True))


def _int(name: str, value: object, lo: int, hi: int, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DataError(f"option {name} must be an integer from {lo} to {hi}, got {value!r}",
                        f"set {name} to e.g. {example}")
    return value


def longest_sequence(test_digits: int, mode: str) -> int:
    """Input tokens of the longest sample of problems up to ``test_digits`` digits in ``mode`` (the prompt, the true
    rationale where the mode has one, the answer and the end token, less the last token, which is only a target)."""
    top = Problem(10 ** test_digits - 1, 10 ** test_digits - 1)
    prefix = "" if mode == "teacher" else ANSWER_TASK
    return len(prefix + top.prompt + response(top, with_rationale=mode != "none"))  # + the end token, - the last


def check_options(digits: object, test_digits: object, n_train: object, n_test: object, rationale: object,
                  rationales_path: object, context: object) -> None:
    """Errors naming the fix for every option of ``arithmetic`` that cannot make data."""
    _int("digits", digits, 1, MAX_DIGITS, 3)
    _int("test_digits", test_digits, 1, MAX_DIGITS, digits + 1)
    if test_digits < digits:
        raise DataError(f"option test_digits ({test_digits}) is below digits ({digits}): the test would leave out "
                        "lengths the model trains on", f"set test_digits to {digits} or more, e.g. {digits + 1}")
    _int("n_train", n_train, 1, 10_000_000, 10000)
    _int("n_test", n_test, 1, 1_000_000, 200)
    if rationale not in MODES:
        raise DataError(f"option rationale must be one of {', '.join(MODES)}, got {rationale!r}",
                        "teacher: the teacher's data (rationale then answer); none: answer only; multitask: the "
                        "answer task and the rationale task of distilling step-by-step")
    if rationales_path is not None and rationale != "multitask":
        raise DataError(f"option rationales_path is read by rationale: multitask only, and rationale is {rationale!r}",
                        "set rationale: multitask, or leave rationales_path out")
    need = longest_sequence(test_digits, rationale)
    if isinstance(context, int) and not isinstance(context, bool) and context < need:
        raise DataError(f"option context {context} is too short for problems of {test_digits} digits: their prompt, "
                        f"rationale and answer take {need} input tokens",
                        f"set context to at least {need}, or test_digits lower")


@register_dataset("arithmetic", needs_path=False, task="causal_lm",
                  description="multi-digit addition generated offline, with digit-by-digit rationales (answer after #) "
                              "and longer held-out test problems, for rationale distillation")
def arithmetic(*, digits: int = 3, test_digits: int = 4, n_train: int = 10000, n_test: int = 200,
               dataset_seed: int = 0, rationale: str = "teacher", rationales_path: Path | None = None,
               tokenizer: str | TextTokenizer = CHARS, vocab_size: int = 256, lowercase: bool = False,
               context: int = 64, tokenizer_path: Path | None = None) -> Corpus:
    _check_lm_options(tokenizer, vocab_size, lowercase, context)
    check_options(digits, test_digits, n_train, n_test, rationale, rationales_path, context)
    _int("dataset_seed", dataset_seed, 0, 2 ** 32 - 1, 0)
    train, test = make_problems(digits, test_digits, n_train, n_test, dataset_seed)
    if rationale == "teacher":
        return Corpus(pairs={"train": [(p.prompt, response(p)) for p in train],
                             "test": [(p.prompt, response(p)) for p in test]})
    answers = [(ANSWER_TASK + p.prompt, response(p, with_rationale=False)) for p in train]
    tests = [(ANSWER_TASK + p.prompt, response(p, with_rationale=False)) for p in test]
    if rationale == "none":
        return Corpus(pairs={"train": answers, "test": tests})
    given = read_rationales(Path(rationales_path)) if rationales_path is not None else {}
    missing = [p.prompt for p in train if given and p.prompt not in given]
    if rationales_path is not None and (missing or not given):
        missing = missing or [p.prompt for p in train]
        raise DataError(f"the rationales file has no response for {len(missing)} of the {len(train)} training "
                        f"prompts (e.g. {missing[0]!r})", "generate it for these same options (digits, n_train, "
                        "dataset_seed): one line per training prompt", where=str(rationales_path))
    reasons = [(RATIONALE_TASK + p.prompt, given[p.prompt] if given else response(p)) for p in train]
    return Corpus(pairs={"train": answers + reasons, "test": tests},
                  files=[str(rationales_path)] if rationales_path is not None else [])
