# Shell quoting shared by the launchers (sourced, not run): words made safe to paste or to send
# to a remote shell, and commands printed as one pasteable line (the --dry-run output).

# One word for a POSIX shell: bare when it needs no quotes, else single-quoted.
sh_quote() {
  local sq="'\\''"
  if [[ $1 =~ ^[A-Za-z0-9_./:,+@%-][A-Za-z0-9_./=:,+@%-]*$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/$sq}"
  fi
}

# One word for this shell, on one line (printf %q for words with control characters).
word_quote() {
  if [[ $1 == *[[:cntrl:]]* ]]; then printf '%q' "$1"; else sh_quote "$1"; fi
}

# Prints a command as one pasteable line; --flag=VALUE is shown as --flag=QUOTED-VALUE.
print_cmd() {
  local w out=""
  for w in "$@"; do
    if [[ $w =~ ^--[A-Za-z0-9_-]+= ]]; then
      out+="${out:+ }${BASH_REMATCH[0]}$(word_quote "${w#"${BASH_REMATCH[0]}"}")"
    else
      out+="${out:+ }$(word_quote "$w")"
    fi
  done
  printf '%s\n' "$out"
}
