"""Rules written once (core/rules.py), held by what cannot import them.

The GPU node's sync script checks every MODEL_PREFIXES entry against MODEL_PREFIX_PATTERN, which
the user-data renders from core.rules (names.script_variables). These tests run the script's
own check (its `is_model_prefix` function, with bash, in a UTF-8 locale like a node's) on
hundreds of random strings and demand the verdict of Python's rule for each: the two regex
dialects (Python's `re`, POSIX extended in bash) must read the pattern alike. The Lambda's copy
of the rule is held equal in tests/test_model_sync_lambda.py.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from hypothesis import example, given, settings
from hypothesis import strategies as st

from core import names, rules
from tests.helpers import REPO

SYNC = REPO / "modules" / "scripts" / "model-cache-sync.sh"
_FUNCTION = re.compile(r"^is_model_prefix\(\) \{\n.*?^\}\n", re.M | re.S)
# Candidates arrive NUL-separated on stdin (an argument cannot hold a NUL, nor can a prefix);
# one verdict character each comes back.
_DRIVER = """set -euo pipefail
{function}
while IFS= read -r -d '' candidate; do
  if is_model_prefix "$candidate"; then printf 1; else printf 0; fi
done
"""


def _script_check() -> str:
    match = _FUNCTION.search(SYNC.read_text())
    assert match, "model-cache-sync.sh defines is_model_prefix()"
    return match.group(0)


def script_accepts(candidates: Sequence[str]) -> list[bool]:
    pattern = names.script_variables(models_bucket="models", region="us-west-2")["MODEL_PREFIX_PATTERN"]
    result = subprocess.run(
        ["bash", "-c", _DRIVER.format(function=_script_check())],
        input="".join(f"{c}\0" for c in candidates).encode(),
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "MODEL_PREFIX_PATTERN": pattern},
        capture_output=True,
        check=True,
        timeout=60,
    )
    verdicts = result.stdout.decode("ascii")
    assert len(verdicts) == len(candidates), result.stderr
    return [v == "1" for v in verdicts]


def test_the_rendered_pattern_is_the_rule():
    assert names.script_variables(models_bucket="m", region="us-west-2")["MODEL_PREFIX_PATTERN"] == (
        f"^{rules.MODEL_PREFIX.pattern}$"
    )
    assert rules.MODEL_PREFIX.flags & re.ASCII, "ASCII only, like bash's ranges in the C locale"


EXAMPLES = {
    "checkpoints/": True,
    "a/": True,
    "_/": True,
    "9lives.v2-final_/": True,
    "a" * 100 + "/": True,
    "a" * 101 + "/": False,
    "": False,
    "/": False,
    "checkpoints": False,
    "/checkpoints/": False,
    "checkpoints//": False,
    "a/b/": False,
    "./": False,
    "../": False,
    ".hidden/": False,
    "-rf/": False,
    "with space/": False,
    " loras/": False,
    "loras/\n": False,
    "loras/ ": False,
    "tab\t/": False,
    "é/": False,
    "loraś/": False,
    "ⅷ/": False,
    "x/y": False,
    "it's/": False,
    "a*/": False,
    "[a]/": False,
    "a$/": False,
}


def test_known_prefixes():
    assert script_accepts(list(EXAMPLES)) == list(EXAMPLES.values())
    assert [rules.is_model_prefix(c) for c in EXAMPLES] == list(EXAMPLES.values())


_VALID = st.from_regex(rules.MODEL_PREFIX, fullmatch=True)
# Near misses of valid prefixes: the edits a hand-written or normalising rule gets wrong.
_MUTATED = st.tuples(_VALID, st.sampled_from(["", "/", ".", "-", " ", "\n", "é", "a/", "//"]), st.booleans()).map(
    lambda t: t[1] + t[0] if t[2] else t[0][:-1] + t[1]
)
_ODD = st.text(alphabet="aZ09_.-/ \t\né€ⅷ*?[]$^(){}|+\\'\"", max_size=110)
_ANY = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=120)
CANDIDATES = st.one_of(_VALID, _MUTATED, _ODD, _ANY)


# Each example is a batch (one bash process): 25 batches of 20-60 strings, ~1,000 strings per run.
@settings(max_examples=25, deadline=None)
@given(st.lists(CANDIDATES, min_size=20, max_size=60))
@example(["", "/", ".", "..", "a/", "a", "a/b/", " ", "é/"])
def test_the_sync_script_and_the_configuration_agree_on_model_prefixes(candidates):
    assert script_accepts(candidates) == [rules.is_model_prefix(c) for c in candidates]
