# --help for the launchers (sourced, not run): prints the header comment of the script that
# sources it (its usage, options and environment) on stdout, without '#SBATCH' lines, and exits 0.
print_header_help() {
  sed -n '2,/^set -euo pipefail$/{/^#SBATCH/d;/^#/s/^# \{0,1\}//p}' "$1"
  exit 0
}
