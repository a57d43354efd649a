# Sourced by run_local_deployment.sh and run_compose.sh (from the repository root, fedqc's Python on PATH):
# resolve_run CONFIG SITES_DIR OUT SUFFIX sets config, name, sites and out. The config is checked here, before
# anything starts: a mistake in it is one error line per problem, no traceback. SITES_DIR defaults to sites/<name>
# (made by `make` when it knows how), OUT to runs/<name>-SUFFIX.
resolve_run() {
  config=$(realpath "$1")
  name=$(python -c 'import sys; from fedqc.config import load_config; from fedqc.errors import UserError
try: print(load_config(sys.argv[1]).name)
except UserError as exc: sys.exit(f"error: {exc}")' "$config") || exit $?
  sites=${2:-sites/$name}
  out=$(realpath -m "${3:-runs/$name-$4}")
  if [[ ! -f $sites/sites.csv ]] && make -n "$sites" >/dev/null 2>&1; then make -s "$sites"; fi
  [[ -f $sites/sites.csv ]] || { echo "error: $sites/sites.csv not found (make it with \`fedqc sites split --manifest M --out $sites\`)" >&2; exit 2; }
  sites=$(realpath "$sites")
}
