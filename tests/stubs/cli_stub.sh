#!/bin/bash
# Stand-in for terraform, kubectl and aws in the comfyui-eks CLI tests (linked under those
# names into a directory that is the whole PATH).
#
# Every call appends one line to $CLI_STUB_LOG: the tool's name and its arguments, separated
# by tabs, written with a single printf (one write), so concurrent calls never interleave.
#
# The answer comes from $CLI_STUB_DIR/<tool>.rules, first match wins; one rule per line:
#   <glob><TAB><exit code><TAB><stdout file or -><TAB><stderr file or -><TAB><consume: 1 or empty>
# The glob is matched (bash pattern) against all arguments joined by single spaces; the files
# are relative to $CLI_STUB_DIR. A rule with consume=1 answers once: the stub then appends the
# line number to <tool>.used and skips it afterwards (first a failure, then success). No
# matching rule: exit 0, no output.
set -u
tool=${0##*/}
line=$tool
for arg in "$@"; do
  line+=$'\t'"$arg"
done
printf '%s\n' "$line" >>"$CLI_STUB_LOG"

rules="$CLI_STUB_DIR/$tool.rules"
used="$CLI_STUB_DIR/$tool.used"
[[ -f $rules ]] || exit 0
args="$*"
number=0
while IFS=$'\t' read -r pattern code out err consume || [[ -n $pattern ]]; do
  number=$((number + 1))
  [[ -z $pattern || $pattern == '#'* ]] && continue
  # shellcheck disable=SC2053 # the pattern is a glob on purpose
  [[ $args == $pattern ]] || continue
  if [[ ${consume:-} == 1 ]]; then
    if [[ -f $used ]]; then
      while read -r seen; do
        [[ $seen == "$number" ]] && continue 2
      done <"$used"
    fi
    printf '%s\n' "$number" >>"$used"
  fi
  if [[ $out != - ]]; then
    printf '%s\n' "$(<"$CLI_STUB_DIR/$out")"
  fi
  if [[ $err != - ]]; then
    printf '%s\n' "$(<"$CLI_STUB_DIR/$err")" >&2
  fi
  exit "$code"
done <"$rules"
exit 0
