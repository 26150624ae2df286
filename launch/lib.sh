# Shared by the launch scripts: option checks and `run`, which prints each command (shell-quoted, so it
# can be pasted) and runs it unless --dry-run was given.
# shellcheck shell=bash

# shellcheck disable=SC2034  # both are read by the scripts that source this file
DRY_RUN="" REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
  echo "error: $*" >&2
  exit 2
}

# require NAME...: each named variable must be set, else the missing --option is named.
require() {
  local name
  for name in "$@"; do
    [[ -n "${!name}" ]] || die "--${name//_/-} is required (see --help)"
  done
}

# positive NAME...: each named variable, where set, must be a whole number above 0.
positive() {
  local name
  for name in "$@"; do
    [[ -z "${!name}" || "${!name}" =~ ^[1-9][0-9]*$ ]] || die "--${name//_/-} must be a positive number, not ${!name}"
  done
}

# The argument as the shell reads it back: bare when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# The arguments as one command line to paste or to pass to a remote shell.
command_line() {
  local line="" arg
  for arg in "$@"; do
    line+="$(quote "$arg") "
  done
  printf '%s' "${line% }"
}

run() {
  command_line "$@"
  echo
  if [[ -z "$DRY_RUN" ]]; then
    "$@"
  fi
}

# caption_inputs IMAGES LIST: `inputs`, the captioning run's --images or --list option; exactly one is given.
caption_inputs() {
  if [[ -n "$1" && -z "$2" ]]; then
    inputs=(--images "$1")
  elif [[ -n "$2" && -z "$1" ]]; then
    inputs=(--list "$2")
  else
    die "give exactly one of --images DIR and --list FILE"
  fi
}

note() {
  echo "# $*"
}
