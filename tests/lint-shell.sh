#!/usr/bin/env bash
# Lints the shell scripts under tests/ with shellcheck (every severity down to style,
# following sourced files). Installs Debian's shellcheck when it is missing.
#   usage: tests/lint-shell.sh             every *.sh under tests/ (tracked or not)
#          tests/lint-shell.sh FILE...     only these files
# Exits non-zero, with the findings, when shellcheck has anything to say.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v shellcheck >/dev/null 2>&1; then
  echo "==> installing shellcheck (Debian package)"
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi
  ${SUDO[@]+"${SUDO[@]}"} apt-get update -qq
  ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends shellcheck >/dev/null
fi
shellcheck --version | sed -n 's/^version: /shellcheck /p'

files=()
if [ "$#" -gt 0 ]; then
  files=("$@")
else
  while IFS= read -r file; do
    files+=("$file")
  done < <(find tests -name '*.sh' -not -path '*/target/*' | sort)
fi
if [ "${#files[@]}" -eq 0 ]; then
  echo "no shell scripts to lint"
  exit 0
fi

if shellcheck --severity=style --external-sources --source-path=SCRIPTDIR "${files[@]}"; then
  echo "shellcheck: ${#files[@]} scripts, no findings"
else
  echo "shellcheck: findings above (in ${#files[@]} scripts checked)" >&2
  exit 1
fi
