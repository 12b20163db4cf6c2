# Kaldi-style option parsing for recipe scripts; source it after the script's defaults:
#
#   stage=0
#   nj=4
#   . local/parse_options.sh
#
# Semantics (the same as Kaldi's utils/parse_options.sh, which icefall and ESPnet share):
#   --foo-bar VALUE   sets the shell variable foo_bar, which the script must already define
#                     (an unknown option aborts, so typos never pass silently);
#   a variable whose current value is true/false only accepts true/false;
#   --config FILE     sources FILE (variable assignments) before the remaining options;
#   --help, -h        prints $help_message and exits 0;
#   --name=value      is rejected (Kaldi does too: one form only);
#   parsing stops at the first argument that does not start with --; the rest stays in "$@".
#
# Additions:
#   parsed_options         space-separated names set from the command line (e.g. " stage nj "), so a
#                          script can tell "--stage 0 given" from "default 0" (see stage_begin in common.sh).
#   a mistake (an unknown option, a missing value, --name=value, a bad true/false) exits with 2, as a usage error
#   of nest-ssl does; numbers are checked by the script with check_int/check_float (local/common.sh).

parsed_options="${parsed_options:- }"

if [ "${1:-}" = "--config" ]; then
  [ $# -ge 2 ] || { echo "$0: --config needs a file" >&2; exit 2; }
  [ -f "$2" ] || { echo "$0: no such config file: $2" >&2; exit 2; }
  # shellcheck disable=SC1090
  . "$2"
  shift 2
fi

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      if [ -z "${help_message:-}" ]; then
        echo "No help found." >&2
      else
        printf '%s\n' "$help_message" >&2
      fi
      exit 0
      ;;
    --*=*)
      echo "$0: options must be given as --name value, got '$1'" >&2
      exit 2
      ;;
    --*)
      _po_name="${1#--}"
      _po_name="${_po_name//-/_}"
      if ! [[ "$_po_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        echo "$0: invalid option $1" >&2
        exit 2
      fi
      if [ -z "${!_po_name+set}" ] || [ "$_po_name" = "help_message" ]; then
        echo "$0: invalid option $1 (run $0 --help for the options)" >&2
        exit 2
      fi
      [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 2; }
      _po_old="${!_po_name}"
      if { [ "$_po_old" = true ] || [ "$_po_old" = false ]; } && [ "$2" != true ] && [ "$2" != false ]; then
        echo "$0: option $1 expects true or false, got '$2'" >&2
        exit 2
      fi
      printf -v "$_po_name" '%s' "$2"
      case "$parsed_options" in
        *" $_po_name "*) ;;
        *) parsed_options="$parsed_options$_po_name " ;;
      esac
      shift 2
      ;;
    *)
      break
      ;;
  esac
done
unset _po_name _po_old
true
